//! The decompressing thread and the stream the applier reads from it.

use std::cell::Cell;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::mpsc::{Receiver, SyncSender};

use sha2::{Digest as _, Sha256};

use super::{ExtractError, ExtractOptions};
use crate::diffid::{layer_name, over_ratio, read_layer};
use crate::digest::Digest;
use crate::error::CoreError;

/// Chunks of decompressed tar in flight between the two threads (1 MiB each).
pub(super) const AHEAD: usize = 8;
const PIECE: usize = 1 << 20;

/// What the decompressing thread sends: a layer's tar in chunks, then how
/// that layer's stream ended (its decompressed size and diffID, or why it
/// stopped).
pub(super) enum Piece {
    Data(Vec<u8>),
    End(Result<Inflated, ExtractError>),
}

/// A layer's tar as it came out of its blob: its size and its sha256 (the
/// diffID), hashed on the decompressing thread as the chunks leave it.
#[derive(Debug, Clone, Copy)]
pub struct Inflated {
    pub size: u64,
    pub diff_id: Digest,
}

pub(super) fn decompress_layers(
    layers: &[PathBuf],
    opts: &ExtractOptions,
    mut before: u64,
    tx: SyncSender<Piece>,
    reuse: Receiver<Vec<u8>>,
) {
    for layer in layers {
        let Some(end) = decompress_layer(layer, opts, before, &tx, &reuse) else {
            return; // the applier stopped
        };
        let failed = end.is_err();
        before += end.as_ref().map_or(0, |i| i.size);
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
) -> Option<Result<Inflated, ExtractError>> {
    let hit = Rc::new(Cell::new(None));
    let mut gone = false;
    let mut hasher = Sha256::new();
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
            hasher.update(&chunk);
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
        (None, Ok(size)) => Ok(Inflated {
            size,
            diff_id: Digest::from_hasher(hasher),
        }),
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
pub(super) struct LayerStream<'a> {
    rx: &'a Receiver<Piece>,
    recycle: &'a SyncSender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
    /// How the layer's stream ended, once it has.
    end: Option<Result<Inflated, ExtractError>>,
}

impl<'a> LayerStream<'a> {
    pub(super) fn new(rx: &'a Receiver<Piece>, recycle: &'a SyncSender<Vec<u8>>) -> Self {
        LayerStream {
            rx,
            recycle,
            chunk: Vec::new(),
            pos: 0,
            end: None,
        }
    }

    /// Reads to the layer's end (the tar's padding, say) and says how it ended.
    pub(super) fn finish(&mut self) -> Result<Inflated, ExtractError> {
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

#[cfg(test)]
mod tests {
    use super::super::extract_layers;
    use super::*;
    use crate::rootfs::testutil::*;
    use std::fs;

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
}
