//! Test data shared by the unit tests of several modules.

use std::io::Write;

use flate2::write::GzEncoder;

/// `len` bytes that detection takes for a tar ("ustar" at offset 257).
pub fn tar_like(len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
    data[257..262].copy_from_slice(b"ustar");
    data
}

/// One gzip member holding `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_at(data, flate2::Compression::fast())
}

/// One gzip member holding `data` compressed as far as gzip goes: for
/// decompression bombs (zlib-rs's fast level keeps zeros near 100:1).
pub fn gzip_best(data: &[u8]) -> Vec<u8> {
    gzip_at(data, flate2::Compression::best())
}

fn gzip_at(data: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), level);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}
