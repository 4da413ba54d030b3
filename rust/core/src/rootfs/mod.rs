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
use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

use crate::diffid::layer_name;
pub use crate::diffid::DEFAULT_MAX_RATIO;
use crate::digest::Digest;
use crate::error::CoreError;
use apply::{Applier, Stop};
use guard::TarGuard;
pub use pipeline::Inflated;
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
    /// The layer's tar is not the one the image's configuration names.
    #[error(
        "layer {layer}: its content has diffID {got}, not {want} as the image's \
         configuration says: the image is corrupt"
    )]
    DiffId {
        layer: String,
        want: Digest,
        got: Digest,
    },
    /// [`Extraction::canceller`] was set.
    #[error("extraction cancelled")]
    Cancelled,
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
pub fn extract_layers(
    root: &Path,
    layers: &[PathBuf],
    opts: &ExtractOptions,
) -> Result<u64, ExtractError> {
    let layers: Vec<_> = layers.iter().map(|p| (p.clone(), None)).collect();
    let done = Extraction::new(root, opts.clone()).apply(&layers)?;
    Ok(done.iter().map(|i| i.size).sum())
}

/// A root filesystem being written, a layer or a few at a time, in order:
/// a pull applies each layer as soon as it and those below it are stored.
/// What one call learnt of the tree (the real directories it made or
/// found) serves the next, and the size limit counts every layer.
pub struct Extraction {
    root: PathBuf,
    known: BTreeSet<PathBuf>,
    opts: ExtractOptions,
    /// Decompressed bytes applied so far (for `max_bytes`).
    applied: u64,
    cancel: Arc<AtomicBool>,
}

impl Extraction {
    /// An extraction into `root`, which must exist.
    pub fn new(root: &Path, opts: ExtractOptions) -> Self {
        Extraction {
            root: root.to_owned(),
            known: BTreeSet::new(),
            opts,
            applied: 0,
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set it (from any thread) to stop the extraction at its next entry
    /// with [`ExtractError::Cancelled`].
    pub fn canceller(&self) -> Arc<AtomicBool> {
        self.cancel.clone()
    }

    /// Applies `layers` in order: each a blob file and, when given, the
    /// diffID its tar must have (checked once the layer is applied: a
    /// mismatch is an error, and the tree then holds the wrong layer).
    ///
    /// Decompression (and the diffID's hash) runs on a second thread, at
    /// most `AHEAD` chunks in front of the thread creating files (also into
    /// the next layer): inflating and writing files each take about half of
    /// an export's CPU, so on two cores this pipeline nearly halves its
    /// time, in bounded memory.
    pub fn apply(
        &mut self,
        layers: &[(PathBuf, Option<Digest>)],
    ) -> Result<Vec<Inflated>, ExtractError> {
        let paths: Vec<PathBuf> = layers.iter().map(|(p, _)| p.clone()).collect();
        let opts = &self.opts;
        let cancel = &*self.cancel;
        let before = self.applied;
        let mut root = Root::with_known(&self.root, std::mem::take(&mut self.known));
        let result = std::thread::scope(|scope| {
            let (tx, rx) = mpsc::sync_channel(AHEAD);
            // Chunks the applier is done with go back to be filled again.
            let (recycle, reuse) = mpsc::sync_channel(AHEAD + 2);
            let paths = &paths;
            scope.spawn(move || decompress_layers(paths, opts, before, tx, reuse));
            // Returning (early on an error too) drops `rx`, which stops the producer.
            let mut done = Vec::with_capacity(layers.len());
            for (path, want) in layers {
                let name = layer_name(path);
                let mut stream = LayerStream::new(&rx, &recycle);
                let inflated = apply_layer(&mut root, &name, opts, cancel, &mut stream)?;
                if let Some(want) = want {
                    if *want != inflated.diff_id {
                        return Err(ExtractError::DiffId {
                            layer: name,
                            want: *want,
                            got: inflated.diff_id,
                        });
                    }
                }
                done.push(inflated);
            }
            Ok(done)
        });
        // After a failure the tree is not what the cache says: forget it.
        if let Ok(done) = &result {
            self.known = root.into_known();
            self.applied += done.iter().map(|i| i.size).sum::<u64>();
        }
        result
    }
}

fn apply_layer(
    root: &mut Root<'_>,
    name: &str,
    opts: &ExtractOptions,
    cancel: &AtomicBool,
    stream: &mut LayerStream<'_>,
) -> Result<Inflated, ExtractError> {
    let refused = Cell::new(None);
    let applied =
        Applier::new(root, name, opts, cancel).run(&mut TarGuard::new(&mut *stream, &refused));
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
        Some(e) => Err(ExtractError::Layer(CoreError::CorruptLayer(format!(
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

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;
    use crate::digest::sha256_bytes;
    use std::fs;
    use std::io::Read;

    /// The tar inside a gzip layer file: what its diffID hashes.
    fn tar_of(path: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(fs::File::open(path).unwrap())
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn layers_applied_one_call_at_a_time_give_their_diff_ids() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(tmp.path(), "l1", |b| {
            dir(b, "a");
            file(b, "a/f", b"one");
        });
        let l2 = layer(tmp.path(), "l2", |b| file(b, "a/g", b"two"));
        let (d1, d2) = (sha256_bytes(&tar_of(&l1)), sha256_bytes(&tar_of(&l2)));
        let mut ex = Extraction::new(&root, opts());
        let first = ex.apply(&[(l1.clone(), Some(d1))]).unwrap();
        assert_eq!(first[0].diff_id, d1);
        assert_eq!(first[0].size, tar_of(&l1).len() as u64);
        // Nothing expected: computed all the same.
        let second = ex.apply(&[(l2.clone(), None)]).unwrap();
        assert_eq!(second[0].diff_id, d2);
        assert_eq!(fs::read(root.join("a/f")).unwrap(), b"one");
        assert_eq!(fs::read(root.join("a/g")).unwrap(), b"two");

        // The wrong diffID: refused once the layer is applied, naming both.
        let other = tmp.path().join("other");
        fs::create_dir(&other).unwrap();
        let err = Extraction::new(&other, opts())
            .apply(&[(l1, Some(d1)), (l2, Some(d1))])
            .unwrap_err();
        match &err {
            ExtractError::DiffId { want, got, .. } => assert_eq!((*want, *got), (d1, d2)),
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains(&d2.to_string()), "{err}");
    }

    #[test]
    fn the_size_limit_counts_every_call() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let data = vec![7u8; 6000];
        let l1 = layer(tmp.path(), "l1", |b| file(b, "f1", &data));
        let l2 = layer(tmp.path(), "l2", |b| file(b, "f2", &data));
        let limited = ExtractOptions {
            max_ratio: 0,
            max_bytes: Some(12_000),
            ..opts()
        };
        let mut ex = Extraction::new(&root, limited);
        ex.apply(&[(l1, None)]).unwrap();
        let err = ex.apply(&[(l2, None)]).unwrap_err();
        assert!(matches!(err, ExtractError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn a_cancelled_extraction_stops_at_the_next_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l = layer(tmp.path(), "l", |b| file(b, "f", b"x"));
        let mut ex = Extraction::new(&root, opts());
        ex.canceller()
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let err = ex.apply(&[(l, None)]).unwrap_err();
        assert!(matches!(err, ExtractError::Cancelled), "{err}");
        assert!(!root.join("f").exists());
    }
}
