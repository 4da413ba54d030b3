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
//! by component with `symlink_metadata`, a symbolic link among them resolved
//! inside the root as docker does (an absolute target starts at the root; one
//! whose `..` climbs above the root is refused); the final component is
//! replaced, never followed (`O_NOFOLLOW | O_EXCL`). A per-layer ratio of
//! decompressed to compressed bytes and a total size bound stop
//! decompression bombs; names and tar extension headers are bounded before
//! they are read (see `TarGuard`), and names shown in errors are cut short
//! and escaped.

use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, SyncSender};

use tar::EntryType;

pub use crate::diffid::DEFAULT_MAX_RATIO;
use crate::diffid::{layer_name, over_ratio, read_layer};
use crate::error::CoreError;
/// Symbolic links followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;
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
/// Characters of an entry name shown in an error.
const SHOWN_CHARS: usize = 200;

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
        for layer in layers {
            let mut stream = LayerStream {
                rx: &rx,
                recycle: &recycle,
                chunk: Vec::new(),
                pos: 0,
                end: None,
            };
            total += apply_layer(root, &layer_name(layer), opts, &mut stream)?;
        }
        Ok(total)
    })
}

/// Chunks of decompressed tar in flight between the two threads (1 MiB each).
const AHEAD: usize = 8;
const PIECE: usize = 1 << 20;

/// What the decompressing thread sends: a layer's tar in chunks, then how
/// that layer's stream ended (its decompressed size, or why it stopped).
enum Piece {
    Data(Vec<u8>),
    End(Result<u64, ExtractError>),
}

fn decompress_layers(
    layers: &[PathBuf],
    opts: &ExtractOptions,
    tx: SyncSender<Piece>,
    reuse: Receiver<Vec<u8>>,
) {
    let mut before = 0;
    for layer in layers {
        let Some(end) = decompress_layer(layer, opts, before, &tx, &reuse) else {
            return; // the applier stopped
        };
        let failed = end.is_err();
        before += end.as_ref().copied().unwrap_or(0);
        if tx.send(Piece::End(end)).is_err() || failed {
            return;
        }
    }
}

/// Sends one layer's decompressed bytes; None when the receiver is gone.
fn decompress_layer(
    layer: &Path,
    opts: &ExtractOptions,
    before: u64,
    tx: &SyncSender<Piece>,
    reuse: &Receiver<Vec<u8>>,
) -> Option<Result<u64, ExtractError>> {
    let hit = Rc::new(Cell::new(None));
    let mut gone = false;
    let result = read_layer(layer, |reader, consumed| {
        let mut bounded = Bounded {
            inner: reader,
            consumed: consumed.clone(),
            out: 0,
            before,
            opts,
            hit: hit.clone(),
        };
        loop {
            let mut chunk = reuse.try_recv().unwrap_or_default();
            chunk.resize(PIECE, 0);
            let mut n = 0;
            while n < PIECE {
                match bounded.read(&mut chunk[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if n == 0 {
                return Ok(bounded.out);
            }
            chunk.truncate(n);
            if tx.send(Piece::Data(chunk)).is_err() {
                gone = true;
                return Ok(bounded.out);
            }
        }
    });
    if gone {
        return None;
    }
    let name = layer_name(layer);
    Some(match (hit.get(), result) {
        (Some(Limit::Ratio), _) => Err(ExtractError::Ratio {
            layer: name,
            ratio: opts.max_ratio,
        }),
        (Some(Limit::Total), _) => Err(ExtractError::TooLarge {
            layer: name,
            limit: opts.max_bytes.unwrap_or(0),
        }),
        (None, Ok(n)) => Ok(n),
        (None, Err(e)) => Err(e.into()),
    })
}

#[derive(Clone, Copy)]
enum Limit {
    Ratio,
    Total,
}

/// The decompressed stream, counted and bounded.
struct Bounded<'a> {
    inner: &'a mut dyn Read,
    consumed: Rc<Cell<u64>>,
    out: u64,
    before: u64,
    opts: &'a ExtractOptions,
    hit: Rc<Cell<Option<Limit>>>,
}

impl Read for Bounded<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out += n as u64;
        let limit = if over_ratio(self.opts.max_ratio, self.out, self.consumed.get()) {
            Some(Limit::Ratio)
        } else if matches!(self.opts.max_bytes, Some(max) if self.before + self.out > max) {
            Some(Limit::Total)
        } else {
            None
        };
        if let Some(l) = limit {
            self.hit.set(Some(l));
            return Err(io::Error::other("extraction limit reached"));
        }
        Ok(n)
    }
}

/// One layer's tar as the applier reads it, from the decompressing thread.
struct LayerStream<'a> {
    rx: &'a Receiver<Piece>,
    recycle: &'a SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    /// How the layer's stream ended, once it has.
    end: Option<Result<u64, ExtractError>>,
}

impl LayerStream<'_> {
    /// Reads to the layer's end (the tar's padding, say) and says how it ended.
    fn finish(&mut self) -> Result<u64, ExtractError> {
        while self.end.is_none() {
            self.pos = self.chunk.len();
            let _ = self.read(&mut [0u8; 1]);
        }
        match self.end.take() {
            Some(end) => end,
            None => unreachable!("the loop above ends with an end"),
        }
    }
}

impl Read for LayerStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.end.is_some() {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Piece::Data(chunk)) => {
                    let done = std::mem::replace(&mut self.chunk, chunk);
                    let _ = self.recycle.try_send(done); // full: dropped instead
                    self.pos = 0;
                }
                Ok(Piece::End(end)) => {
                    let failed = end.is_err();
                    self.end = Some(end);
                    if failed {
                        return Err(io::Error::other("the layer could not be decompressed"));
                    }
                }
                // The producer sends every layer's end unless it panicked.
                Err(_) => {
                    let lost = CoreError::Invalid("layer decompression stopped".into());
                    self.end = Some(Err(ExtractError::Layer(lost)));
                    return Err(io::Error::other("decompression thread ended"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A tar header announcing more than its bound.
#[derive(Debug, Clone, Copy)]
struct Oversized {
    what: &'static str,
    size: u64,
    limit: u64,
    bound: &'static str,
}

impl Oversized {
    fn error(self, layer: &str) -> ExtractError {
        ExtractError::TooLong {
            layer: layer.to_owned(),
            what: self.what.to_owned(),
            size: self.size,
            limit: self.limit,
            bound: self.bound,
        }
    }
}

const PATH_MAX: &str = "PATH_MAX";
const PAX_BOUND: &str = "docker's tar reader refuses it too";

/// Watches a layer's tar on its way to the tar crate and refuses, before
/// the crate reads it, what the crate would hold in memory whole: the
/// payload of a GNU long name or long link (`L`, `K`) and of PAX extended
/// headers (`x`, and `g` whose records the applier asks for), past
/// [`MAX_PATH`] and [`MAX_PAX`] bytes; and GNU sparse extension blocks past
/// MAX_PAX bytes (the crate keeps a map entry for each).
///
/// It follows the archive's framing as the tar crate does (tar 0.4: a
/// header every 512 bytes after the previous entry's padded data; a PAX
/// `size` record sizing the next entry; sparse extension blocks before
/// their data; the archive's end at a zero block), from the headers
/// themselves, parsed with the crate's own types. Where the crate would
/// refuse a header (bad checksum, bad size) the guard stops watching: the
/// crate fails there.
struct TarGuard<'a, R> {
    inner: R,
    /// Stream offset of the next byte.
    pos: u64,
    state: Watch,
    block: [u8; 512],
    filled: usize,
    /// A PAX `x` header's records being read, and the offset they end at.
    pax: Option<(u64, Vec<u8>)>,
    /// The records of the last `x` header, for the entry it describes.
    pending_pax: Option<Vec<u8>>,
    refused: &'a Cell<Option<Oversized>>,
}

#[derive(Clone, Copy)]
enum Watch {
    /// Entry data (or padding) up to an offset, then a header.
    Data { until: u64 },
    /// A 512-byte block being gathered.
    Block(Block),
    /// Nothing left to check: the archive ended, or the crate fails here.
    Done,
}

#[derive(Clone, Copy)]
enum Block {
    Header,
    /// GNU sparse extension blocks (seen so far), then `data` bytes of data.
    Sparse {
        blocks: u64,
        data: u64,
    },
}

impl<'a, R: Read> TarGuard<'a, R> {
    fn new(inner: R, refused: &'a Cell<Option<Oversized>>) -> Self {
        TarGuard {
            inner,
            pos: 0,
            state: Watch::Block(Block::Header),
            block: [0; 512],
            filled: 0,
            pax: None,
            pending_pax: None,
            refused,
        }
    }

    fn observe(&mut self, mut data: &[u8]) -> Result<(), Oversized> {
        while !data.is_empty() {
            match self.state {
                Watch::Done => return Ok(()),
                Watch::Data { until } => {
                    let n = (until - self.pos).min(data.len() as u64) as usize;
                    if let Some((end, records)) = &mut self.pax {
                        let k = (*end).saturating_sub(self.pos).min(n as u64) as usize;
                        records.extend_from_slice(&data[..k]);
                        if self.pos + k as u64 == *end {
                            self.pending_pax = self.pax.take().map(|(_, r)| r);
                        }
                    }
                    self.pos += n as u64;
                    data = &data[n..];
                    if self.pos == until {
                        self.state = Watch::Block(Block::Header);
                        self.filled = 0;
                    }
                }
                Watch::Block(kind) => {
                    let n = (512 - self.filled).min(data.len());
                    self.block[self.filled..self.filled + n].copy_from_slice(&data[..n]);
                    self.filled += n;
                    self.pos += n as u64;
                    data = &data[n..];
                    if self.filled == 512 {
                        self.state = match kind {
                            Block::Header => self.header()?,
                            Block::Sparse { blocks, data } => self.sparse(blocks + 1, data)?,
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// What follows the header just gathered (self.pos is its end).
    fn header(&mut self) -> Result<Watch, Oversized> {
        if self.block.iter().all(|&b| b == 0) {
            return Ok(Watch::Done);
        }
        let header = tar::Header::from_byte_slice(&self.block);
        let sum = self.block[..148]
            .iter()
            .chain(&self.block[156..])
            .map(|&b| u32::from(b))
            .sum::<u32>()
            + 8 * 32;
        let (Ok(size), Ok(true)) = (header.entry_size(), header.cksum().map(|c| c == sum)) else {
            return Ok(Watch::Done);
        };
        let kind = header.entry_type();
        let recognized = header.as_gnu().is_some() || header.as_ustar().is_some();
        let bound = match kind {
            EntryType::GNULongName => Some(("a GNU long name entry", MAX_PATH, PATH_MAX)),
            EntryType::GNULongLink => Some(("a GNU long link entry", MAX_PATH, PATH_MAX)),
            EntryType::XHeader => Some(("a PAX extended header", MAX_PAX, PAX_BOUND)),
            EntryType::XGlobalHeader => Some(("a PAX global header", MAX_PAX, PAX_BOUND)),
            _ => None,
        };
        if let Some((what, limit, bound)) = bound {
            if size > limit {
                return Err(Oversized {
                    what,
                    size,
                    limit,
                    bound,
                });
            }
            if kind == EntryType::XHeader && recognized {
                // Its records may size the entry it describes.
                self.pax = Some((self.pos + size, Vec::with_capacity(size as usize)));
                if size == 0 {
                    self.pending_pax = self.pax.take().map(|(_, r)| r);
                }
            }
            // Recognised, the crate reads these and goes on to the entry
            // they describe; otherwise it returns them as entries (no PAX
            // size applies to extension types either way).
            if !recognized || kind == EntryType::XGlobalHeader {
                self.pending_pax = None;
            }
            return Ok(self.data(size));
        }
        let size = match self.pending_pax.take() {
            Some(records) => pax_size(&records).unwrap_or(size),
            None => size,
        };
        let extended =
            kind == EntryType::GNUSparse && header.as_gnu().is_some_and(|g| g.is_extended());
        if extended {
            self.filled = 0;
            return Ok(Watch::Block(Block::Sparse {
                blocks: 0,
                data: size,
            }));
        }
        Ok(self.data(size))
    }

    /// After the `blocks`-th sparse extension block.
    fn sparse(&mut self, blocks: u64, data: u64) -> Result<Watch, Oversized> {
        if blocks * 512 > MAX_PAX {
            return Err(Oversized {
                what: "a GNU sparse map",
                size: blocks * 512,
                limit: MAX_PAX,
                bound: "as for PAX headers",
            });
        }
        // GnuExtSparseHeader: 21 entries of 24 bytes, then `isextended`.
        if self.block[504] == 1 {
            self.filled = 0;
            return Ok(Watch::Block(Block::Sparse { blocks, data }));
        }
        Ok(self.data(data))
    }

    /// `size` bytes of data padded to a block, then a header.
    fn data(&mut self, size: u64) -> Watch {
        let until = size
            .checked_add(511)
            .map(|s| s & !511)
            .and_then(|s| self.pos.checked_add(s));
        self.filled = 0;
        match until {
            Some(until) if until == self.pos => Watch::Block(Block::Header),
            Some(until) => Watch::Data { until },
            None => Watch::Done, // the crate refuses the size
        }
    }
}

/// The PAX `size` record, read as the tar crate reads it (the first `size`
/// record; none when a record before it is malformed or it is not a number).
fn pax_size(records: &[u8]) -> Option<u64> {
    for record in tar::PaxExtensions::new(records) {
        let record = record.ok()?;
        if record.key() == Ok("size") {
            return record.value().ok()?.parse().ok();
        }
    }
    None
}

impl<R: Read> Read for TarGuard<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(over) = self.observe(&buf[..n]) {
            self.refused.set(Some(over));
            self.state = Watch::Done;
            return Err(io::Error::other("a tar header over its limit"));
        }
        Ok(n)
    }
}

/// An entry name as shown in an error: at most SHOWN_CHARS characters, then
/// `…`; control characters, quotes and backslashes escaped.
fn show_name(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut shown: String = text
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_debug)
        .collect();
    if text.chars().nth(SHOWN_CHARS).is_some() {
        shown.push('…');
    }
    shown
}

fn apply_layer(
    root: &Path,
    name: &str,
    opts: &ExtractOptions,
    stream: &mut LayerStream<'_>,
) -> Result<u64, ExtractError> {
    let refused = Cell::new(None);
    let applied = Applier {
        root,
        layer: name,
        opts,
        written: HashSet::new(),
        dir_times: Vec::new(),
    }
    .run(&mut TarGuard::new(&mut *stream, &refused));
    if let Some(over) = refused.get() {
        return Err(over.error(name));
    }
    // The applier's own failure (an unsafe entry, a full disk) stops at once:
    // dropping the stream stops the decompressing thread. Otherwise the
    // stream's failure (corrupt compression, a limit) explains the most,
    // then a tar the tar crate could not parse.
    let unreadable = match applied {
        Ok(Err(e)) => return Err(e),
        Ok(Ok(())) => None,
        Err(e) => Some(e),
    };
    let n = stream.finish()?;
    match unreadable {
        None => Ok(n),
        Some(e) => Err(ExtractError::Layer(CoreError::Invalid(format!(
            "layer {name}: corrupt tar data: {e}"
        )))),
    }
}

struct Applier<'a> {
    root: &'a Path,
    layer: &'a str,
    opts: &'a ExtractOptions,
    /// Paths (relative) this layer created: an opaque marker keeps them.
    written: HashSet<PathBuf>,
    /// Directories (resolved, relative) whose mtime is set once the layer is done.
    dir_times: Vec<(PathBuf, u64)>,
}

/// `Ok(Err(_))`: the extraction's own failure; `Err(_)`: reading the layer failed.
type Step = io::Result<Result<(), ExtractError>>;

impl Applier<'_> {
    fn run(mut self, reader: &mut dyn Read) -> Step {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries()? {
            let mut entry = entry?;
            if let Err(e) = self.entry(&mut entry)? {
                return Ok(Err(e));
            }
        }
        for (rel, mtime) in self.dir_times.iter().rev() {
            // Best effort, and only where the path is still real directories
            // all the way: a later entry may have replaced one of them with a
            // symbolic link, which must not be followed out of the root.
            if let Some(path) = real_dir(self.root, rel) {
                let _ = set_mtime(&path, *mtime);
            }
        }
        Ok(Ok(()))
    }

    fn unsafe_entry(&self, entry: &str, reason: impl Into<String>) -> ExtractError {
        ExtractError::Unsafe {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            reason: reason.into(),
        }
    }

    fn io_error(&self, entry: &str, op: &'static str, source: io::Error) -> ExtractError {
        ExtractError::Io {
            layer: self.layer.to_owned(),
            entry: entry.to_owned(),
            op,
            source,
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Step {
        let raw = entry.path_bytes().into_owned();
        let shown = show_name(&raw);
        // A PAX path or linkpath (MAX_PAX bytes at most) can be longer.
        let link_len = entry.link_name_bytes().map_or(0, |l| l.len());
        for (what, len) in [("path", raw.len()), ("link target", link_len)] {
            if len as u64 > MAX_PATH {
                return Ok(Err(ExtractError::TooLong {
                    layer: self.layer.to_owned(),
                    what: format!("the {what} of entry \"{shown}\""),
                    size: len as u64,
                    limit: MAX_PATH,
                    bound: PATH_MAX,
                }));
            }
        }
        let rel = match clean_path(&raw) {
            Ok(Some(rel)) => rel,
            Ok(None) => return Ok(Ok(())), // the root itself
            Err(reason) => return Ok(Err(self.unsafe_entry(&shown, reason))),
        };
        let file_name = rel.file_name().unwrap_or_default().as_bytes().to_vec();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();

        if let Some(hidden) = file_name.strip_prefix(b".wh.") {
            return Ok(self.whiteout(&shown, &parent_rel, hidden));
        }

        let (parent, parent_resolved) = match self.parent_dir(&shown, &parent_rel, true) {
            Ok(Some(p)) => p,
            Ok(None) => unreachable!("parents are created"),
            Err(e) => return Ok(Err(e)),
        };
        let dest = parent.join(rel.file_name().unwrap_or_default());
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644) & 0o7777;
        let uid = header.uid().unwrap_or(0);
        let gid = header.gid().unwrap_or(0);
        let mtime = header.mtime().unwrap_or(0);
        let device = (
            header.device_major().ok().flatten().unwrap_or(0),
            header.device_minor().ok().flatten().unwrap_or(0),
        );
        let xattrs = xattrs_of(entry);
        let existing = fs::symlink_metadata(&dest).ok();

        match kind {
            EntryType::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    if let Err(e) = remove_any(&dest) {
                        return Ok(Err(self.io_error(&shown, "remove", e)));
                    }
                    if let Err(e) = fs::create_dir(&dest) {
                        return Ok(Err(self.io_error(&shown, "mkdir", e)));
                    }
                }
                if let Err(e) = self.set_meta(&dest, mode, uid, gid, None, &xattrs) {
                    return Ok(Err(self.io_error(&shown, "set attributes", e)));
                }
                let resolved = parent_resolved.join(rel.file_name().unwrap_or_default());
                self.dir_times.push((resolved, mtime));
            }
            EntryType::Regular | EntryType::Continuous => {
                if let Err(e) = remove_any(&dest) {
                    return Ok(Err(self.io_error(&shown, "remove", e)));
                }
                let mut file = match OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&dest)
                {
                    Ok(f) => f,
                    Err(e) => return Ok(Err(self.io_error(&shown, "create", e))),
                };
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let n = match entry.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    if let Err(e) = file.write_all(&buf[..n]) {
                        return Ok(Err(self.io_error(&shown, "write", e)));
                    }
                }
                drop(file);
                if let Err(e) = self.set_meta(&dest, mode, uid, gid, Some(mtime), &xattrs) {
                    return Ok(Err(self.io_error(&shown, "set attributes", e)));
                }
            }
            EntryType::Symlink => {
                let target = match entry.link_name_bytes() {
                    Some(t) => t.into_owned(),
                    None => return Ok(Err(self.unsafe_entry(&shown, "symlink without target"))),
                };
                if let Err(e) = remove_any(&dest) {
                    return Ok(Err(self.io_error(&shown, "remove", e)));
                }
                if let Err(e) = symlink(std::ffi::OsStr::from_bytes(&target), &dest) {
                    return Ok(Err(self.io_error(&shown, "symlink", e)));
                }
                if self.opts.privileged {
                    let _ = lchown(&dest, Some(uid as u32), Some(gid as u32));
                }
                for (k, v) in &xattrs {
                    let _ = set_xattr(&dest, k, v);
                }
                let _ = set_mtime(&dest, mtime);
            }
            EntryType::Link => {
                let target_raw = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_rel = match clean_path(&target_raw) {
                    Ok(Some(t)) => t,
                    Ok(None) => return Ok(Err(self.unsafe_entry(&shown, "hard link to the root"))),
                    Err(reason) => {
                        return Ok(Err(
                            self.unsafe_entry(&shown, format!("hard link target {reason}"))
                        ))
                    }
                };
                let target_parent = target_rel.parent().unwrap_or(Path::new(""));
                let target = match self.parent_dir(&shown, target_parent, false) {
                    Ok(Some((p, _))) => p.join(target_rel.file_name().unwrap_or_default()),
                    Ok(None) => {
                        return Ok(Err(self.io_error(
                            &shown,
                            "link",
                            io::Error::new(io::ErrorKind::NotFound, "hard link target missing"),
                        )))
                    }
                    Err(e) => return Ok(Err(e)),
                };
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {
                        return Ok(Err(self.unsafe_entry(&shown, "hard link to a directory")))
                    }
                    Ok(_) => {}
                    Err(e) => return Ok(Err(self.io_error(&shown, "link", e))),
                }
                if target != dest {
                    if let Err(e) = remove_any(&dest) {
                        return Ok(Err(self.io_error(&shown, "remove", e)));
                    }
                    if let Err(e) = fs::hard_link(&target, &dest) {
                        return Ok(Err(self.io_error(&shown, "link", e)));
                    }
                }
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                let is_fifo = kind == EntryType::Fifo;
                if !is_fifo && !self.opts.privileged {
                    return Ok(Ok(())); // device nodes need root: skipped
                }
                if let Err(e) = remove_any(&dest) {
                    return Ok(Err(self.io_error(&shown, "remove", e)));
                }
                let file_type = match kind {
                    EntryType::Fifo => libc::S_IFIFO,
                    EntryType::Char => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                if let Err(e) = mknod(&dest, file_type | 0o600, device.0, device.1) {
                    return Ok(Err(self.io_error(&shown, "mknod", e)));
                }
                if let Err(e) = self.set_meta(&dest, mode, uid, gid, Some(mtime), &xattrs) {
                    return Ok(Err(self.io_error(&shown, "set attributes", e)));
                }
            }
            // pax/GNU headers are read by the tar crate; anything else has no file.
            _ => return Ok(Ok(())),
        }
        self.written
            .insert(parent_resolved.join(rel.file_name().unwrap_or_default()));
        Ok(Ok(()))
    }

    /// `.wh..wh..opq` in `dir`, or `.wh.<hidden>` in `dir`.
    fn whiteout(&mut self, shown: &str, dir: &Path, hidden: &[u8]) -> Result<(), ExtractError> {
        let Some((dir_abs, dir_rel)) = self.parent_dir(shown, dir, false)? else {
            return Ok(()); // nothing below to hide
        };
        if hidden == b".wh..opq" {
            return clear_lower(&dir_abs, &dir_rel, &self.written)
                .map_err(|e| self.io_error(shown, "opaque whiteout", e));
        }
        if hidden.starts_with(b".wh.") {
            return Ok(()); // other aufs metadata (.wh..wh.plnk, ...): not files
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.unsafe_entry(shown, "whiteout of no file"));
        }
        let victim = dir_abs.join(std::ffi::OsStr::from_bytes(hidden));
        remove_any(&victim).map_err(|e| self.io_error(shown, "whiteout", e))
    }

    /// The directory `rel` names under the root: (absolute path, path
    /// relative to the root with every symbolic link resolved).
    ///
    /// Walked one component at a time with `symlink_metadata`. A symbolic
    /// link among the parents is followed as docker does, inside the root: an
    /// absolute target starts again at the root (so `lib -> /usr/lib` works);
    /// a target whose `..` would climb above the root is refused, as are
    /// link loops. Missing directories are created (0755) when `create`,
    /// else `Ok(None)`.
    fn parent_dir(
        &mut self,
        shown: &str,
        rel: &Path,
        create: bool,
    ) -> Result<Option<(PathBuf, PathBuf)>, ExtractError> {
        let mut done = PathBuf::new();
        let mut todo: VecDeque<std::ffi::OsString> = rel.iter().map(|c| c.to_os_string()).collect();
        let mut links = 0;
        while let Some(part) = todo.pop_front() {
            if part == "." {
                continue;
            }
            if part == ".." {
                if !done.pop() {
                    return Err(self.unsafe_entry(
                        shown,
                        "a symbolic link among its parents points outside the root",
                    ));
                }
                continue;
            }
            let abs = self.root.join(&done).join(&part);
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(self.unsafe_entry(shown, "too many levels of symbolic links"));
                    }
                    let target =
                        fs::read_link(&abs).map_err(|e| self.io_error(shown, "readlink", e))?;
                    if target.is_absolute() {
                        done.clear();
                    }
                    for c in target.iter().rev() {
                        if c != "/" {
                            todo.push_front(c.to_os_string());
                        }
                    }
                }
                Ok(m) if m.is_dir() => done.push(&part),
                Ok(_) => {
                    return Err(self.io_error(
                        shown,
                        "open parent",
                        io::Error::new(
                            io::ErrorKind::NotADirectory,
                            format!("{} is not a directory", done.join(&part).display()),
                        ),
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    if let Err(e) = fs::create_dir(&abs) {
                        return Err(self.io_error(shown, "mkdir", e));
                    }
                    let _ = fs::set_permissions(&abs, fs::Permissions::from_mode(0o755));
                    done.push(&part);
                    self.written.insert(done.clone());
                }
                Err(e) => return Err(self.io_error(shown, "stat", e)),
            }
        }
        Ok(Some((self.root.join(&done), done)))
    }

    fn set_meta(
        &self,
        path: &Path,
        mode: u32,
        uid: u64,
        gid: u64,
        mtime: Option<u64>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) -> io::Result<()> {
        if self.opts.privileged {
            // Before chmod: chown clears the set-id bits.
            lchown(path, Some(uid as u32), Some(gid as u32))?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
        for (k, v) in xattrs {
            let _ = set_xattr(path, k, v); // where the filesystem allows
        }
        if let Some(t) = mtime {
            set_mtime(path, t)?;
        }
        Ok(())
    }
}

/// The entry's path as relative components; `Ok(None)` for the root itself.
fn clean_path(raw: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("is an absolute path");
    }
    let mut out = PathBuf::new();
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("has a '..' component (it would escape the root)"),
            p if p.contains(&0) => return Err("has a NUL byte"),
            p => out.push(std::ffi::OsStr::from_bytes(p)),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Removes whatever is at `path` (a directory with its contents), never
/// following a symbolic link; a missing path is fine.
fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `root/rel` when every component of `rel` is a real directory (no link).
fn real_dir(root: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = root.to_path_buf();
    for part in rel.components() {
        path.push(part);
        let meta = fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_dir() {
            return None;
        }
    }
    Some(path)
}

/// An opaque directory: removes what lower layers put in `dir_abs`, i.e.
/// every child this layer did not write (recursing into those it did).
fn clear_lower(dir_abs: &Path, dir_rel: &Path, written: &HashSet<PathBuf>) -> io::Result<()> {
    for child in fs::read_dir(dir_abs)? {
        let child = child?;
        let rel = dir_rel.join(child.file_name());
        let abs = dir_abs.join(child.file_name());
        if written.contains(&rel) {
            if child.file_type()?.is_dir() {
                clear_lower(&abs, &rel, written)?;
            }
        } else {
            remove_any(&abs)?;
        }
    }
    Ok(())
}

fn xattrs_of<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    out
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

fn set_mtime(path: &Path, mtime: u64) -> io::Result<()> {
    let cpath = c_path(path)?;
    let t = libc::timespec {
        tv_sec: mtime.min(i64::MAX as u64) as libc::time_t,
        tv_nsec: 0,
    };
    let times = [t, t];
    // SAFETY: cpath is a valid C string; times points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            cpath.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_xattr(path: &Path, name: &[u8], value: &[u8]) -> io::Result<()> {
    let cpath = c_path(path)?;
    let cname = CString::new(name).map_err(io::Error::other)?;
    // SAFETY: valid C strings; value pointer/length from a slice.
    let rc = unsafe {
        libc::lsetxattr(
            cpath.as_ptr(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mknod(path: &Path, mode: libc::mode_t, major: u32, minor: u32) -> io::Result<()> {
    let cpath = c_path(path)?;
    // SAFETY: a valid C string; mknod does not keep the pointer.
    let rc = unsafe { libc::mknod(cpath.as_ptr(), mode, libc::makedev(major, minor)) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;

    fn layer(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        let data = b.into_inner().unwrap();
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&data).unwrap();
        let path = dir.join(name);
        fs::write(&path, enc.finish().unwrap()).unwrap();
        path
    }

    fn header(path: &str, kind: EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        // set_path refuses '..'; write the raw name bytes to build bad layers.
        let bytes = path.as_bytes();
        h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
        let h = header(path, EntryType::Regular, data.len() as u64);
        b.append(&h, data).unwrap();
    }

    fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        b.append(&header(path, EntryType::Directory, 0), &[][..])
            .unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: EntryType, target: &str) {
        let mut h = header(path, kind, 0);
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
    }

    fn opts() -> ExtractOptions {
        ExtractOptions {
            privileged: false,
            ..ExtractOptions::default()
        }
    }

    #[test]
    fn whiteouts_opaque_and_links() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let l1 = layer(tmp.path(), "l1", |b| {
            dir(b, "a/");
            file(b, "a/old", b"old");
            dir(b, "a/sub/");
            file(b, "a/sub/deep", b"deep");
            file(b, "gone", b"x");
            dir(b, "keep/");
            file(b, "keep/k", b"k");
        });
        let l2 = layer(tmp.path(), "l2", |b| {
            file(b, "a/new", b"new");
            file(b, "a/.wh..wh..opq", b"");
            file(b, ".wh.gone", b"");
            link(b, "keep/hl", EntryType::Link, "keep/k");
            link(b, "sl", EntryType::Symlink, "/etc/passwd");
        });
        extract_layers(&root, &[l1, l2], &opts()).unwrap();
        assert!(!root.join("a/old").exists());
        assert!(!root.join("a/sub").exists());
        assert_eq!(fs::read(root.join("a/new")).unwrap(), b"new");
        assert!(!root.join("gone").exists());
        assert_eq!(fs::read(root.join("keep/hl")).unwrap(), b"k");
        assert_eq!(
            fs::read_link(root.join("sl")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn symlinked_parents_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        // Merged /usr (lib -> usr/lib), an absolute link (var/run -> /run),
        // a chain through `..`, and an opaque whiteout seen through a link.
        let l1 = layer(tmp.path(), "l1", |b| {
            dir(b, "usr/lib/");
            file(b, "usr/lib/old", b"old");
            link(b, "lib", EntryType::Symlink, "usr/lib");
            dir(b, "run/");
            dir(b, "var/");
            link(b, "var/run", EntryType::Symlink, "/run");
            link(b, "var/up", EntryType::Symlink, "../usr/./lib/..");
        });
        let l2 = layer(tmp.path(), "l2", |b| {
            file(b, "lib/libx.so", b"x");
            file(b, "var/run/pid", b"1");
            file(b, "var/up/lib/y", b"y");
            file(b, "lib/.wh..wh..opq", b"");
            file(b, "lib/z", b"z");
        });
        extract_layers(&root, &[l1, l2], &opts()).unwrap();
        assert_eq!(fs::read(root.join("run/pid")).unwrap(), b"1");
        assert_eq!(fs::read(root.join("usr/lib/z")).unwrap(), b"z");
        assert!(!root.join("usr/lib/old").exists()); // hidden by the opaque marker
                                                     // Written in this layer before the marker: kept, through the link.
        assert_eq!(fs::read(root.join("usr/lib/libx.so")).unwrap(), b"x");
        assert_eq!(fs::read(root.join("usr/lib/y")).unwrap(), b"y");
        assert!(fs::symlink_metadata(root.join("lib")).unwrap().is_symlink());

        // A loop is refused, not followed forever.
        let root2 = tmp.path().join("root2");
        fs::create_dir(&root2).unwrap();
        let l3 = layer(tmp.path(), "l3", |b| {
            link(b, "a", EntryType::Symlink, "b");
            link(b, "b", EntryType::Symlink, "a");
            file(b, "a/x", b"x");
        });
        let err = extract_layers(&root2, &[l3], &opts()).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    #[test]
    fn directory_times_are_never_set_through_a_later_link() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir_all(outside.join("b")).unwrap();
        set_mtime(&outside.join("b"), 12345).unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        // a/ and a/b/ get their times at the layer's end; by then `a` is a
        // link to the outside (an absolute one: resolved in the root when
        // written through, but never followed for the saved times).
        let l = layer(tmp.path(), "l", |b| {
            dir(b, "a/");
            dir(b, "a/b/");
            link(b, "a", EntryType::Symlink, outside.to_str().unwrap());
        });
        extract_layers(&root, &[l], &opts()).unwrap();
        let mtime = fs::metadata(outside.join("b")).unwrap().modified().unwrap();
        let secs = mtime
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert_eq!(secs, 12345);

        let root2 = tmp.path().join("root2");
        fs::create_dir(&root2).unwrap();
        let l2 = layer(tmp.path(), "l2", |b| {
            link(b, "e", EntryType::Symlink, "");
            file(b, "e/x", b"x");
        });
        let err = extract_layers(&root2, &[l2], &opts()).unwrap_err();
        // Refused when made (the kernel would find nothing through it).
        assert!(err.to_string().contains("symlink without target"), "{err}");
    }

    #[test]
    fn refuses_escapes() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::create_dir(&outside).unwrap();
        type Build = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
        let cases: Vec<(&str, Build)> = vec![
            ("dotdot", Box::new(|b| file(b, "../x", b"pwned"))),
            ("abs", Box::new(|b| file(b, "/x", b"pwned"))),
            (
                "through-symlink",
                Box::new(|b| {
                    link(b, "esc", EntryType::Symlink, "../outside");
                    file(b, "esc/x", b"pwned");
                }),
            ),
            (
                "hardlink-out",
                Box::new(|b| link(b, "h", EntryType::Link, "../outside/y")),
            ),
        ];
        for (name, build) in cases {
            let root = tmp.path().join(format!("root-{name}"));
            fs::create_dir(&root).unwrap();
            let l = layer(tmp.path(), name, |b| build(b));
            let err = extract_layers(&root, &[l], &opts()).unwrap_err();
            assert!(matches!(err, ExtractError::Unsafe { .. }), "{name}: {err}");
            assert!(!tmp.path().join("x").exists());
            assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        }
    }

    #[test]
    fn ratio_and_size_limits() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir(&root).unwrap();
        let zeros = vec![0u8; 32 << 20];
        let bomb = layer(tmp.path(), "bomb", |b| file(b, "z", &zeros));
        let err = extract_layers(&root, std::slice::from_ref(&bomb), &opts()).unwrap_err();
        assert!(matches!(err, ExtractError::Ratio { .. }), "{err}");
        let no_ratio = ExtractOptions {
            max_ratio: 0,
            max_bytes: Some(1 << 20),
            privileged: false,
        };
        let err = extract_layers(&root, &[bomb], &no_ratio).unwrap_err();
        assert!(matches!(err, ExtractError::TooLarge { .. }), "{err}");
    }

    /// An extension entry (`L`, `K`, `x`, `g`, ...) with `payload`, its
    /// header claiming `size` bytes (a stream cut short when larger).
    fn ext(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, size: u64, payload: &[u8]) {
        let mut h = if matches!(kind, EntryType::XHeader | EntryType::XGlobalHeader) {
            tar::Header::new_ustar()
        } else {
            tar::Header::new_gnu()
        };
        h.as_old_mut().name[..9].copy_from_slice(b"././@Long");
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        let inner = b.get_mut();
        inner.extend_from_slice(h.as_bytes());
        inner.extend_from_slice(payload);
        inner.resize(inner.len().next_multiple_of(512), 0);
    }

    /// PAX records: "<len> <key>=<value>\n", the length counting itself.
    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (key, value) in records {
            let body = key.len() + value.len() + 3; // ' ', '=', '\n'
            let mut len = body + 1;
            while len != body + len.to_string().len() {
                len = body + len.to_string().len();
            }
            out.extend_from_slice(format!("{len} {key}=").as_bytes());
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        out
    }

    fn extract_one(
        tmp: &Path,
        name: &str,
        build: impl FnOnce(&mut tar::Builder<Vec<u8>>),
    ) -> (PathBuf, Result<u64, ExtractError>) {
        let root = tmp.join(format!("root-{name}"));
        fs::create_dir(&root).unwrap();
        let l = layer(tmp, name, build);
        let result = extract_layers(&root, &[l], &opts());
        (root, result)
    }

    #[test]
    fn oversized_names_and_headers_are_refused_unread() {
        let tmp = tempfile::tempdir().unwrap();
        // Each header claims 1 GiB and the stream ends soon after: refused
        // on the header alone (read, the tar would be cut short instead).
        let gib = 1u64 << 30;
        type Build = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
        let cases: Vec<(&str, &str, Build)> = vec![
            ("long-name", "a GNU long name entry of 1073741824 bytes is over the limit of 4096 bytes (PATH_MAX)",
             Box::new(move |b| ext(b, EntryType::GNULongName, gib, &[b'a'; 4096]))),
            ("long-link", "a GNU long link entry of 1073741824 bytes",
             Box::new(move |b| ext(b, EntryType::GNULongLink, gib, &[b'a'; 4096]))),
            ("pax", "a PAX extended header of 1073741824 bytes is over the limit of 1048576 bytes",
             Box::new(move |b| ext(b, EntryType::XHeader, gib, &pax(&[("path", b"x")])))),
            ("pax-global", "a PAX global header of 1073741824 bytes",
             Box::new(move |b| ext(b, EntryType::XGlobalHeader, gib, &pax(&[("comment", b"x")])))),
            // After an ordinary entry: the guard follows the framing.
            ("after-file", "a GNU long name entry of 4097 bytes",
             Box::new(|b| {
                 file(b, "f", &[7u8; 1000]);
                 ext(b, EntryType::GNULongName, MAX_PATH + 1, &[b'a'; 4097]);
                 file(b, "g", b"g");
             })),
        ];
        for (name, want, build) in cases {
            let (root, result) = extract_one(tmp.path(), name, build);
            let err = result.unwrap_err();
            assert!(matches!(err, ExtractError::TooLong { .. }), "{name}: {err}");
            let text = err.to_string();
            assert!(text.contains(want), "{name}: {text}");
            assert!(text.len() < 300 && !text.contains('\n'), "{name}: {text}");
            assert!(!root.join("g").exists());
        }
    }

    #[test]
    fn long_names_within_the_limits_extract() {
        let tmp = tempfile::tempdir().unwrap();
        let long = "d/".to_owned() + &"n".repeat(250);
        let deep = "p/".repeat(40) + "x";
        let (root, result) = extract_one(tmp.path(), "ok", |b| {
            let mut name = long.clone().into_bytes();
            name.push(0);
            ext(b, EntryType::GNULongName, name.len() as u64, &name);
            file(b, "ignored-name", b"gnu");
            let records = pax(&[("path", deep.as_bytes()), ("mtime", b"1700000000.5")]);
            ext(b, EntryType::XHeader, records.len() as u64, &records);
            file(b, "ignored-too", b"pax");
        });
        result.unwrap();
        assert_eq!(fs::read(root.join(&long)).unwrap(), b"gnu");
        assert_eq!(fs::read(root.join(&deep)).unwrap(), b"pax");
    }

    #[test]
    fn paths_and_link_targets_over_path_max() {
        let tmp = tempfile::tempdir().unwrap();
        let long = format!("\x1b[31m{}", "a".repeat(5000));
        let (_, result) = extract_one(tmp.path(), "path", |b| {
            let records = pax(&[("path", long.as_bytes())]);
            ext(b, EntryType::XHeader, records.len() as u64, &records);
            file(b, "x", b"x");
        });
        let text = result.unwrap_err().to_string();
        // Cut to 200 characters and escaped: one short line.
        let shown = format!("\\u{{1b}}[31m{}…", "a".repeat(195));
        assert!(
            text.contains(&format!("the path of entry \"{shown}\" of 5005 bytes")),
            "{text}"
        );
        assert!(
            text.ends_with("over the limit of 4096 bytes (PATH_MAX)"),
            "{text}"
        );
        assert!(!text.contains('\x1b') && text.len() < 400, "{text}");

        let (root, result) = extract_one(tmp.path(), "link", |b| {
            let records = pax(&[("linkpath", "t".repeat(4097).as_bytes())]);
            ext(b, EntryType::XHeader, records.len() as u64, &records);
            link(b, "l", EntryType::Symlink, "short");
        });
        let text = result.unwrap_err().to_string();
        assert!(
            text.contains("the link target of entry \"l\" of 4097 bytes"),
            "{text}"
        );
        assert!(fs::symlink_metadata(root.join("l")).is_err());
    }

    #[test]
    fn the_guard_frames_entries_as_the_tar_crate_does() {
        let tmp = tempfile::tempdir().unwrap();
        // A PAX `size` overrides the header's: here the data (1024 bytes,
        // header size 0) starts with what looks like a huge long name
        // header. Framed by the header's size, it would be refused.
        let mut fake = tar::Header::new_gnu();
        fake.set_entry_type(EntryType::GNULongName);
        fake.set_size(1 << 30);
        fake.set_cksum();
        let mut data = fake.as_bytes().to_vec();
        data.resize(1024, b'z');
        let (root, result) = extract_one(tmp.path(), "pax-size", |b| {
            let records = pax(&[("size", b"1024")]);
            ext(b, EntryType::XHeader, records.len() as u64, &records);
            let mut h = header("big", EntryType::Regular, 0);
            h.set_cksum();
            let inner = b.get_mut();
            inner.extend_from_slice(h.as_bytes());
            inner.extend_from_slice(&data);
            file(b, "after", b"after");
        });
        result.unwrap();
        assert_eq!(fs::read(root.join("big")).unwrap(), data);
        assert_eq!(fs::read(root.join("after")).unwrap(), b"after");

        // A GNU sparse file's extension blocks come before its data; a long
        // name after it is still seen (sparse files themselves are skipped).
        let (_, result) = extract_one(tmp.path(), "sparse", |b| {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..6].copy_from_slice(b"sparse");
            h.set_entry_type(EntryType::GNUSparse);
            h.set_size(512);
            let gnu = h.as_gnu_mut().unwrap();
            gnu.sparse[0].set_offset(0);
            gnu.sparse[0].set_length(512);
            gnu.set_real_size(512);
            gnu.isextended[0] = 1;
            h.set_cksum();
            let inner = b.get_mut();
            inner.extend_from_slice(h.as_bytes());
            let mut extension = [0u8; 512];
            extension[504] = 0; // no further block
            inner.extend_from_slice(&extension);
            inner.extend_from_slice(&[b's'; 512]);
            ext(b, EntryType::GNULongName, MAX_PATH + 1, &[b'a'; 4097]);
            file(b, "g", b"g");
        });
        let text = result.unwrap_err().to_string();
        assert!(
            text.contains("a GNU long name entry of 4097 bytes"),
            "{text}"
        );

        // Endless sparse extension blocks: bounded too.
        let (_, result) = extract_one(tmp.path(), "sparse-map", |b| {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..1].copy_from_slice(b"s");
            h.set_entry_type(EntryType::GNUSparse);
            h.set_size(0);
            h.as_gnu_mut().unwrap().isextended[0] = 1;
            h.set_cksum();
            let inner = b.get_mut();
            inner.extend_from_slice(h.as_bytes());
            let mut extension = [0u8; 512];
            extension[504] = 1;
            for _ in 0..(MAX_PAX / 512 + 1) {
                inner.extend_from_slice(&extension);
            }
        });
        let text = result.unwrap_err().to_string();
        assert!(text.contains("a GNU sparse map of 1049088 bytes"), "{text}");
    }

    #[test]
    fn shown_names_are_short_and_escaped() {
        assert_eq!(show_name(b"plain/name"), "plain/name");
        assert_eq!(show_name(b"a\nb\"c\\"), "a\\nb\\\"c\\\\");
        let long = show_name(&[0xffu8; 300]);
        assert_eq!(long.chars().count(), 201);
        assert!(long.ends_with('…'));
    }
}
