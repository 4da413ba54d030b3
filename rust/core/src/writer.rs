//! BlobWriter: ingest -> verify -> rename. A partial file in the ingest area
//! is written in order while hashed; commit only renames verified bytes into
//! place. A blob fetched as several ranges (ChunkWriter) has its later
//! chunks written in place ahead of the writer, which hashes them in order
//! when it reaches them (`absorb`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sha2::{Digest as _, Sha256};

use crate::diffid::DEFAULT_MAX_RATIO;
use crate::digest::{read_chunks, Digest, CHUNK};
use crate::error::{CoreError, Result};
use crate::layer::{LayerDigest, Unpacked, Unpacker};

/// Coalesces small writes from Python; the fetcher's ~1 MiB chunks bypass it.
const BUF: usize = 256 * 1024;

/// Every this many bytes, writeback of what was written is started, so that
/// the disk works while the download goes on and the fsync in commit() only
/// waits for the tail (it otherwise waits for the whole blob, ~0.2 s/100 MB).
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// The default ceiling for a blob whose descriptor gives no size (only
/// schema1 layers): above the 10,000 MiB per layer that registries of the
/// schema1 era accepted (ECR's cap then), so no genuine one is refused, while
/// an endless body stops there instead of filling the disk.
pub const DEFAULT_MAX_UNSIZED: u64 = 10 << 30;

/// What a registry's bytes may make a writer take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A layer's decompressed : compressed bytes (diffid::over_ratio; 0: no limit).
    pub max_ratio: u64,
    /// Bytes of a blob of unknown size (0: no limit).
    pub max_unsized: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_ratio: DEFAULT_MAX_RATIO,
            max_unsized: DEFAULT_MAX_UNSIZED,
        }
    }
}

impl Limits {
    /// Whether `len` bytes break the ceiling for a blob of size `size`.
    fn unsized_over(&self, size: Option<u64>, len: u64) -> bool {
        size.is_none() && self.max_unsized > 0 && len > self.max_unsized
    }
}

pub struct BlobWriter {
    path: PathBuf,
    digest: Digest,
    size: Option<u64>,
    limits: Limits,
    offset: u64,
    /// None once closed, committed, or poisoned by a failed write.
    open: Option<Open>,
    /// A layer writer also decompresses and hashes what it writes (layer.rs).
    layer: bool,
    /// Set by a successful commit() of a layer writer.
    layer_digest: Option<LayerDigest>,
    /// Where a fetch into this writer stops (set from another thread).
    stop: Arc<Stop>,
}

/// Where a fetch streaming into a BlobWriter stops: another thread lowers it
/// while the fetch runs (the rest of the blob then comes as chunks). Under
/// one lock with the offset the running write will reach, so that the stop
/// it sets is exact: never below a byte already taken.
#[derive(Debug)]
pub struct Stop {
    state: Mutex<StopState>,
}

#[derive(Debug)]
struct StopState {
    stop: u64,
    /// The writer's offset once the write in progress (if any) is done.
    reserved: u64,
    /// Bumped by truncate(): a stop computed before it is meaningless.
    generation: u64,
}

impl Stop {
    fn new(offset: u64) -> Stop {
        Stop {
            state: Mutex::new(StopState {
                stop: u64::MAX,
                reserved: offset,
                generation: 0,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StopState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes the writer take no byte at or past `at` (nor past any byte it
    /// already took): returns the stop in force, or None when the writer
    /// was truncated since `generation` (see [`Stop::generation`]).
    pub fn stop_at(&self, at: u64, generation: u64) -> Option<u64> {
        let mut st = self.lock();
        if st.generation != generation {
            return None;
        }
        st.stop = at.max(st.reserved);
        Some(st.stop)
    }

    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// How many of `len` bytes at `offset` may be taken (reserving them).
    fn reserve(&self, offset: u64, len: usize) -> usize {
        let mut st = self.lock();
        let n = st.stop.saturating_sub(offset).min(len as u64);
        st.reserved = offset + n;
        n as usize
    }

    fn room(&self, offset: u64) -> u64 {
        self.lock().stop.saturating_sub(offset)
    }

    fn moved(&self, offset: u64) {
        self.lock().reserved = offset;
    }

    fn reset(&self) {
        let mut st = self.lock();
        st.stop = u64::MAX;
        st.reserved = 0;
        st.generation += 1;
    }
}

struct Open {
    file: BufWriter<File>,
    hasher: Sha256,
    /// Offset up to which writeback was started.
    writeback_from: u64,
    /// For a layer writer: the decompressor + hasher fed every byte written.
    unpacker: Option<Unpacker>,
}

impl Open {
    fn new(file: File, hasher: Sha256, offset: u64, unpacker: Option<Unpacker>) -> Open {
        Open {
            file: BufWriter::with_capacity(BUF, file),
            hasher,
            writeback_from: offset,
            unpacker,
        }
    }

    /// Starts (does not wait for) writeback of the bytes up to `offset`.
    /// Only a hint: a failure here shows again, and is reported, at fsync.
    fn start_writeback(&mut self, offset: u64) {
        if offset - self.writeback_from < WRITEBACK_EVERY || self.file.flush().is_err() {
            return;
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let from = self.writeback_from;
            // SAFETY: a plain syscall on a file descriptor we own; no memory is shared.
            unsafe {
                libc::sync_file_range(
                    self.file.get_ref().as_raw_fd(),
                    from as libc::off64_t,
                    (offset - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        self.writeback_from = offset;
    }
}

impl BlobWriter {
    /// Opens (or creates) the partial file at `path` and continues from its
    /// end, re-hashing what is already there. A partial file longer than a
    /// known `size` can never verify, so it is started over.
    ///
    /// Re-hashing, not a saved SHA-256 state, on purpose: after a kill -9 or
    /// a power cut a state file and the partial's length can disagree (no
    /// order between their writes reaching the disk), the file alone cannot;
    /// reading it back from the page cache (~1 GB/s, ~0.3 GB/s for a layer)
    /// is cheap beside the network; and a layer's decompressor state has to
    /// be rebuilt from the bytes anyway. Wrong bytes in the prefix fail the digest at commit(),
    /// which removes the file, so the caller starts over.
    pub fn open(path: impl Into<PathBuf>, digest: &str, size: Option<u64>) -> Result<BlobWriter> {
        BlobWriter::open_limited(path, digest, size, false, Limits::default())
    }

    /// As [`BlobWriter::open_limited`], trusting only the first `trusted`
    /// bytes of the partial file (None: all of them): the writer continues
    /// from there, and the bytes past it stay in the file (chunks of a
    /// ranged download, taken in with `absorb` once their record says so).
    pub fn open_trusted(
        path: impl Into<PathBuf>,
        digest: &str,
        size: Option<u64>,
        layer: bool,
        limits: Limits,
        trusted: Option<u64>,
    ) -> Result<BlobWriter> {
        BlobWriter::open_inner(path.into(), digest, size, layer, limits, trusted)
    }

    /// As [`BlobWriter::open`], for a layer: what is written is also
    /// decompressed (gzip, zstd or plain tar, told by the first bytes) and
    /// hashed as it is written, so that commit() gives the layer's diffID
    /// ([`BlobWriter::layer_digest`]) without reading the file again.
    pub fn open_layer(
        path: impl Into<PathBuf>,
        digest: &str,
        size: Option<u64>,
    ) -> Result<BlobWriter> {
        BlobWriter::open_limited(path, digest, size, true, Limits::default())
    }

    /// [`BlobWriter::open`] (`layer` false) or [`BlobWriter::open_layer`]
    /// with other `limits`. Past a limit, a write (or this open, replaying a
    /// partial file) fails with `CoreError::RatioExceeded` or
    /// `UnsizedTooLarge` and the partial file is removed: those bytes could
    /// never be committed.
    pub fn open_limited(
        path: impl Into<PathBuf>,
        digest: &str,
        size: Option<u64>,
        layer: bool,
        limits: Limits,
    ) -> Result<BlobWriter> {
        BlobWriter::open_inner(path.into(), digest, size, layer, limits, None)
    }

    fn open_inner(
        path: PathBuf,
        digest: &str,
        size: Option<u64>,
        layer: bool,
        limits: Limits,
        trusted: Option<u64>,
    ) -> Result<BlobWriter> {
        let digest = Digest::parse(digest)?;
        // Not O_APPEND: the writer writes at its offset, and chunks fetched
        // ahead of it may already lie past that (see absorb()).
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| CoreError::file("open", &path, e))?;
        exclusive(&file).map_err(|e| CoreError::file("lock", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| CoreError::file("stat", &path, e))?
            .len();
        let mut hasher = Sha256::new();
        let mut unpacker = layer.then(|| Unpacker::start(limits.max_ratio));
        // Longer than the blob (or than allowed for one of unknown size: a
        // partial from a run with a higher limit) can never verify now.
        let offset = if size.is_some_and(|s| len > s) || limits.unsized_over(size, len) {
            file.set_len(0)
                .map_err(|e| CoreError::file("truncate", &path, e))?;
            0
        } else {
            // Only the length seen: a file still growing (or a device) must
            // not keep us reading. A layer writer replays this prefix through
            // its decompressor too: the decoder state at the resume point
            // (inside a deflate block, a zstd frame) cannot be saved, so it
            // is rebuilt from the bytes, in the same single read as the hash.
            let len = trusted.map_or(len, |t| t.min(len));
            let read = replay(&mut (&file).take(len), &mut hasher, unpacker.as_mut())
                .map_err(|e| CoreError::file("read", &path, e))?;
            if read != len {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "partial file shrank");
                return Err(CoreError::file("read", &path, e));
            }
            len
        };
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| CoreError::file("seek", &path, e))?;
        let mut writer = BlobWriter {
            path,
            digest,
            size,
            limits,
            offset,
            open: None,
            layer,
            layer_digest: None,
            stop: Arc::new(Stop::new(offset)),
        };
        if unpacker.as_ref().is_some_and(Unpacker::over_ratio) {
            writer.discard();
            return Err(writer.ratio_exceeded());
        }
        writer.open = Some(Open::new(file, hasher, offset, unpacker));
        Ok(writer)
    }

    /// Whether this writer computes a diffID (opened with `open_layer`).
    pub fn is_layer(&self) -> bool {
        self.layer
    }

    /// The layer's diffID and uncompressed size, once a layer writer has
    /// committed successfully.
    pub fn layer_digest(&self) -> Option<LayerDigest> {
        self.layer_digest
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Bytes in the partial file: the next `Range` start.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Appends and hashes. Refuses, writing nothing, to go past a known size.
    /// Past a limit (see [`BlobWriter::open_limited`]) fails, closed, with
    /// the partial file removed.
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let open = self.open.as_mut().ok_or(CoreError::Closed)?;
        let end = self.offset + data.len() as u64;
        if let Some(size) = self.size.filter(|&s| end > s) {
            return Err(CoreError::SizeMismatch {
                expected: size,
                actual: end,
            });
        }
        if self.limits.unsized_over(self.size, end) {
            self.abandon();
            return Err(CoreError::UnsizedTooLarge {
                digest: self.digest.to_string(),
                limit: self.limits.max_unsized,
            });
        }
        if let Err(e) = open.file.write_all(data) {
            // How much reached the file is unknown: drop the state (without a
            // second flush attempt) so that only a reopen, which re-hashes
            // the file, can continue.
            if let Some(open) = self.open.take() {
                drop(open.file.into_parts());
            }
            return Err(CoreError::file("write", &self.path, e));
        }
        open.hasher.update(data);
        let mut over = false;
        if let Some(unpacker) = open.unpacker.as_mut() {
            unpacker.feed(data);
            over = unpacker.over_ratio();
        }
        open.start_writeback(end);
        self.offset = end;
        if over {
            self.abandon();
            return Err(self.ratio_exceeded());
        }
        Ok(())
    }

    /// Writes as much of `data` as the stop allows (see [`Stop`]); returns
    /// how much that was (fewer than `data.len()`: the stop is reached).
    pub fn write_upto(&mut self, data: &[u8]) -> Result<usize> {
        let n = self.stop.reserve(self.offset, data.len());
        let out = self.write(&data[..n]).map(|()| n);
        self.stop.moved(self.offset);
        out
    }

    /// Bytes a fetch may still write before the stop.
    pub fn room(&self) -> u64 {
        self.stop.room(self.offset)
    }

    /// The handle another thread sets the stop through.
    pub fn stop(&self) -> Arc<Stop> {
        self.stop.clone()
    }

    /// Takes in the bytes already in the file from the offset up to `to`
    /// (written there by chunk fetches), hashing (and for a layer
    /// inflating) them in order, as if they had been written here.
    pub fn absorb(&mut self, to: u64) -> Result<()> {
        if to <= self.offset {
            return Ok(());
        }
        if let Some(size) = self.size.filter(|&s| to > s) {
            return Err(CoreError::SizeMismatch {
                expected: size,
                actual: to,
            });
        }
        let open = self.open.as_mut().ok_or(CoreError::Closed)?;
        open.file
            .flush()
            .map_err(|e| CoreError::file("write", &self.path, e))?;
        let mut buf = vec![0u8; CHUNK.min((to - self.offset) as usize)];
        let mut pos = self.offset;
        let mut over = false;
        while pos < to {
            let want = buf.len().min((to - pos) as usize);
            let got = match open.file.get_ref().read_at(&mut buf[..want], pos) {
                Ok(0) => {
                    let e = io::Error::new(io::ErrorKind::UnexpectedEof, "partial file shrank");
                    return Err(CoreError::file("read", &self.path, e));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CoreError::file("read", &self.path, e)),
            };
            open.hasher.update(&buf[..got]);
            if let Some(unpacker) = open.unpacker.as_mut() {
                unpacker.feed(&buf[..got]);
                over = unpacker.over_ratio();
            }
            pos += got as u64;
            if over {
                break;
            }
        }
        open.file
            .seek(SeekFrom::Start(pos))
            .map_err(|e| CoreError::file("seek", &self.path, e))?;
        self.offset = pos;
        self.stop.moved(pos);
        if over {
            self.abandon();
            return Err(self.ratio_exceeded());
        }
        Ok(())
    }

    /// Writes out what is buffered (the file then holds every byte up to
    /// the offset), keeping the writer open.
    pub fn flush(&mut self) -> Result<()> {
        match self.open.as_mut() {
            Some(open) => open
                .file
                .flush()
                .map_err(|e| CoreError::file("write", &self.path, e)),
            None => Ok(()),
        }
    }

    fn ratio_exceeded(&self) -> CoreError {
        CoreError::RatioExceeded {
            digest: self.digest.to_string(),
            max_ratio: self.limits.max_ratio,
        }
    }

    /// Closes without flushing (and stops the layer's stages) and removes
    /// the partial file.
    fn abandon(&mut self) {
        if let Some(open) = self.open.take() {
            drop(open.file.into_parts());
        }
        self.discard();
    }

    /// Drops everything written so far: start over at offset 0.
    pub fn truncate(&mut self) -> Result<()> {
        let open = self.open.take().ok_or(CoreError::Closed)?;
        // Buffered bytes are discarded, not flushed: they are being dropped.
        let (mut file, _) = open.file.into_parts();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .map_err(|e| CoreError::file("truncate", &self.path, e))?;
        self.offset = 0;
        self.stop.reset();
        let unpacker = self.layer.then(|| Unpacker::start(self.limits.max_ratio));
        self.open = Some(Open::new(file, Sha256::new(), 0, unpacker));
        Ok(())
    }

    /// Flushes and closes, keeping the partial file for a later resume.
    pub fn close(&mut self) -> Result<()> {
        match self.open.take() {
            Some(open) => open
                .file
                .into_inner()
                .map(drop)
                .map_err(|e| CoreError::file("write", &self.path, e.into_error())),
            None => Ok(()),
        }
    }

    /// Verifies size and digest, then makes the bytes durable at `dest`.
    /// On a mismatch the partial file is removed and nothing appears at
    /// `dest`. The writer is closed afterwards whatever the outcome.
    pub fn commit(&mut self, dest: &Path) -> Result<()> {
        let open = self.open.take().ok_or(CoreError::Closed)?;
        let file = open
            .file
            .into_inner()
            .map_err(|e| CoreError::file("write", &self.path, e.into_error()))?;
        if let Some(expected) = self.size.filter(|&s| s != self.offset) {
            self.discard();
            return Err(CoreError::SizeMismatch {
                expected,
                actual: self.offset,
            });
        }
        // The hash covers what this writer wrote; the file must hold just
        // that. Longer means someone else appended too (the per-digest lock
        // of the store is meant to prevent it): never commit such a file.
        let on_disk = file
            .metadata()
            .map_err(|e| CoreError::file("stat", &self.path, e))?
            .len();
        if on_disk != self.offset {
            self.discard();
            return Err(CoreError::SizeMismatch {
                expected: self.offset,
                actual: on_disk,
            });
        }
        let actual = Digest::from_hasher(open.hasher);
        if actual != self.digest {
            self.discard();
            return Err(CoreError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
        }
        if let Some(unpacker) = open.unpacker {
            match unpacker.finish() {
                Ok(found) => self.layer_digest = Some(found),
                // Verified bytes, but not a layer we can register.
                Err(Unpacked::Ratio) => {
                    self.discard();
                    return Err(self.ratio_exceeded());
                }
                Err(Unpacked::Corrupt(why)) => {
                    self.discard();
                    return Err(CoreError::CorruptLayer(format!(
                        "layer {}: {why}",
                        self.digest
                    )));
                }
            }
        }
        // Content-addressed: a complete file already at dest holds these bytes.
        if fs::metadata(dest).is_ok_and(|m| m.is_file() && m.len() == self.offset) {
            self.discard();
            return Ok(());
        }
        file.sync_all()
            .map_err(|e| CoreError::file("fsync", &self.path, e))?;
        drop(file);
        fs::rename(&self.path, dest).map_err(|e| CoreError::file("rename", dest, e))?;
        sync_parent(dest)
    }

    fn discard(&self) {
        // Best effort: the error being reported matters more than this one.
        let _ = fs::remove_file(&self.path);
    }
}

/// One range of a blob fetched on a connection of its own, written in place
/// into the blob's partial file (pwrite), unhashed: the BlobWriter of the
/// blob hashes it in order once it reaches it (`absorb`), and commit()
/// verifies the whole. Its position is shared so that the writer may take
/// in a chunk's bytes while they still arrive.
pub struct ChunkWriter {
    file: File,
    path: PathBuf,
    digest: Digest,
    end: u64,
    pos: Arc<AtomicU64>,
}

impl ChunkWriter {
    /// The bytes [start, end) of the blob in the existing partial file `path`.
    pub fn open(path: impl Into<PathBuf>, digest: &str, start: u64, end: u64) -> Result<Self> {
        let path = path.into();
        let digest = Digest::parse(digest)?;
        if start >= end {
            return Err(CoreError::Invalid(format!("empty chunk {start}-{end}")));
        }
        // Never created here: the blob's writer owns the file (gone: committed or removed).
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| CoreError::file("open", &path, e))?;
        Ok(ChunkWriter {
            file,
            path,
            digest,
            end,
            pos: Arc::new(AtomicU64::new(start)),
        })
    }

    /// The next byte to write (shared: readable while a fetch runs).
    pub fn position(&self) -> Arc<AtomicU64> {
        self.pos.clone()
    }

    pub fn offset(&self) -> u64 {
        self.pos.load(Ordering::Acquire)
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Writes what fits before the chunk's end; returns how much that was.
    pub fn write(&mut self, data: &[u8]) -> Result<usize> {
        let pos = self.offset();
        let n = (self.end - pos).min(data.len() as u64) as usize;
        self.file
            .write_all_at(&data[..n], pos)
            .map_err(|e| CoreError::file("write", &self.path, e))?;
        // Published after the bytes are in the file: a reader of the
        // position finds them there.
        self.pos.store(pos + n as u64, Ordering::Release);
        Ok(n)
    }
}

/// Hashes (and, for a layer, unpacks) everything `reader` yields; returns
/// the byte count.
fn replay(
    reader: &mut impl Read,
    hasher: &mut Sha256,
    mut unpacker: Option<&mut Unpacker>,
) -> io::Result<u64> {
    read_chunks(reader, |chunk| {
        hasher.update(chunk);
        if let Some(u) = unpacker.as_deref_mut() {
            u.feed(chunk);
        }
    })
}

/// One BlobWriter per partial file: it writes at its offset (chunks may lie
/// past it), so a second writer's bytes would land among the ones the first
/// hashed, unseen by its commit; the store's per-digest lock keeps a second
/// one away, and this makes sure (the lock goes with the file's last close,
/// a kill -9 too). Chunk writers (ChunkWriter) take no lock: their bytes are
/// hashed when the writer reads them back (absorb).
fn exclusive(file: &File) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            // Only a held lock stops us: a file system without flock
            // (ENOLCK, EOPNOTSUPP) leaves the store's own lock to do it.
            if e.kind() == io::ErrorKind::WouldBlock {
                let why = "another writer has this partial file open";
                return Err(io::Error::new(e.kind(), why));
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// Makes a rename durable: the directory entry lives in the parent.
fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| CoreError::file("fsync", parent, e))
}
