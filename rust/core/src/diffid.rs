//! DiffIDs: the SHA-256 of a layer's uncompressed tar, streamed.
//!
//! The compression is told by the file's first bytes, as docker's
//! `archive.DetectCompression` does: gzip (every member, as `gzip -d` reads
//! concatenated members), zstd (every frame, skippable frames included), or
//! none (a plain tar).

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::rc::Rc;

use sha2::{Digest as _, Sha256};

use crate::digest::{Digest, CHUNK};
use crate::error::{CoreError, Result};
use crate::gunzip::GzipReader;

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Other compressions docker's DetectCompression knows, named in the error.
const BZIP2_MAGIC: &[u8] = &[0x42, 0x5a, 0x68];
const XZ_MAGIC: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

/// A ratio is only judged past this many decompressed bytes: small layers of
/// text (or the 1 KiB empty tar) compress far better than big ones.
pub const RATIO_GRACE: u64 = 8 << 20;
/// The default limit of decompressed : compressed bytes of one layer. gzip
/// tops out near 1032:1 (all zeros), zstd far higher; real layers stay well
/// under 100:1.
pub const DEFAULT_MAX_RATIO: u64 = 200;

/// Whether `out` decompressed bytes from `consumed` compressed ones break
/// the limit `max_ratio` (0: no limit), past the grace of RATIO_GRACE.
pub fn over_ratio(max_ratio: u64, out: u64, consumed: u64) -> bool {
    max_ratio > 0 && out > RATIO_GRACE && out > max_ratio.saturating_mul(consumed.max(1))
}

/// How a layer file is named in errors: a store blob (named by its hex
/// digest) by its digest, anything else by its path.
pub(crate) fn layer_name(layer: &Path) -> String {
    match layer.file_name().map(|n| n.to_string_lossy()) {
        Some(n) if n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) => {
            format!("sha256:{n}")
        }
        _ => layer.display().to_string(),
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Classifies a blob by its first bytes. A plain tar has "ustar" at offset
/// 257; an empty blob, or one shorter than a tar header that is all zeros,
/// counts as uncompressed too (docker's empty layer is 1024 zero bytes).
pub fn detect_compression(head: &[u8]) -> std::result::Result<Compression, String> {
    if head.starts_with(GZIP_MAGIC) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(ZSTD_MAGIC) || is_zstd_skippable(head) {
        return Ok(Compression::Zstd);
    }
    if head.starts_with(BZIP2_MAGIC) {
        return Err("bzip2-compressed layers are not supported".into());
    }
    if head.starts_with(XZ_MAGIC) {
        return Err("xz-compressed layers are not supported".into());
    }
    let is_tar = head.len() >= 262 && &head[257..262] == b"ustar";
    if is_tar || head.iter().all(|&b| b == 0) {
        return Ok(Compression::None);
    }
    Err("unknown layer compression: neither gzip, zstd nor a tar archive".into())
}

fn is_zstd_skippable(head: &[u8]) -> bool {
    head.len() >= 4 && head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]
}

/// Remembers whether an error came from the file itself (an OSError) rather
/// than from the decoder (corrupt data), and counts the compressed bytes the
/// decoder has taken (for ratio limits, see rootfs/pipeline.rs).
struct Tracked<R> {
    inner: R,
    failed: bool,
    consumed: Rc<Cell<u64>>,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf).inspect_err(|_| self.failed = true)?;
        self.consumed.set(self.consumed.get() + n as u64);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Tracked<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self.inner.fill_buf() {
            Ok(b) => Ok(b),
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }
    fn consume(&mut self, amt: usize) {
        self.consumed.set(self.consumed.get() + amt as u64);
        self.inner.consume(amt)
    }
}

/// Runs `f` on the decompressed stream of the layer blob at `path` (gzip,
/// zstd or plain, told by its first bytes). `f` also gets a counter of the
/// compressed bytes read so far.
///
/// Errors: `CoreError::File` when the file cannot be opened or read;
/// `CoreError::CorruptLayer` for an unknown compression, or for any other error
/// `f` returns (taken as corrupt data: callers that fail for their own
/// reasons keep the reason themselves).
pub fn read_layer<T>(
    path: &Path,
    f: impl FnOnce(&mut dyn Read, &Rc<Cell<u64>>) -> io::Result<T>,
) -> Result<T> {
    let file = File::open(path).map_err(|e| CoreError::file("open", path, e))?;
    let consumed = Rc::new(Cell::new(0));
    let mut reader = Tracked {
        inner: BufReader::with_capacity(CHUNK, file),
        failed: false,
        consumed: consumed.clone(),
    };
    let head = reader
        .fill_buf()
        .map_err(|e| CoreError::file("read", path, e))?;
    // 512 bytes is a whole tar header; fill_buf gives more unless the file is short.
    let head = &head[..head.len().min(512)];
    let kind = detect_compression(head)
        .map_err(|m| CoreError::CorruptLayer(format!("{}: {m}", path.display())))?;
    let result = match kind {
        Compression::None => f(&mut reader, &consumed),
        Compression::Gzip => f(&mut GzipReader::new(&mut reader), &consumed),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(&mut reader) {
            Ok(mut d) => f(&mut d, &consumed),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(v) => Ok(v),
        Err(e) if reader.failed => Err(CoreError::file("read", path, e)),
        Err(e) => Err(CoreError::CorruptLayer(format!(
            "{}: corrupt {} data: {e}",
            path.display(),
            match kind {
                Compression::Gzip => "gzip",
                Compression::Zstd => "zstd",
                Compression::None => "tar",
            }
        ))),
    }
}

/// 'sha256:<hex>' of the decompressed content of the layer blob at `path`,
/// refused once it decompresses past `max_ratio` (see [`over_ratio`]).
///
/// Errors: `CoreError::File` when the file cannot be opened or read;
/// `CoreError::CorruptLayer` for an unknown compression or corrupt data;
/// `CoreError::RatioExceeded` past the ratio.
pub fn diff_id_file(path: &Path, max_ratio: u64) -> Result<Digest> {
    let mut over = false;
    let result = read_layer(path, |reader, consumed| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut out = 0u64;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(Digest::from_hasher(hasher)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            out += n as u64;
            if over_ratio(max_ratio, out, consumed.get()) {
                over = true;
                return Err(io::Error::other("decompression ratio limit"));
            }
            hasher.update(&buf[..n]);
        }
    });
    if over {
        return Err(CoreError::RatioExceeded {
            digest: layer_name(path),
            max_ratio,
        });
    }
    result
}

/// Writes the decompressed content of the layer blob at `src` to `dest`
/// (created or truncated) and returns its digest, the layer's diffID.
///
/// Errors: as [`diff_id_file`], plus `CoreError::File` for `dest`.
pub fn decompress_to(src: &Path, dest: &Path) -> Result<Digest> {
    let out = File::create(dest).map_err(|e| CoreError::file("create", dest, e))?;
    let mut out = io::BufWriter::with_capacity(CHUNK, out);
    let mut write_error: Option<io::Error> = None;
    let digest = read_layer(src, |reader, _| {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            if let Err(e) = out.write_all(&buf[..n]) {
                let msg = e.to_string();
                write_error = Some(e);
                return Err(io::Error::other(msg));
            }
        }
        Ok(Digest::from_hasher(hasher))
    });
    if let Some(e) = write_error {
        return Err(CoreError::file("write", dest, e));
    }
    let digest = digest?;
    let file = out
        .into_inner()
        .map_err(|e| CoreError::file("write", dest, e.into_error()))?;
    file.sync_all()
        .map_err(|e| CoreError::file("fsync", dest, e))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_bytes;
    use crate::testutil::{gzip, gzip_best, tar_like};

    fn write(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> std::path::PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn plain_tar() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_like(3 * CHUNK + 5);
        let path = write(&dir, "t", &data);
        assert_eq!(
            diff_id_file(&path, DEFAULT_MAX_RATIO).unwrap(),
            sha256_bytes(&data)
        );
        let empty = write(&dir, "e", b"");
        assert_eq!(
            diff_id_file(&empty, DEFAULT_MAX_RATIO).unwrap(),
            sha256_bytes(b"")
        );
        let zeros = write(&dir, "z", &[0u8; 1024]);
        assert_eq!(
            diff_id_file(&zeros, DEFAULT_MAX_RATIO).unwrap(),
            sha256_bytes(&[0u8; 1024])
        );
    }

    #[test]
    fn gzip_multi_member() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_like(2 * CHUNK + 99);
        let (a, b) = data.split_at(700_000);
        let mut blob = gzip(a);
        blob.extend(gzip(b));
        let path = write(&dir, "g", &blob);
        assert_eq!(
            diff_id_file(&path, DEFAULT_MAX_RATIO).unwrap(),
            sha256_bytes(&data)
        );
    }

    #[test]
    fn decompress_to_writes_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_like(CHUNK + 77);
        let src = write(&dir, "g", &gzip(&data));
        let dest = dir.path().join("out.tar");
        assert_eq!(decompress_to(&src, &dest).unwrap(), sha256_bytes(&data));
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        let bad = write(&dir, "u", b"not a layer at all");
        assert!(decompress_to(&bad, &dest).is_err());
    }

    #[test]
    fn zstd_frames() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_like(CHUNK + 3);
        let (a, b) = data.split_at(1000);
        let mut blob = zstd::encode_all(a, 3).unwrap();
        blob.extend(zstd::encode_all(b, 3).unwrap());
        let path = write(&dir, "z", &blob);
        assert_eq!(
            diff_id_file(&path, DEFAULT_MAX_RATIO).unwrap(),
            sha256_bytes(&data)
        );
    }

    #[test]
    fn ratio_limit() {
        let dir = tempfile::tempdir().unwrap();
        let zeros = vec![0u8; 32 << 20];
        for (name, blob) in [
            ("gz", gzip_best(&zeros)),
            ("zst", zstd::encode_all(&zeros[..], 3).unwrap()),
        ] {
            let path = write(&dir, name, &blob);
            match diff_id_file(&path, DEFAULT_MAX_RATIO).unwrap_err() {
                e @ CoreError::RatioExceeded { max_ratio: 200, .. } => {
                    assert!(e.to_string().contains("--max-ratio 200"), "{e}")
                }
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(diff_id_file(&path, 0).unwrap(), sha256_bytes(&zeros));
        }
        // Under the grace, however well it compresses.
        let small = vec![0u8; RATIO_GRACE as usize];
        let path = write(&dir, "small", &gzip(&small));
        assert_eq!(diff_id_file(&path, 2).unwrap(), sha256_bytes(&small));
    }

    #[test]
    fn unknown_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "u", b"hello, this is not a layer");
        let e = diff_id_file(&path, DEFAULT_MAX_RATIO).unwrap_err();
        assert!(e.to_string().contains("unknown layer compression"), "{e}");
        let path = write(&dir, "b", b"BZh91AY&SY");
        assert!(diff_id_file(&path, DEFAULT_MAX_RATIO)
            .unwrap_err()
            .to_string()
            .contains("bzip2"));

        let mut blob = gzip(&tar_like(10_000));
        let n = blob.len();
        blob[n / 2] ^= 0xff;
        blob.truncate(n - 4);
        let path = write(&dir, "c", &blob);
        match diff_id_file(&path, DEFAULT_MAX_RATIO).unwrap_err() {
            CoreError::CorruptLayer(m) => assert!(m.contains("corrupt gzip"), "{m}"),
            other => panic!("{other:?}"),
        }
        match diff_id_file(&dir.path().join("missing"), 0).unwrap_err() {
            CoreError::File { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
