//! The diffID of a layer computed while its compressed bytes are written:
//! what `BlobWriter::open_layer` adds to a blob writer.
//!
//! Each piece written is also pushed through a streaming decoder (gzip with
//! every member, zstd with every frame, or a plain tar: told by the first
//! bytes with `diffid::detect_compression`, as for files) into a SHA-256.
//! One pass, memory bounded by the decoders' windows, and the file is never
//! read back. The decompressed bytes are bounded too: past `max_ratio` times
//! the compressed bytes fed (diffid::over_ratio) the decoder stops at once,
//! and the writer refuses the layer (a decompression bomb must not keep a
//! pull busy for minutes).
//!
//! The decoder and the tar hash run on the download thread while the
//! layers streaming keep the cores busy (measured: a decoder thread per
//! layer then only added copies and wake-ups); they move to threads of
//! their own when cores would idle, see offload.rs.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::diffid::{detect_compression, over_ratio, Compression};
use crate::digest::Digest;
use crate::gunzip::GzipWriter;
use crate::offload::{Feed, Stage};

/// What a layer's uncompressed stream gave: its diffID and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDigest {
    pub diff_id: Digest,
    pub uncompressed_size: u64,
}

/// Why a layer's stream gave no diffID.
pub(crate) enum Unpacked {
    /// It decompressed past the ratio limit.
    Ratio,
    /// Unknown compression, corrupt data: why.
    Corrupt(String),
}

type Outcome = std::result::Result<LayerDigest, Unpacked>;

/// The decoder + hasher of one layer writer.
///
/// A decode error does not fail the write: the bytes are still written and
/// hashed, and finish() reports the error (the writer checks the blob
/// digest first, which explains e.g. a corrupt resumed prefix better).
/// Going past the ratio does: see [`Unpacker::over_ratio`].
pub(crate) struct Unpacker {
    stage: Stage<Decoding>,
    /// Set by the decoding thread (this one or a stage's) past the ratio.
    over: Arc<AtomicBool>,
}

/// The decoder stage: its state, and the ratio its output is held to.
struct Decoding {
    state: Inline,
    ratio: Ratio,
}

/// The ratio limit, shared by a decoder stage and its sink (same thread).
#[derive(Clone)]
struct Ratio {
    max: u64,
    /// Compressed bytes fed to the decoder so far.
    fed: Arc<AtomicU64>,
    over: Arc<AtomicBool>,
}

enum Inline {
    Head(Vec<u8>),
    Plain(HashSink),
    Gzip(Box<GzipWriter<HashSink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashSink>>),
    Failed(String),
}

/// The SHA-256 of the uncompressed stream (on a core of its own when one
/// is spare), counted against the ratio on the decoder's thread.
struct HashSink {
    hash: Stage<Hashing>,
    out: u64,
    ratio: Ratio,
}

struct Hashing {
    hasher: Sha256,
    n: u64,
}

impl Feed for Hashing {
    fn feed(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.n += data.len() as u64;
    }
}

impl io::Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out += buf.len() as u64;
        let fed = self.ratio.fed.load(Ordering::Relaxed);
        if over_ratio(self.ratio.max, self.out, fed) {
            // The decoder stops here (its write fails), mid-chunk.
            self.ratio.over.store(true, Ordering::Relaxed);
            return Err(io::Error::other("decompression ratio limit"));
        }
        self.hash.feed(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Unpacker {
    /// `max_ratio`: decompressed : compressed bytes allowed (0: no limit).
    pub(crate) fn start(max_ratio: u64) -> Unpacker {
        let over = Arc::new(AtomicBool::new(false));
        let ratio = Ratio {
            max: max_ratio,
            fed: Arc::new(AtomicU64::new(0)),
            over: Arc::clone(&over),
        };
        Unpacker {
            stage: Stage::new(Decoding {
                state: Inline::Head(Vec::with_capacity(512)),
                ratio,
            }),
            over,
        }
    }

    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.stage.feed(data);
    }

    /// Whether the layer went past its ratio: seen at once when decoding
    /// runs on this thread, a few batches late from a stage thread (which
    /// stops decoding at once either way).
    pub(crate) fn over_ratio(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }

    pub(crate) fn finish(self) -> Outcome {
        let Decoding { mut state, ratio } = self.stage.into_inner();
        if self.over.load(Ordering::Relaxed) {
            return Err(Unpacked::Ratio);
        }
        if let Inline::Head(head) = &mut state {
            let head = std::mem::take(head);
            state = Inline::detect(head, &ratio);
        }
        let sink = match state {
            Inline::Plain(w) => Ok(w),
            Inline::Gzip(w) => w.finish().map_err(|e| format!("corrupt gzip data: {e}")),
            Inline::Zstd(w) => w.finish().map_err(|e| format!("corrupt zstd data: {e}")),
            Inline::Failed(m) => Err(m),
            Inline::Head(_) => unreachable!(),
        };
        // The end of a stream (ISA-L's held-back output) counts too.
        if self.over.load(Ordering::Relaxed) {
            return Err(Unpacked::Ratio);
        }
        let Hashing { hasher, n } = sink.map_err(Unpacked::Corrupt)?.hash.into_inner();
        Ok(LayerDigest {
            diff_id: Digest::from_hasher(hasher),
            uncompressed_size: n,
        })
    }
}

impl Feed for Decoding {
    fn feed(&mut self, data: &[u8]) {
        self.ratio
            .fed
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.state.feed(data, &self.ratio);
    }
}

impl Inline {
    fn feed(&mut self, data: &[u8], ratio: &Ratio) {
        use io::Write as _;
        let mut data = data;
        if let Inline::Head(head) = self {
            let n = data.len().min(512 - head.len());
            head.extend_from_slice(&data[..n]);
            data = &data[n..];
            if head.len() < 512 {
                return;
            }
            let head = std::mem::take(head);
            *self = Inline::detect(head, ratio);
        }
        if data.is_empty() {
            return;
        }
        let result = match self {
            Inline::Plain(w) => w.write_all(data),
            Inline::Gzip(w) => w.write_all(data),
            Inline::Zstd(w) => w.write_all(data),
            Inline::Head(_) | Inline::Failed(_) => Ok(()),
        };
        if let Err(e) = result {
            *self = Inline::Failed(self.corrupt(e));
        }
    }

    /// Classifies, then feeds the head to the chosen decoder.
    fn detect(head: Vec<u8>, ratio: &Ratio) -> Inline {
        use io::Write as _;
        let sink = HashSink {
            hash: Stage::new(Hashing {
                hasher: Sha256::new(),
                n: 0,
            }),
            out: 0,
            ratio: ratio.clone(),
        };
        let mut state = match detect_compression(&head) {
            Ok(Compression::None) => Inline::Plain(sink),
            Ok(Compression::Gzip) => Inline::Gzip(Box::new(GzipWriter::new(sink))),
            Ok(Compression::Zstd) => match zstd::stream::write::Decoder::new(sink) {
                Ok(d) => Inline::Zstd(Box::new(d)),
                Err(e) => return Inline::Failed(e.to_string()),
            },
            Err(m) => return Inline::Failed(m),
        };
        let result = match &mut state {
            Inline::Plain(w) => w.write_all(&head),
            Inline::Gzip(w) => w.write_all(&head),
            Inline::Zstd(w) => w.write_all(&head),
            _ => Ok(()),
        };
        match result {
            Ok(()) => state,
            Err(e) => Inline::Failed(state.corrupt(e)),
        }
    }

    fn corrupt(&self, e: io::Error) -> String {
        let name = match self {
            Inline::Gzip(_) => "gzip",
            Inline::Zstd(_) => "zstd",
            _ => "tar",
        };
        format!("corrupt {name} data: {e}")
    }
}

#[cfg(test)]
mod tests {
    use crate::digest::sha256_bytes;
    use crate::error::CoreError;
    use crate::testutil::{gzip, gzip_best, tar_like};
    use crate::writer::{BlobWriter, Limits};

    /// Writes `blob` in `piece`-byte writes after `prefix` bytes already in
    /// the partial file (a resume), commits, and returns the layer digest.
    fn write_layer(blob: &[u8], prefix: usize, piece: usize) -> crate::Result<super::LayerDigest> {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("partial");
        std::fs::write(&partial, &blob[..prefix]).unwrap();
        let digest = sha256_bytes(blob).to_string();
        let mut w = BlobWriter::open_layer(&partial, &digest, Some(blob.len() as u64))?;
        assert_eq!(w.offset(), prefix as u64);
        for chunk in blob[prefix..].chunks(piece) {
            w.write(chunk)?;
        }
        let dest = dir.path().join("blob");
        w.commit(&dest)?;
        assert_eq!(std::fs::read(&dest).unwrap(), blob);
        Ok(w.layer_digest().unwrap())
    }

    #[test]
    fn gzip_multi_member() {
        let data = tar_like(3_000_000);
        let (a, b) = data.split_at(1_100_000);
        let mut blob = gzip(a);
        blob.extend(gzip(b));
        let got = write_layer(&blob, 0, 1 << 20).unwrap();
        assert_eq!(got.diff_id, sha256_bytes(&data));
        assert_eq!(got.uncompressed_size, data.len() as u64);
        // Tiny writes: the head is gathered across pieces.
        assert_eq!(
            write_layer(&blob, 0, 7).unwrap().diff_id,
            sha256_bytes(&data)
        );
    }

    #[test]
    fn stages_on_threads_of_their_own() {
        // The decoder and the tar hash moved to stage threads (offload.rs),
        // in a resume too: the same diffIDs.
        let data = tar_like(3_000_000);
        let gz = gzip(&data);
        let zs = zstd::encode_all(&data[..], 3).unwrap();
        crate::offload::tests::forced(|| {
            for (blob, prefix) in [
                (&gz, 0),
                (&gz, gz.len() / 2),
                (&zs, zs.len() / 3),
                (&data, 7),
            ] {
                let got = write_layer(blob, prefix, 100_000).unwrap();
                assert_eq!(got.diff_id, sha256_bytes(&data));
                assert_eq!(got.uncompressed_size, data.len() as u64);
            }
            let mut bad = gz.clone();
            bad.truncate(gz.len() - 100);
            let e = write_layer(&bad, 0, 4096).unwrap_err();
            assert!(e.to_string().contains("corrupt gzip"), "{e}");
        });
    }

    #[test]
    fn zstd_frames() {
        let data = tar_like(2_000_000);
        let (a, b) = data.split_at(1000);
        let mut blob = zstd::encode_all(a, 3).unwrap();
        blob.extend(zstd::encode_all(b, 3).unwrap());
        let got = write_layer(&blob, 0, 65536).unwrap();
        assert_eq!(got.diff_id, sha256_bytes(&data));
        assert_eq!(got.uncompressed_size, data.len() as u64);
    }

    #[test]
    fn plain_tar_and_empty() {
        let data = tar_like(1_500_000);
        let got = write_layer(&data, 0, 100_000).unwrap();
        assert_eq!(got.diff_id, sha256_bytes(&data));
        let zeros = [0u8; 1024];
        assert_eq!(
            write_layer(&zeros, 0, 1024).unwrap().diff_id,
            sha256_bytes(&zeros)
        );
    }

    #[test]
    fn resume_in_the_middle() {
        let data = tar_like(3_000_000);
        let gz = gzip(&data);
        // Prefixes inside the gzip header, inside the stream, and whole.
        for prefix in [5, gz.len() / 2, gz.len()] {
            let got = write_layer(&gz, prefix, 300_000).unwrap();
            assert_eq!(got.diff_id, sha256_bytes(&data), "prefix {prefix}");
        }
        let zs = zstd::encode_all(&data[..], 1).unwrap();
        let got = write_layer(&zs, zs.len() / 3, 4096).unwrap();
        assert_eq!(got.diff_id, sha256_bytes(&data));
    }

    #[test]
    fn truncate_starts_the_decompressor_over() {
        let data = tar_like(500_000);
        let gz = gzip(&data);
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        let digest = sha256_bytes(&gz).to_string();
        let mut w = BlobWriter::open_layer(&partial, &digest, None).unwrap();
        w.write(b"garbage that is not a layer").unwrap();
        w.truncate().unwrap();
        w.write(&gz).unwrap();
        w.commit(&dir.path().join("b")).unwrap();
        assert_eq!(w.layer_digest().unwrap().diff_id, sha256_bytes(&data));
    }

    #[test]
    fn unknown_compression_and_corrupt_data() {
        let blob = b"hello, this is not a layer at all".repeat(100);
        match write_layer(&blob, 0, 1000).unwrap_err() {
            CoreError::CorruptLayer(m) => assert!(m.contains("unknown layer compression"), "{m}"),
            other => panic!("{other:?}"),
        }
        let blob = b"BZh91AY&SY".repeat(100);
        let e = write_layer(&blob, 0, 1000).unwrap_err();
        assert!(e.to_string().contains("bzip2"), "{e}");

        let mut gz = gzip(&tar_like(100_000));
        let n = gz.len();
        gz.truncate(n - 100);
        match write_layer(&gz, 0, 1000).unwrap_err() {
            CoreError::CorruptLayer(m) => assert!(m.contains("corrupt gzip"), "{m}"),
            other => panic!("{other:?}"),
        }

        let mut zs = zstd::encode_all(&tar_like(100_000)[..], 3).unwrap();
        let n = zs.len();
        zs.truncate(n - 10);
        match write_layer(&zs, 0, 1000).unwrap_err() {
            CoreError::CorruptLayer(m) => assert!(m.contains("corrupt zstd"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digest_mismatch_wins_over_a_decode_error() {
        let dir = tempfile::tempdir().unwrap();
        let partial = dir.path().join("p");
        let digest = sha256_bytes(b"something else").to_string();
        let mut w = BlobWriter::open_layer(&partial, &digest, None).unwrap();
        w.write(b"not a layer").unwrap();
        let e = w.commit(&dir.path().join("b")).unwrap_err();
        assert!(matches!(e, CoreError::DigestMismatch { .. }), "{e:?}");
        assert!(!partial.exists());
    }

    /// Writes `blob` (`prefix` bytes already in the partial file) to a
    /// layer writer in `piece`-byte writes, then commits. Returns the error
    /// and the bytes written before it (None: refused at open).
    fn bomb(blob: &[u8], piece: usize, prefix: usize) -> (CoreError, Option<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let (partial, dest) = (dir.path().join("partial"), dir.path().join("blob"));
        std::fs::write(&partial, &blob[..prefix]).unwrap();
        let digest = sha256_bytes(blob).to_string();
        let size = Some(blob.len() as u64);
        let outcome =
            match BlobWriter::open_limited(&partial, &digest, size, true, Limits::default()) {
                Err(e) => (e, None),
                Ok(mut w) => {
                    let mut at = prefix;
                    let mut failed = None;
                    for chunk in blob[prefix..].chunks(piece) {
                        if let Err(e) = w.write(chunk) {
                            failed = Some(e);
                            break;
                        }
                        at += chunk.len();
                    }
                    let e =
                        failed.unwrap_or_else(|| w.commit(&dest).expect_err("a bomb committed"));
                    (e, Some(at))
                }
            };
        // Nothing is left to resume, nothing committed.
        assert!(!partial.exists() && !dest.exists());
        outcome
    }

    #[test]
    fn a_bomb_is_refused_as_it_is_written() {
        let zeros = vec![0u8; 32 << 20];
        let gz = gzip_best(&zeros);
        let zs = zstd::encode_all(&zeros[..], 3).unwrap();
        crate::offload::tests::inline(|| {
            for (name, blob) in [("gzip", &gz), ("zstd", &zs)] {
                // Refused at the write that passes the ratio, long before the end.
                let piece = blob.len() / 64;
                let (e, at) = bomb(blob, piece, 0);
                assert!(
                    matches!(e, CoreError::RatioExceeded { .. }),
                    "{name}: {e:?}"
                );
                assert!(
                    e.to_string()
                        .contains("decompresses to more than 200 times"),
                    "{e}"
                );
                // Past the grace (8 of 32 MiB), a quarter of the way.
                let at = at.unwrap();
                assert!(at < blob.len() / 2, "{name}: refused only at byte {at}");
                // A resumed partial past the ratio: refused when opened.
                let (e, at) = bomb(blob, piece, blob.len() / 2);
                assert!(
                    matches!(e, CoreError::RatioExceeded { .. }),
                    "{name}: {e:?}"
                );
                assert_eq!(at, None);
            }
        });
        // Decoding on a stage thread (which stops there): seen a few
        // batches later, at a write or at the commit.
        crate::offload::tests::forced(|| {
            let (e, _) = bomb(&gz, 4096, 0);
            assert!(matches!(e, CoreError::RatioExceeded { .. }), "{e:?}");
        });
    }

    #[test]
    fn plain_writer_has_no_layer_digest() {
        let dir = tempfile::tempdir().unwrap();
        let digest = sha256_bytes(b"x").to_string();
        let mut w = BlobWriter::open(dir.path().join("p"), &digest, Some(1)).unwrap();
        w.write(b"x").unwrap();
        w.commit(&dir.path().join("b")).unwrap();
        assert!(!w.is_layer());
        assert_eq!(w.layer_digest(), None);
    }
}
