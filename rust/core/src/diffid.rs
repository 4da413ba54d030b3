//! DiffIDs: the SHA-256 of a layer's uncompressed tar, streamed.
//!
//! The compression is told by the file's first bytes, as docker's
//! `archive.DetectCompression` does: gzip (every member, as `gzip -d` reads
//! concatenated members), zstd (every frame, skippable frames included), or
//! none (a plain tar).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use flate2::bufread::MultiGzDecoder;
use sha2::{Digest as _, Sha256};

use crate::digest::{hash_reader, Digest, CHUNK};
use crate::error::{CoreError, Result};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];
/// Other compressions docker's DetectCompression knows, named in the error.
const BZIP2_MAGIC: &[u8] = &[0x42, 0x5a, 0x68];
const XZ_MAGIC: &[u8] = &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00];

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
/// than from the decoder (corrupt data).
struct Tracked<R> {
    inner: R,
    failed: bool,
}

impl<R: Read> Read for Tracked<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|_| self.failed = true)
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
        self.inner.consume(amt)
    }
}

/// 'sha256:<hex>' of the decompressed content of the layer blob at `path`.
///
/// Errors: `CoreError::File` when the file cannot be opened or read;
/// `CoreError::Invalid` for an unknown compression or corrupt data.
pub fn diff_id_file(path: &Path) -> Result<Digest> {
    let file = File::open(path).map_err(|e| CoreError::file("open", path, e))?;
    let mut reader = Tracked {
        inner: BufReader::with_capacity(CHUNK, file),
        failed: false,
    };
    let head = reader
        .fill_buf()
        .map_err(|e| CoreError::file("read", path, e))?;
    // 512 bytes is a whole tar header; fill_buf gives more unless the file is short.
    let head = &head[..head.len().min(512)];
    let kind = detect_compression(head)
        .map_err(|m| CoreError::Invalid(format!("{}: {m}", path.display())))?;
    let mut hasher = Sha256::new();
    let result = match kind {
        Compression::None => hash_reader(&mut hasher, &mut reader),
        Compression::Gzip => hash_reader(&mut hasher, &mut MultiGzDecoder::new(&mut reader)),
        Compression::Zstd => match zstd::stream::read::Decoder::with_buffer(&mut reader) {
            Ok(mut d) => hash_reader(&mut hasher, &mut d),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(_) => Ok(Digest::from_hasher(hasher)),
        Err(e) if reader.failed => Err(CoreError::file("read", path, e)),
        Err(e) => Err(CoreError::Invalid(format!(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::sha256_bytes;
    use flate2::write::GzEncoder;
    use std::io::Write;

    fn tar_like(len: usize) -> Vec<u8> {
        let mut data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        data[257..262].copy_from_slice(b"ustar");
        data
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

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
        assert_eq!(diff_id_file(&path).unwrap(), sha256_bytes(&data));
        let empty = write(&dir, "e", b"");
        assert_eq!(diff_id_file(&empty).unwrap(), sha256_bytes(b""));
        let zeros = write(&dir, "z", &[0u8; 1024]);
        assert_eq!(diff_id_file(&zeros).unwrap(), sha256_bytes(&[0u8; 1024]));
    }

    #[test]
    fn gzip_multi_member() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_like(2 * CHUNK + 99);
        let (a, b) = data.split_at(700_000);
        let mut blob = gzip(a);
        blob.extend(gzip(b));
        let path = write(&dir, "g", &blob);
        assert_eq!(diff_id_file(&path).unwrap(), sha256_bytes(&data));
    }

    #[test]
    fn zstd_frames() {
        let dir = tempfile::tempdir().unwrap();
        let data = tar_like(CHUNK + 3);
        let (a, b) = data.split_at(1000);
        let mut blob = zstd::encode_all(a, 3).unwrap();
        blob.extend(zstd::encode_all(b, 3).unwrap());
        let path = write(&dir, "z", &blob);
        assert_eq!(diff_id_file(&path).unwrap(), sha256_bytes(&data));
    }

    #[test]
    fn unknown_and_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "u", b"hello, this is not a layer");
        let e = diff_id_file(&path).unwrap_err();
        assert!(e.to_string().contains("unknown layer compression"), "{e}");
        let path = write(&dir, "b", b"BZh91AY&SY");
        assert!(diff_id_file(&path)
            .unwrap_err()
            .to_string()
            .contains("bzip2"));

        let mut blob = gzip(&tar_like(10_000));
        let n = blob.len();
        blob[n / 2] ^= 0xff;
        blob.truncate(n - 4);
        let path = write(&dir, "c", &blob);
        match diff_id_file(&path).unwrap_err() {
            CoreError::Invalid(m) => assert!(m.contains("corrupt gzip"), "{m}"),
            other => panic!("{other:?}"),
        }
        match diff_id_file(&dir.path().join("missing")).unwrap_err() {
            CoreError::File { source, .. } => assert_eq!(source.kind(), io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }
}
