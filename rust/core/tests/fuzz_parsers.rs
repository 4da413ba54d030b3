//! Seeded fuzzing of the parsers that take registry-supplied bytes: the
//! schema1 layer-chain fix and canonical payload, compression detection and
//! diffIDs of corrupt blobs, and rootfs extraction of mangled tars.
//!
//! Every case is generated from a fixed seed, so a run is reproducible; a
//! failure names the case's seed. IMGPULL_FUZZ_EXAMPLES (default 200) sets the
//! number of cases per test, for longer local runs. Properties: nothing
//! panics, errors are the documented error values, and extraction never
//! writes outside its root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use imgpull_core::diffid::{detect_compression, Compression, DEFAULT_MAX_RATIO};
use imgpull_core::rootfs::{extract_layers, ExtractError, ExtractOptions};
use imgpull_core::schema1::{canonical_payload, fix_layers};
use imgpull_core::writer::BlobWriter;
use imgpull_core::{diff_id_file, CoreError};

const BASE_SEED: u64 = 0x1a9_9011_f022;

fn cases() -> u64 {
    std::env::var("IMGPULL_FUZZ_EXAMPLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

/// splitmix64: tiny, seedable, good enough to pick cases.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        (0..self.below(max + 1))
            .map(|_| self.next() as u8)
            .collect()
    }
}

/// Runs `case` once per seed; a panic names the seed to replay.
fn fuzz(name: &str, mut case: impl FnMut(&mut Rng)) {
    for i in 0..cases() {
        let seed = BASE_SEED ^ i.wrapping_mul(0x0100_0000_01b3);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            case(&mut Rng(seed));
        }));
        if let Err(panic) = outcome {
            eprintln!("{name}: case {i} (seed {seed:#x}) failed");
            std::panic::resume_unwind(panic);
        }
    }
}

/// How many cases were accepted and refused: a generator that only ever
/// produces one of the two would test far less than it seems to.
#[derive(Default)]
struct Outcomes {
    ok: u64,
    err: u64,
}

impl Outcomes {
    fn check(&self, name: &str) {
        eprintln!("{name}: {} ok, {} refused", self.ok, self.err);
        if cases() >= 50 {
            assert!(
                self.ok > 0 && self.err > 0,
                "{name}: {} ok, {} refused",
                self.ok,
                self.err
            );
        }
    }
}

/// Random edits: flipped, inserted and deleted bytes, a cut, a duplicated run.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(data.len() + 1);
                data.insert(i, rng.next() as u8);
            }
            2 if !data.is_empty() => {
                data.remove(rng.below(data.len()));
            }
            3 => data.truncate(rng.below(data.len() + 1)),
            _ if !data.is_empty() => {
                let start = rng.below(data.len());
                let end = (start + rng.below(64)).min(data.len());
                let run = data[start..end].to_vec();
                let at = rng.below(data.len() + 1);
                data.splice(at..at, run);
            }
            _ => {}
        }
    }
}

// -- schema1 layer chains -----------------------------------------------------

fn hex_id(rng: &mut Rng) -> String {
    let c = *rng.pick(b"0123456789abcdef") as char;
    c.to_string().repeat(64)
}

/// An id that is sometimes not 64 lowercase hex.
fn any_id(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => String::new(),
        1 => "A".repeat(64),
        2 => "a".repeat(63),
        3 => "a".repeat(65),
        4 => format!("{}é", "a".repeat(62)), // 64 bytes, not hex
        5 => format!("{}\n", "a".repeat(63)),
        _ => hex_id(rng),
    }
}

fn check_kept(layers: &[(String, String)], allow_base_parent: bool, keep: &[usize]) {
    assert!(!keep.is_empty(), "an Ok chain keeps a layer");
    assert!(keep.windows(2).all(|w| w[0] < w[1]), "{keep:?} in order");
    assert_eq!(*keep.last().unwrap(), layers.len() - 1, "the base is kept");
    let kept: Vec<_> = keep.iter().map(|&i| &layers[i]).collect();
    for pair in kept.windows(2) {
        assert_eq!(pair[0].1, pair[1].0, "each parent is the layer below");
    }
    if !allow_base_parent {
        assert_eq!(kept.last().unwrap().1, "", "the base has no parent");
    }
    let mut ids: Vec<_> = kept.iter().map(|(id, _)| id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), kept.len(), "no id kept twice");
}

#[test]
fn schema1_random_chains() {
    let mut seen = Outcomes::default();
    fuzz("schema1_random_chains", |rng| {
        let n = rng.below(10);
        let pool: Vec<String> = (0..1 + rng.below(5)).map(|_| any_id(rng)).collect();
        let layers: Vec<(String, String)> = (0..n)
            .map(|_| {
                let parent = if rng.chance(4) {
                    String::new()
                } else {
                    rng.pick(&pool).clone()
                };
                (rng.pick(&pool).clone(), parent)
            })
            .collect();
        let allow = rng.chance(2);
        match fix_layers(&layers, allow) {
            Ok(keep) => {
                check_kept(&layers, allow, &keep);
                seen.ok += 1;
            }
            Err(e) => {
                assert!(!e.0.is_empty() && !e.0.contains('\n'), "{e:?}");
                seen.err += 1;
            }
        }
    });
    seen.check("schema1_random_chains");
}

#[test]
fn schema1_valid_chains_with_repeats_and_mutations() {
    fuzz("schema1_valid_chains", |rng| {
        // A valid chain of distinct ids, some entries repeated in place.
        let mut ids: Vec<String> = Vec::new();
        for _ in 0..1 + rng.below(6) {
            let id = hex_id(rng);
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
        let mut layers = Vec::new();
        let mut expected = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let parent = ids.get(i + 1).cloned().unwrap_or_default();
            for _ in 0..rng.below(3) {
                layers.push((id.clone(), parent.clone()));
            }
            expected.push(layers.len());
            layers.push((id.clone(), parent));
        }
        assert_eq!(fix_layers(&layers, false).unwrap(), expected);

        // Then one edit: any outcome, but an Ok one is still a valid chain.
        let i = rng.below(layers.len());
        match rng.below(4) {
            0 => layers[i].1 = any_id(rng),
            1 => layers[i].0 = any_id(rng),
            2 => {
                let j = rng.below(layers.len());
                layers.swap(i, j);
            }
            _ => {
                let copy = layers[i].clone();
                layers.insert(rng.below(layers.len() + 1), copy);
            }
        }
        let allow = rng.chance(2);
        match fix_layers(&layers, allow) {
            Ok(keep) => check_kept(&layers, allow, &keep),
            Err(e) => assert!(!e.0.contains('\n'), "{e:?}"),
        }
    });
}

// -- schema1 canonical payload --------------------------------------------------

fn unsigned_body(rng: &mut Rng) -> String {
    format!(
        "{{\n   \"schemaVersion\": 1,\n   \"name\": \"test/{}\",\n   \"tag\": \"v1\",\n   \
         \"fsLayers\": [\n      {{\n         \"blobSum\": \"sha256:{}\"\n      }}\n   ]\n}}",
        rng.below(1000),
        hex_id(rng)
    )
}

/// A protected header with a format length and tail, sometimes malformed.
fn protected(rng: &mut Rng, length: usize, tail: &[u8]) -> String {
    let tail = URL_SAFE_NO_PAD.encode(tail);
    let length = match rng.below(10) {
        0 => "-1".to_owned(),
        1 => "1e300".to_owned(),
        2 => "18446744073709551616".to_owned(),
        3 => "\"12\"".to_owned(),
        4 => format!("{length}.75"),
        _ => length.to_string(),
    };
    let header = match rng.below(8) {
        0 => format!("{{\"formatTail\":\"{tail}\"}}"),
        1 => format!("{{\"formatLength\":{length}}}"),
        2 => format!("{{\"formatLength\":{length},\"formatTail\":\"!!{tail}\"}}"),
        3 => "[]".to_owned(),
        _ => format!("{{\"formatLength\":{length},\"formatTail\":\"{tail}\"}}"),
    };
    let mut encoded = URL_SAFE_NO_PAD.encode(header);
    if rng.chance(10) {
        encoded.push_str("*=");
    }
    encoded
}

#[test]
fn schema1_payloads() {
    let mut seen = Outcomes::default();
    fuzz("schema1_payloads", |rng| {
        let body = unsigned_body(rng);
        // Signed as libtrust lays it out: the body's closing brace becomes the tail.
        let cut = body.rfind('\n').unwrap();
        let tail = &body.as_bytes()[cut..];
        let sigs: Vec<String> = (0..rng.below(3) + usize::from(!rng.chance(5)))
            .map(|_| {
                format!(
                    "{{\"header\":{{\"alg\":\"ES256\"}},\"signature\":\"x\",\"protected\":\"{}\"}}",
                    protected(rng, cut, tail)
                )
            })
            .collect();
        let raw = format!(
            "{},\n   \"signatures\": [{}]\n}}",
            &body[..cut],
            sigs.join(",")
        );
        let mut raw = raw.into_bytes();
        let pristine = !rng.chance(3);
        if !pristine {
            mutate(rng, &mut raw);
        }
        match canonical_payload(&raw) {
            Ok(payload) if pristine => {
                // Every signature agreed: the payload is the original body.
                assert_eq!(payload, body.as_bytes());
                seen.ok += 1;
            }
            Ok(_) => {} // mangled: whatever the signatures now say
            Err(e) => {
                assert!(!e.0.is_empty());
                seen.err += 1;
            }
        }

        // Unsigned bodies are their own payload; arbitrary bytes never panic.
        let unsigned = unsigned_body(rng);
        assert_eq!(
            canonical_payload(unsigned.as_bytes()).unwrap(),
            unsigned.as_bytes()
        );
        let junk = rng.bytes(300);
        if let Ok(payload) = canonical_payload(&junk) {
            let value: serde_json::Value = serde_json::from_slice(&junk).unwrap();
            assert!(value.is_object());
            assert_eq!(
                payload, junk,
                "an object without signatures is its own payload"
            );
        }
        let deep = "[".repeat(1 + rng.below(100_000));
        assert!(canonical_payload(deep.as_bytes()).is_err());
    });
    seen.check("schema1_payloads");
}

// -- compression detection and diffIDs -------------------------------------------

const MAGICS: &[&[u8]] = &[
    &[0x1f, 0x8b, 0x08],
    &[0x28, 0xb5, 0x2f, 0xfd],
    &[0x5a, 0x2a, 0x4d, 0x18],
    &[0x42, 0x5a, 0x68],
    &[0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00],
];

fn tar_bytes() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, "hello.txt", &b"hello"[..]).unwrap();
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn compression_detection() {
    fuzz("compression_detection", |rng| {
        let mut head = rng.bytes(600);
        if rng.chance(2) {
            let magic = rng.pick(MAGICS);
            let n = magic.len().min(head.len());
            head[..n].copy_from_slice(&magic[..n]);
        }
        if rng.chance(4) && head.len() >= 262 {
            head[257..262].copy_from_slice(b"ustar");
        }
        if rng.chance(6) {
            head.iter_mut().for_each(|b| *b = 0);
        }
        let got = detect_compression(&head);
        if head.starts_with(&[0x1f, 0x8b, 0x08]) {
            assert_eq!(got, Ok(Compression::Gzip));
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            assert_eq!(got, Ok(Compression::Zstd));
        } else if head.iter().all(|&b| b == 0) {
            assert_eq!(got, Ok(Compression::None));
        } else if let Err(message) = got {
            assert!(!message.is_empty());
        }
    });
}

#[test]
fn diff_ids_of_mangled_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let tar = tar_bytes();
    let gz = gzip(&tar);
    let zst = zstd::encode_all(&tar[..], 1).unwrap();
    let path = dir.path().join("blob");
    let mut seen = Outcomes::default();
    fuzz("diff_ids_of_mangled_blobs", |rng| {
        let mut blob = match rng.below(4) {
            0 => tar.clone(),
            1 => gz.clone(),
            2 => zst.clone(),
            _ => {
                let mut b = rng.pick(MAGICS).to_vec();
                b.extend(rng.bytes(400));
                b
            }
        };
        mutate(rng, &mut blob);
        fs::write(&path, &blob).unwrap();
        let read = diff_id_file(&path, DEFAULT_MAX_RATIO);
        // The same bytes pushed through a layer writer in random pieces
        // (the download path) must agree with the file path.
        let digest = imgpull_core::digest::sha256_bytes(&blob).to_string();
        let partial = dir.path().join("partial");
        let mut w = BlobWriter::open_layer(&partial, &digest, None).unwrap();
        let mut rest = &blob[..];
        while !rest.is_empty() {
            let n = (rng.below(5000) + 1).min(rest.len());
            w.write(&rest[..n]).unwrap();
            rest = &rest[n..];
        }
        let written = w.commit(&dir.path().join("committed"));
        match (&read, written) {
            (Ok(d), Ok(())) => assert_eq!(w.layer_digest().map(|l| l.diff_id), Some(*d)),
            (Err(_), Err(CoreError::CorruptLayer(_))) => {}
            (r, w) => panic!("file path gave {r:?}, writer gave {w:?}"),
        }
        let _ = fs::remove_file(dir.path().join("committed"));
        match read {
            Ok(d) => {
                assert!(d.to_string().starts_with("sha256:"));
                seen.ok += 1;
            }
            Err(CoreError::CorruptLayer(message)) => {
                assert!(!message.is_empty());
                seen.err += 1;
            }
            Err(other) => panic!("a readable blob gave {other:?}"),
        }
    });
    seen.check("diff_ids_of_mangled_blobs");
}

// -- rootfs extraction ------------------------------------------------------------

/// A ustar header written by hand, so that it can say anything (the tar
/// crate's builder refuses '..' and absolute names).
fn raw_header(name: &[u8], kind: u8, size: usize, link: &[u8], mode: u32) -> [u8; 512] {
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], at: usize, width: usize, value: &[u8]| {
        let n = value.len().min(width);
        h[at..at + n].copy_from_slice(&value[..n]);
    };
    put(&mut h, 0, 100, name);
    put(&mut h, 100, 8, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, 8, b"0000000\0");
    put(&mut h, 116, 8, b"0000000\0");
    put(&mut h, 124, 12, format!("{size:011o}\0").as_bytes());
    put(&mut h, 136, 12, b"14000000000\0");
    h[156] = kind;
    put(&mut h, 157, 100, link);
    put(&mut h, 257, 8, b"ustar\x0000");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, 8, format!("{sum:06o}\0 ").as_bytes());
    h
}

fn push_entry(out: &mut Vec<u8>, name: &[u8], kind: u8, data: &[u8], link: &[u8], mode: u32) {
    out.extend_from_slice(&raw_header(name, kind, data.len(), link, mode));
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // The length prefix counts itself.
    let body_len = key.len() + value.len() + 3;
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A tar of entries whose names and link targets try to leave the root.
fn hostile_tar(rng: &mut Rng, outside: &Path) -> Vec<u8> {
    let outside_abs = outside.display().to_string();
    // The first SAFE names are fine to extract; the rest try to escape (or
    // are malformed). Some layers use only the first.
    const SAFE: usize = 11;
    let names: Vec<Vec<u8>> = [
        "a",
        "a/b",
        "d/",
        "./c",
        "d/e/f",
        "a//b",
        ".wh.a",
        "d/.wh..wh..opq",
        "hl",
        "é/ü",
        "d/e/.wh.f",
        "link/x",
        "link/../../x",
        "../x",
        "a/../../x",
        "/abs",
        "",
        ".",
        ".wh..",
        ".wh.link",
        "a\0b",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([format!("{outside_abs}/f").into_bytes(), vec![b'n'; 99]])
    .collect();
    let names = if rng.chance(2) {
        &names[..]
    } else {
        &names[..SAFE]
    };
    let links: Vec<Vec<u8>> = [
        "..",
        "../outside",
        "../outside/f",
        "/",
        "a",
        "d",
        "link",
        "link/x",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .chain([outside_abs.clone().into_bytes()])
    .collect();
    let kinds = b"0000552216x34LK7g";
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(12) {
        let name = rng.pick(names).clone();
        let link = rng.pick(&links).clone();
        let kind = *rng.pick(kinds);
        let mode = if rng.chance(6) {
            rng.next() as u32 & 0o7777
        } else {
            0o755
        };
        let data = match kind {
            b'x' | b'g' => {
                let key = *rng.pick(&["path", "linkpath", "SCHILY.xattr.user.x", "size"]);
                let mut d = pax_record(key, &rng.pick(names).clone());
                if rng.chance(3) {
                    d.extend(pax_record("linkpath", &rng.pick(&links).clone()));
                }
                d
            }
            b'L' | b'K' => {
                let mut d = rng.pick(names).clone();
                d.push(0);
                d
            }
            b'0' | b'7' => rng.bytes(700),
            _ => Vec::new(),
        };
        push_entry(&mut out, &name, kind, &data, &link, mode);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Every path under `dir`, not following links.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(path.clone());
            }
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Directories made unreadable by a random mode would stop the clean-up.
fn open_up(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    for path in tree(dir) {
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o755));
            open_up(&path);
        }
    }
}

#[test]
fn rootfs_extraction_of_hostile_tars() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let mut seen = Outcomes::default();
    fuzz("rootfs_extraction_of_hostile_tars", |rng| {
        let case = tempfile::tempdir_in(work.path()).unwrap();
        let root = case.path().join("root");
        fs::create_dir(&root).unwrap();
        // A link inside the root that points out of it, for entries to try to use.
        std::os::unix::fs::symlink("../../outside", root.join("link")).unwrap();
        let mut layers = Vec::new();
        for n in 0..1 + rng.below(3) {
            let mut blob = hostile_tar(rng, &outside);
            if rng.chance(4) {
                mutate(rng, &mut blob);
            }
            let blob = match rng.below(3) {
                0 => gzip(&blob),
                1 => zstd::encode_all(&blob[..], 1).unwrap(),
                _ => blob,
            };
            let path = case.path().join(format!("layer{n}"));
            fs::write(&path, blob).unwrap();
            layers.push(path);
        }
        let opts = ExtractOptions {
            max_ratio: 0,
            max_bytes: Some(1 << 20),
            privileged: false,
        };
        match extract_layers(&root, &layers, &opts) {
            Ok(_) => seen.ok += 1,
            Err(ExtractError::Unsafe { .. }) => seen.err += 1,
            Err(ExtractError::Io { .. })
            | Err(ExtractError::TooLarge { .. })
            | Err(ExtractError::Layer(CoreError::CorruptLayer(_))) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
        assert_eq!(
            tree(&outside),
            Vec::<PathBuf>::new(),
            "wrote outside the root"
        );
        let mut beside: Vec<_> = fs::read_dir(case.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        beside.sort();
        let mut want: Vec<String> = (0..layers.len()).map(|n| format!("layer{n}")).collect();
        want.push("root".into());
        assert_eq!(beside, want, "wrote beside the root");
        open_up(&root);
    });
    seen.check("rootfs_extraction_of_hostile_tars");
}
