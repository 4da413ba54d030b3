use std::fs;
use std::path::{Path, PathBuf};

use imgpull_core::{sha256_bytes, BlobWriter, CoreError, Limits};

fn blob(n: usize) -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..n).map(|i| (i * 7 % 256) as u8).collect();
    let digest = sha256_bytes(&data).to_string();
    (data, digest)
}

fn paths() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("ingest");
    let dest = dir.path().join("blob");
    (dir, partial, dest)
}

fn assert_gone(p: &Path) {
    assert!(!p.exists(), "{} should not exist", p.display());
}

#[test]
fn append_then_commit() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(3_000_000);
    let mut w = BlobWriter::open(&partial, &digest, Some(data.len() as u64)).unwrap();
    for chunk in data.chunks(65_536) {
        w.write(chunk).unwrap();
    }
    assert_eq!(w.offset(), data.len() as u64);
    w.commit(&dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
    assert_gone(&partial);
    assert!(matches!(w.write(b"x"), Err(CoreError::Closed)));
    assert!(matches!(w.commit(&dest), Err(CoreError::Closed)));
}

#[test]
fn reopen_continues_from_the_partial_file() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(1_000_000);
    let mut w = BlobWriter::open(&partial, &digest, None).unwrap();
    w.write(&data[..400_000]).unwrap();
    w.close().unwrap();
    w.close().unwrap(); // idempotent
    assert_eq!(fs::metadata(&partial).unwrap().len(), 400_000);

    let mut w = BlobWriter::open(&partial, &digest, None).unwrap();
    assert_eq!(w.offset(), 400_000);
    w.write(&data[400_000..]).unwrap();
    w.commit(&dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn partial_longer_than_size_starts_over() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(100);
    fs::write(&partial, vec![0u8; 150]).unwrap();
    let mut w = BlobWriter::open(&partial, &digest, Some(100)).unwrap();
    assert_eq!(w.offset(), 0);
    w.write(&data).unwrap();
    w.commit(&dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn truncate_starts_over() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(1000);
    let mut w = BlobWriter::open(&partial, &digest, Some(1000)).unwrap();
    w.write(b"garbage").unwrap();
    w.truncate().unwrap();
    assert_eq!(w.offset(), 0);
    w.write(&data).unwrap();
    w.commit(&dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn size_guard_refuses_and_writes_nothing() {
    let (_d, partial, _dest) = paths();
    let (_, digest) = blob(10);
    let mut w = BlobWriter::open(&partial, &digest, Some(10)).unwrap();
    w.write(&[1; 6]).unwrap();
    match w.write(&[1; 5]) {
        Err(CoreError::SizeMismatch {
            expected: 10,
            actual: 11,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(w.offset(), 6);
    w.write(&[1; 4]).unwrap(); // still usable
    w.close().unwrap();
    assert_eq!(fs::metadata(&partial).unwrap().len(), 10);
}

#[test]
fn short_blob_fails_commit_and_leaves_nothing() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(100);
    let mut w = BlobWriter::open(&partial, &digest, Some(100)).unwrap();
    w.write(&data[..99]).unwrap();
    match w.commit(&dest) {
        Err(CoreError::SizeMismatch {
            expected: 100,
            actual: 99,
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_gone(&partial);
    assert_gone(&dest);
}

#[test]
fn digest_mismatch_fails_commit_and_leaves_nothing() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(100);
    let mut w = BlobWriter::open(&partial, &digest, None).unwrap();
    w.write(&data[1..]).unwrap();
    w.write(b"!").unwrap();
    let err = w.commit(&dest).unwrap_err();
    let msg = err.to_string();
    match err {
        CoreError::DigestMismatch { expected, actual } => {
            assert_eq!(expected, digest);
            let mut wrong = data[1..].to_vec();
            wrong.push(b'!');
            assert_eq!(actual, sha256_bytes(&wrong).to_string());
            assert_eq!(
                msg,
                format!("digest mismatch: expected {expected}, got {actual}")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_gone(&partial);
    assert_gone(&dest);
}

#[test]
fn bytes_appended_by_someone_else_are_never_committed() {
    // Bytes past what the writer wrote (another process appending: what
    // the store's per-digest lock prevents) fail the commit.
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(100_000);
    let mut a = BlobWriter::open(&partial, &digest, None).unwrap();
    a.write(&data).unwrap();
    a.flush().unwrap();
    let mut other = fs::OpenOptions::new().append(true).open(&partial).unwrap();
    std::io::Write::write_all(&mut other, &data).unwrap();
    match a.commit(&dest) {
        Err(CoreError::SizeMismatch { expected, actual }) => {
            assert_eq!((expected, actual), (100_000, 200_000));
        }
        other => panic!("{other:?}"),
    }
    assert_gone(&dest);
    assert_gone(&partial);
}

#[test]
fn a_second_writer_on_one_partial_file_is_refused() {
    // It would write among the bytes the first one hashed, unseen.
    let (_d, partial, _dest) = paths();
    let (data, digest) = blob(1000);
    let mut a = BlobWriter::open(&partial, &digest, None).unwrap();
    a.write(&data).unwrap();
    match BlobWriter::open(&partial, &digest, None) {
        Err(CoreError::File { op: "lock", .. }) => {}
        other => panic!("{:?}", other.map(|w| w.offset())),
    }
    a.close().unwrap();
    drop(a);
    assert_eq!(
        BlobWriter::open(&partial, &digest, None).unwrap().offset(),
        1000
    );
}

#[test]
fn existing_dest_is_kept_and_partial_removed() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(100);
    fs::write(&dest, &data).unwrap();
    let mut w = BlobWriter::open(&partial, &digest, Some(100)).unwrap();
    w.write(&data).unwrap();
    w.commit(&dest).unwrap();
    assert_gone(&partial);
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn commit_into_missing_directory_keeps_the_partial() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(100);
    let mut w = BlobWriter::open(&partial, &digest, Some(100)).unwrap();
    w.write(&data).unwrap();
    let dest = dest.join("no/such/dir");
    match w.commit(&dest) {
        Err(CoreError::File {
            op: "rename",
            source,
            ..
        }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(fs::read(&partial).unwrap(), data);
}

#[test]
fn empty_blob() {
    let (_d, partial, dest) = paths();
    let (_, digest) = blob(0);
    let mut w = BlobWriter::open(&partial, &digest, Some(0)).unwrap();
    w.commit(&dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), b"");
}

#[test]
fn bad_digest_and_missing_directory_are_refused_at_open() {
    let (_d, partial, _dest) = paths();
    assert!(matches!(
        BlobWriter::open(&partial, "sha256:abc", None),
        Err(CoreError::InvalidDigest(_))
    ));
    let (_, digest) = blob(1);
    match BlobWriter::open(partial.join("x/y"), &digest, None) {
        Err(CoreError::File {
            op: "open", source, ..
        }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound)
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn unsized_blob_ceiling() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(1500);
    let limits = Limits {
        max_unsized: 1000,
        ..Limits::default()
    };
    let mut w = BlobWriter::open_limited(&partial, &digest, None, false, limits).unwrap();
    w.write(&data[..600]).unwrap();
    match w.write(&data[600..]) {
        Err(e @ CoreError::UnsizedTooLarge { limit: 1000, .. }) => {
            let text = e.to_string();
            assert!(text.contains("--max-unsized-blob 1000"), "{text}");
        }
        other => panic!("{other:?}"),
    }
    // It could never verify: gone, and the writer closed.
    assert_gone(&partial);
    assert!(matches!(w.write(b"x"), Err(CoreError::Closed)));
    assert!(matches!(w.commit(&dest), Err(CoreError::Closed)));

    // A partial past the ceiling (left by a run with a higher one) starts over.
    fs::write(&partial, &data).unwrap();
    let w = BlobWriter::open_limited(&partial, &digest, None, false, limits).unwrap();
    assert_eq!(w.offset(), 0);
    drop(w);

    // A known size is the bound then; 0 means no ceiling.
    for (size, max_unsized) in [(Some(1500), 1000), (None, 0)] {
        fs::remove_file(&partial).unwrap();
        let limits = Limits {
            max_unsized,
            ..Limits::default()
        };
        let mut w = BlobWriter::open_limited(&partial, &digest, size, false, limits).unwrap();
        w.write(&data).unwrap();
        w.commit(&dest).unwrap();
        fs::remove_file(&dest).unwrap();
        fs::write(&partial, b"").unwrap();
    }
}

#[test]
fn trusted_prefix_keeps_the_bytes_past_it_for_absorb() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(500_000);
    // A split run's file: its prefix, a hole, a chunk further on.
    fs::write(&partial, &data[..100_000]).unwrap();
    let mut chunk = imgpull_core::ChunkWriter::open(&partial, &digest, 300_000, 500_000).unwrap();
    assert_eq!(chunk.write(&data[300_000..]).unwrap(), 200_000);
    let size = Some(data.len() as u64);
    let mut w = BlobWriter::open_trusted(
        &partial,
        &digest,
        size,
        false,
        Limits::default(),
        Some(100_000),
    )
    .unwrap();
    assert_eq!(w.offset(), 100_000);
    // The writer writes at its offset, not at the file's end.
    w.write(&data[100_000..300_000]).unwrap();
    w.absorb(500_000).unwrap();
    w.commit(&dest).unwrap();
    assert_eq!(fs::read(&dest).unwrap(), data);
}

#[test]
fn absorbing_a_hole_fails_the_digest() {
    let (_d, partial, dest) = paths();
    let (data, digest) = blob(200_000);
    let mut w = BlobWriter::open(&partial, &digest, Some(200_000)).unwrap();
    w.write(&data[..50_000]).unwrap();
    let mut chunk = imgpull_core::ChunkWriter::open(&partial, &digest, 100_000, 200_000).unwrap();
    chunk.write(&data[100_000..]).unwrap();
    // 50_000..100_000 never came: zeros there.
    w.absorb(200_000).unwrap();
    assert!(matches!(
        w.commit(&dest),
        Err(CoreError::DigestMismatch { .. })
    ));
    assert_gone(&partial);
    assert_gone(&dest);
}

#[test]
fn absorb_past_the_file_is_an_error() {
    let (_d, partial, _dest) = paths();
    let (data, digest) = blob(1000);
    let mut w = BlobWriter::open(&partial, &digest, Some(1000)).unwrap();
    w.write(&data[..10]).unwrap();
    assert!(matches!(w.absorb(500), Err(CoreError::File { .. })));
}

#[test]
fn a_chunk_never_writes_past_its_end() {
    let (_d, partial, _dest) = paths();
    let (data, digest) = blob(1000);
    fs::write(&partial, b"").unwrap();
    let mut chunk = imgpull_core::ChunkWriter::open(&partial, &digest, 100, 200).unwrap();
    assert_eq!(chunk.write(&data[100..400]).unwrap(), 100);
    assert_eq!(chunk.offset(), 200);
    assert_eq!(chunk.write(&data[..10]).unwrap(), 0);
    assert_eq!(fs::metadata(&partial).unwrap().len(), 200);
    // Never creates the file: the blob's writer owns it.
    fs::remove_file(&partial).unwrap();
    assert!(imgpull_core::ChunkWriter::open(&partial, &digest, 0, 10).is_err());
}

#[test]
fn truncate_resets_the_stop_and_its_generation() {
    let (_d, partial, _dest) = paths();
    let (data, digest) = blob(1000);
    let mut w = BlobWriter::open(&partial, &digest, Some(1000)).unwrap();
    let stop = w.stop();
    let generation = stop.generation();
    assert_eq!(stop.stop_at(100, generation), Some(100));
    assert_eq!(w.write_upto(&data[..300]).unwrap(), 100);
    assert_eq!(w.room(), 0);
    w.truncate().unwrap();
    assert_eq!(stop.stop_at(50, generation), None);
    assert_eq!(w.write_upto(&data).unwrap(), 1000);
}
