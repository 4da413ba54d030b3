//! Applying image layers to a directory: the image's root filesystem.
//!
//! Layers are applied in order, as overlayfs would stack them: a whiteout
//! `.wh.<name>` removes `<name>` from the layers below, an opaque marker
//! `.wh..wh..opq` hides everything the layers below put in its directory.
//! Regular files, directories, symbolic and hard links, FIFOs and (as root)
//! device nodes are created with their modes, mtimes, extended attributes
//! where the filesystem takes them, and (as root) their owners.
//!
//! Safety: every entry stays inside the root. Entry and hard-link paths with
//! `..` or a leading `/` are refused; parent directories are walked component
//! by component with `symlink_metadata` (once: the directories an extraction
//! made or found real are remembered until an entry replaces them), a
//! symbolic link among them resolved inside the root as docker does (an
//! absolute target starts at the root; one whose `..` climbs above the root
//! is refused); the final component is
//! replaced, never followed (`O_NOFOLLOW | O_EXCL`). A per-layer ratio of
//! decompressed to compressed bytes and a total size bound stop
//! decompression bombs; names and tar extension headers are bounded before
//! they are read (see `TarGuard`), and names shown in errors are cut short
//! and escaped.
//!
//! Modules by concern: [`pipeline`] (the decompressing thread), [`guard`]
//! (tar headers bounded before they are read), [`apply`] (one entry after
//! another), [`resolve`] (paths inside the root), [`create`] (one creator
//! per entry type), [`whiteout`], [`sys`] (the system calls on those files).

mod apply;
mod create;
mod guard;
mod pipeline;
mod resolve;
mod sys;
#[cfg(test)]
mod testutil;
mod whiteout;

use std::cell::Cell;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::diffid::layer_name;
pub use crate::diffid::DEFAULT_MAX_RATIO;
use crate::error::CoreError;
use apply::{Applier, Stop};
use guard::TarGuard;
use pipeline::{decompress_layers, LayerStream, AHEAD};
use resolve::Root;

/// Bytes of a path or link target, and of a GNU long name or long link
/// entry (`L`, `K`: the name and its NUL): Linux's PATH_MAX, past which no
/// system call takes a path, so no such file could be created anyway.
pub const MAX_PATH: u64 = 4096;
/// Bytes of a PAX extended header's records (`x`, `g`), and of a GNU sparse
/// file's extension blocks. Docker's tar reader (Go's archive/tar) refuses
/// PAX headers and GNU long names past 1 MiB too; genuine records (a path,
/// a link target, times, owners, xattrs of at most 64 KiB each on Linux)
/// take a few KiB.
pub const MAX_PAX: u64 = 1 << 20;

/// Why an extraction stopped.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry that would land outside the root (refused, nothing written for it).
    #[error("layer {layer}: refusing entry \"{entry}\": {reason}")]
    Unsafe {
        layer: String,
        entry: String,
        reason: String,
    },
    #[error(
        "layer {layer}: decompresses to more than {ratio} times its compressed size \
         (a decompression bomb?); refused at --max-ratio {ratio}: raise it if the layer \
         is genuine (0: no limit)"
    )]
    Ratio { layer: String, ratio: u64 },
    #[error(
        "layer {layer}: the layers decompress to more than the limit of {limit} bytes \
         (--max-size)"
    )]
    TooLarge { layer: String, limit: u64 },
    /// A name, or a tar header's payload, over its bound (refused unread).
    #[error("layer {layer}: {what} of {size} bytes is over the limit of {limit} bytes ({bound})")]
    TooLong {
        layer: String,
        what: String,
        size: u64,
        limit: u64,
        bound: &'static str,
    },
    /// Creating an entry failed.
    #[error("layer {layer}: {entry}: {op}: {source}")]
    Io {
        layer: String,
        entry: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// The layer blob is unreadable or corrupt (compression or tar).
    #[error(transparent)]
    Layer(#[from] CoreError),
}

/// Limits and choices of an extraction.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Decompressed : compressed bytes allowed per layer (0: no limit).
    pub max_ratio: u64,
    /// Decompressed tar bytes allowed over all layers (None: no limit).
    pub max_bytes: Option<u64>,
    /// Set owners (lchown) and create device nodes: needs root.
    pub privileged: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            max_ratio: DEFAULT_MAX_RATIO,
            max_bytes: None,
            // SAFETY: geteuid has no preconditions and cannot fail.
            privileged: unsafe { libc::geteuid() } == 0,
        }
    }
}

/// Applies `layers` (blob files, any compression diffid.rs knows) in order
/// to `root`, which must exist. Returns the decompressed bytes read.
///
/// Decompression runs on a second thread, at most `AHEAD` chunks in front
/// of the thread creating files (also into the next layer): inflating and
/// writing files each take about half of an export's CPU, so on two cores
/// this pipeline nearly halves its time, in bounded memory.
pub fn extract_layers(
    root: &Path,
    layers: &[PathBuf],
    opts: &ExtractOptions,
) -> Result<u64, ExtractError> {
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel(AHEAD);
        // Chunks the applier is done with go back to be filled again.
        let (recycle, reuse) = mpsc::sync_channel(AHEAD + 2);
        scope.spawn(move || decompress_layers(layers, opts, tx, reuse));
        // Returning (early on an error too) drops `rx`, which stops the producer.
        let mut total = 0;
        // One for all layers: what a layer's entries created, later layers find.
        let mut root = Root::new(root);
        for layer in layers {
            let mut stream = LayerStream::new(&rx, &recycle);
            total += apply_layer(&mut root, &layer_name(layer), opts, &mut stream)?;
        }
        Ok(total)
    })
}

fn apply_layer(
    root: &mut Root<'_>,
    name: &str,
    opts: &ExtractOptions,
    stream: &mut LayerStream<'_>,
) -> Result<u64, ExtractError> {
    let refused = Cell::new(None);
    let applied = Applier::new(root, name, opts).run(&mut TarGuard::new(&mut *stream, &refused));
    if let Some(over) = refused.get() {
        return Err(over.error(name));
    }
    // The applier's own failure (an unsafe entry, a full disk) stops at once:
    // dropping the stream stops the decompressing thread. Otherwise the
    // stream's failure (corrupt compression, a limit) explains the most,
    // then a tar the tar crate could not parse.
    let unreadable = match applied {
        Ok(()) => None,
        Err(Stop::Unreadable(e)) => Some(e),
        Err(Stop::Failed(e)) => return Err(e),
    };
    let n = stream.finish()?;
    match unreadable {
        None => Ok(n),
        Some(e) => Err(ExtractError::Layer(CoreError::Invalid(format!(
            "layer {name}: corrupt tar data: {e}"
        )))),
    }
}

/// Why one entry could not be applied; the applier names the layer and the
/// entry when it turns this into an [`ExtractError`].
#[derive(Debug)]
enum EntryError {
    /// An unsafe entry: the layer is refused with this reason.
    Refused(String),
    /// The entry's path or link target is longer than [`MAX_PATH`].
    TooLong { what: &'static str, size: u64 },
    /// A system call creating the entry failed.
    Io { op: &'static str, source: io::Error },
    /// Reading the entry's data from the layer failed: a corrupt tar.
    Read(io::Error),
}

impl EntryError {
    fn refused(reason: impl Into<String>) -> Self {
        EntryError::Refused(reason.into())
    }
}

/// Names the operation an I/O error comes from, so that `?` carries it.
trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, EntryError>;
}

impl<T> Op<T> for io::Result<T> {
    fn op(self, op: &'static str) -> Result<T, EntryError> {
        self.map_err(|source| EntryError::Io { op, source })
    }
}
