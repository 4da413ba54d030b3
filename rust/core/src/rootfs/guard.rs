//! The tar stream's guard: headers whose payload the tar crate would hold in
//! memory whole are refused before the crate reads them; names shown in
//! errors are cut short and escaped.

use std::cell::Cell;
use std::io::{self, Read};

use tar::EntryType;

use super::{ExtractError, MAX_PATH, MAX_PAX};

/// Characters of an entry name shown in an error.
const SHOWN_CHARS: usize = 200;

/// A tar header announcing more than its bound.
#[derive(Debug, Clone, Copy)]
pub(super) struct Oversized {
    what: &'static str,
    size: u64,
    limit: u64,
    bound: &'static str,
}

impl Oversized {
    pub(super) fn error(self, layer: &str) -> ExtractError {
        ExtractError::TooLong {
            layer: layer.to_owned(),
            what: self.what.to_owned(),
            size: self.size,
            limit: self.limit,
            bound: self.bound,
        }
    }
}

pub(super) const PATH_MAX: &str = "PATH_MAX";
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
pub(super) struct TarGuard<'a, R> {
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
    pub(super) fn new(inner: R, refused: &'a Cell<Option<Oversized>>) -> Self {
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
pub(super) fn show_name(raw: &[u8]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::testutil::*;
    use std::fs;

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
