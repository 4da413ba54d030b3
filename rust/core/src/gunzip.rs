//! Streaming gzip decompression on Intel's ISA-L (`isal_inflate`).
//!
//! Why not flate2/zlib-rs, which we used first: inflating is most of a
//! pull's CPU once diffIDs are checked, and ISA-L's inflate (hand-tuned
//! assembly, dispatched at run time to the CPU's AVX2/AVX-512 code) ran
//! 1.5-1.7x faster than zlib-rs on our text-like layers (see
//! benches/bench_layers.py). The library is Intel's, vendored and built by
//! the `isal-sys` crate; this file is only the thin streaming adapter, the
//! same shape as flate2's `MultiGzDecoder` in its read and write forms.
//!
//! Every gzip member is read, as `gzip -d` and Go's gzip reader (docker)
//! do; bytes after the last member that are not another member are an
//! error. ISA-L checks each member's CRC-32 and length trailer itself.

use std::alloc::{alloc_zeroed, handle_alloc_error, Layout};
use std::io::{self, BufRead, Read, Write};

use isal_sys::igzip_lib as isal;

/// Bytes of decompressed output per `isal_inflate` call in the write form.
const OUT_CHUNK: usize = 256 * 1024;
/// `avail_in` is a u32: larger inputs are fed in pieces.
const MAX_IN: usize = 1 << 30;

/// One `inflate_state` (~40 KiB, so boxed), kept at member boundaries.
struct Inflater {
    state: Box<isal::inflate_state>,
    /// Whether any member has been started (an empty stream is an error).
    started: bool,
    /// A call failed: every later one fails too.
    failed: bool,
}

// SAFETY: the raw pointers inside `inflate_state` (next_in, next_out) only
// point at caller buffers during one `step` call; between calls the state
// owns no borrowed memory, so moving it to another thread is sound.
unsafe impl Send for Inflater {}

impl Inflater {
    fn new() -> Inflater {
        let layout = Layout::new::<isal::inflate_state>();
        // SAFETY: the layout is that of inflate_state (not zero-sized); all
        // zeros is a valid inflate_state (integers, arrays, null pointers), so
        // the Box owns an initialised value, which isal_inflate_init then sets up.
        let mut state = unsafe {
            let ptr = alloc_zeroed(layout).cast::<isal::inflate_state>();
            if ptr.is_null() {
                handle_alloc_error(layout);
            }
            let mut state = Box::from_raw(ptr);
            isal::isal_inflate_init(&mut *state);
            state
        };
        // Parse the gzip header and check the trailer (CRC-32, ISIZE).
        state.crc_flag = isal::ISAL_GZIP;
        Inflater {
            state,
            started: false,
            failed: false,
        }
    }

    fn at_member_end(&self) -> bool {
        self.state.block_state == isal::isal_block_state_ISAL_BLOCK_FINISH
    }

    /// Inflates from `input` into `output`: (bytes consumed, bytes produced).
    /// At the end of a member, further input starts the next member.
    fn step(&mut self, input: &[u8], output: &mut [u8]) -> io::Result<(usize, usize)> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid gzip data",
            ));
        }
        if self.at_member_end() && !input.is_empty() {
            // SAFETY: resets plain fields of a state we own.
            unsafe { isal::isal_inflate_reset(&mut *self.state) };
        }
        self.started |= !input.is_empty();
        let input = &input[..input.len().min(MAX_IN)];
        let out_len = output.len().min(MAX_IN);
        let st = &mut *self.state;
        // ISA-L never writes through next_in (C has no const there).
        st.next_in = input.as_ptr().cast_mut();
        st.avail_in = input.len() as u32;
        st.next_out = output.as_mut_ptr();
        st.avail_out = out_len as u32;
        // SAFETY: next_in/next_out are valid for avail_in/avail_out bytes for
        // the duration of the call; the state was initialised by new().
        let ret = unsafe { isal::isal_inflate(st) };
        let (left_in, left_out) = (st.avail_in as usize, st.avail_out as usize);
        st.next_in = std::ptr::null_mut();
        st.next_out = std::ptr::null_mut();
        // On an error ISA-L's counters are not meaningful (they can even claim
        // more input left than it was given), and the state is not reusable.
        if ret < 0 || left_in > input.len() || left_out > out_len {
            self.failed = true;
        }
        if self.failed {
            let what = if ret < 0 {
                describe(ret)
            } else {
                "invalid gzip data"
            };
            return Err(io::Error::new(io::ErrorKind::InvalidData, what));
        }
        let (used, produced) = (input.len() - left_in, out_len - left_out);
        if used == 0 && produced == 0 && !input.is_empty() && out_len > 0 {
            // Input offered, room given, nothing taken or made: never spin on it.
            self.failed = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "invalid gzip data (no progress)",
            ));
        }
        Ok((used, produced))
    }

    /// Ok when the input ended exactly after a whole member.
    fn check_end(&self) -> io::Result<()> {
        if self.started && self.at_member_end() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "gzip stream ends before its last member does",
            ))
        }
    }
}

fn describe(ret: i32) -> &'static str {
    match ret {
        isal::ISAL_INVALID_BLOCK => "invalid deflate block",
        isal::ISAL_INVALID_SYMBOL => "invalid deflate symbol",
        isal::ISAL_INVALID_LOOKBACK => "invalid deflate back-reference",
        isal::ISAL_INVALID_WRAPPER => "invalid gzip header",
        isal::ISAL_UNSUPPORTED_METHOD => "gzip header names a method other than deflate",
        isal::ISAL_INCORRECT_CHECKSUM => "gzip checksum mismatch",
        _ => "invalid gzip data",
    }
}

/// A gzip stream read from `R`, decompressed.
pub struct GzipReader<R> {
    inner: R,
    inflater: Inflater,
}

impl<R: BufRead> GzipReader<R> {
    pub fn new(inner: R) -> Self {
        GzipReader {
            inner,
            inflater: Inflater::new(),
        }
    }
}

impl<R: BufRead> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let input = self.inner.fill_buf()?;
            if input.is_empty() {
                return self.inflater.check_end().map(|()| 0);
            }
            let (used, produced) = self.inflater.step(input, buf)?;
            self.inner.consume(used);
            if produced > 0 {
                return Ok(produced);
            }
        }
    }
}

/// Decompresses the gzip bytes written to it into `W`.
pub struct GzipWriter<W> {
    inner: W,
    inflater: Inflater,
    out: Box<[u8]>,
}

impl<W: Write> GzipWriter<W> {
    pub fn new(inner: W) -> Self {
        GzipWriter {
            inner,
            inflater: Inflater::new(),
            out: vec![0u8; OUT_CHUNK].into_boxed_slice(),
        }
    }

    /// The sink, once the stream has ended after a whole member.
    pub fn finish(mut self) -> io::Result<W> {
        // Output ISA-L still holds back (it keeps some in its own buffer).
        self.drain(&[])?;
        self.inflater.check_end()?;
        Ok(self.inner)
    }

    fn drain(&mut self, mut data: &[u8]) -> io::Result<()> {
        loop {
            let (used, produced) = self.inflater.step(data, &mut self.out)?;
            data = &data[used..];
            if produced > 0 {
                self.inner.write_all(&self.out[..produced])?;
            }
            // A full output buffer may mean more is pending inside ISA-L.
            if produced == self.out.len() {
                continue;
            }
            if data.is_empty() {
                return Ok(());
            }
        }
    }
}

impl<W: Write> Write for GzipWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.drain(data)?;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{gzip, tar_like};

    fn read_all(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        GzipReader::new(io::BufReader::with_capacity(4096, data)).read_to_end(&mut out)?;
        Ok(out)
    }

    fn write_all(data: &[u8], piece: usize) -> io::Result<Vec<u8>> {
        let mut w = GzipWriter::new(Vec::new());
        for chunk in data.chunks(piece.max(1)) {
            w.write_all(chunk)?;
        }
        w.finish()
    }

    #[test]
    fn members_in_both_forms() {
        let data = tar_like(2_500_000);
        let mut blob = gzip(&data[..1_000_000]);
        blob.extend(gzip(&data[1_000_000..]));
        blob.extend(gzip(b""));
        assert_eq!(read_all(&blob).unwrap(), data);
        for piece in [1, 7, 4096, 1 << 20, blob.len()] {
            assert_eq!(write_all(&blob, piece).unwrap(), data, "piece {piece}");
        }
    }

    #[test]
    fn highly_compressible_output_larger_than_the_buffer() {
        let data = vec![0u8; 5 * OUT_CHUNK + 17];
        let blob = gzip(&data);
        assert_eq!(write_all(&blob, blob.len()).unwrap(), data);
        assert_eq!(read_all(&blob).unwrap(), data);
    }

    #[test]
    fn corrupt_and_truncated_streams_fail() {
        let data = tar_like(300_000);
        let blob = gzip(&data);
        let cut = &blob[..blob.len() - 3];
        for e in [read_all(cut).unwrap_err(), write_all(cut, 999).unwrap_err()] {
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        }
        let mut flipped = blob.clone();
        let n = flipped.len();
        flipped[n - 6] ^= 0x55; // inside the CRC-32 trailer
        assert!(read_all(&flipped).is_err());
        assert!(write_all(&flipped, 1000).is_err());
        let mut trailing = blob.clone();
        trailing.extend_from_slice(&[0u8; 64]);
        assert!(read_all(&trailing).is_err());
        assert!(write_all(&trailing, 1000).is_err());
        assert!(read_all(b"").is_err());
        assert!(write_all(&[0x1f, 0x8b, 0x08], 1).is_err());
    }
}
