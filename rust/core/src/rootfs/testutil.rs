//! Layers built for the unit tests of the rootfs modules.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use flate2::write::GzEncoder;
use tar::EntryType;

use super::{extract_layers, ExtractError, ExtractOptions};

pub fn layer(dir: &Path, name: &str, build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let data = b.into_inner().unwrap();
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(&data).unwrap();
    let path = dir.join(name);
    fs::write(&path, enc.finish().unwrap()).unwrap();
    path
}

pub fn header(path: &str, kind: EntryType, size: u64) -> tar::Header {
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

pub fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let h = header(path, EntryType::Regular, data.len() as u64);
    b.append(&h, data).unwrap();
}

pub fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
    b.append(&header(path, EntryType::Directory, 0), &[][..])
        .unwrap();
}

pub fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, kind: EntryType, target: &str) {
    let mut h = header(path, kind, 0);
    h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    h.set_cksum();
    b.append(&h, &[][..]).unwrap();
}

pub fn opts() -> ExtractOptions {
    ExtractOptions {
        privileged: false,
        ..ExtractOptions::default()
    }
}

/// An extension entry (`L`, `K`, `x`, `g`, ...) with `payload`, its
/// header claiming `size` bytes (a stream cut short when larger).
pub fn ext(b: &mut tar::Builder<Vec<u8>>, kind: EntryType, size: u64, payload: &[u8]) {
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
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
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

pub fn extract_one(
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
