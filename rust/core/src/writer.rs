//! BlobWriter: ingest -> verify -> rename. A partial file in the ingest area
//! is appended to while hashed; commit only renames verified bytes into place.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::digest::{hash_reader, Digest};
use crate::error::{CoreError, Result};

/// Coalesces small writes from Python; the fetcher's ~1 MiB chunks bypass it.
const BUF: usize = 256 * 1024;

/// Every this many bytes, writeback of what was written is started, so that
/// the disk works while the download goes on and the fsync in commit() only
/// waits for the tail (it otherwise waits for the whole blob, ~0.2 s/100 MB).
const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

pub struct BlobWriter {
    path: PathBuf,
    digest: Digest,
    size: Option<u64>,
    offset: u64,
    /// None once closed, committed, or poisoned by a failed write.
    open: Option<Open>,
}

struct Open {
    file: BufWriter<File>,
    hasher: Sha256,
    /// Offset up to which writeback was started.
    writeback_from: u64,
}

impl Open {
    fn new(file: File, hasher: Sha256, offset: u64) -> Open {
        Open {
            file: BufWriter::with_capacity(BUF, file),
            hasher,
            writeback_from: offset,
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
    pub fn open(path: impl Into<PathBuf>, digest: &str, size: Option<u64>) -> Result<BlobWriter> {
        let path = path.into();
        let digest = Digest::parse(digest)?;
        // O_APPEND: every write lands at the end, also right after set_len(0).
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(|e| CoreError::file("open", &path, e))?;
        let len = file
            .metadata()
            .map_err(|e| CoreError::file("stat", &path, e))?
            .len();
        let mut hasher = Sha256::new();
        let offset = if size.is_some_and(|s| len > s) {
            file.set_len(0)
                .map_err(|e| CoreError::file("truncate", &path, e))?;
            0
        } else {
            // Only the length seen: a file still growing (or a device) must
            // not keep us reading.
            let read = hash_reader(&mut hasher, &mut (&file).take(len))
                .map_err(|e| CoreError::file("read", &path, e))?;
            if read != len {
                let e = io::Error::new(io::ErrorKind::UnexpectedEof, "partial file shrank");
                return Err(CoreError::file("read", &path, e));
            }
            len
        };
        Ok(BlobWriter {
            path,
            digest,
            size,
            offset,
            open: Some(Open::new(file, hasher, offset)),
        })
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
    pub fn write(&mut self, data: &[u8]) -> Result<()> {
        let open = self.open.as_mut().ok_or(CoreError::Closed)?;
        let end = self.offset + data.len() as u64;
        if let Some(size) = self.size.filter(|&s| end > s) {
            return Err(CoreError::SizeMismatch {
                expected: size,
                actual: end,
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
        open.start_writeback(end);
        self.offset = end;
        Ok(())
    }

    /// Drops everything written so far: start over at offset 0.
    pub fn truncate(&mut self) -> Result<()> {
        let open = self.open.take().ok_or(CoreError::Closed)?;
        // Buffered bytes are discarded, not flushed: they are being dropped.
        let (file, _) = open.file.into_parts();
        file.set_len(0)
            .map_err(|e| CoreError::file("truncate", &self.path, e))?;
        self.offset = 0;
        self.open = Some(Open::new(file, Sha256::new(), 0));
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
        let actual = Digest::from_hasher(open.hasher);
        if actual != self.digest {
            self.discard();
            return Err(CoreError::DigestMismatch {
                expected: self.digest.to_string(),
                actual: actual.to_string(),
            });
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
