//! imgpull-core: the byte-level work of imgpull, free of Python.
//!
//! - [`digest`]: 'sha256:<hex>' parsing and hashing
//! - [`writer`]: a hashing, resumable, verifying blob writer
//! - [`fetch`]: streaming blob GETs into a writer
//! - [`diffid`]: the digest of a layer's uncompressed content
//! - [`layer`]: that digest computed while a layer is downloaded
//! - [`schema1`]: Docker schema1 layer chains and signed payloads
//! - [`rootfs`]: applying layers to a directory (whiteouts, safety limits)

mod classify;
pub mod diffid;
pub mod digest;
pub mod error;
pub mod fetch;
pub mod gunzip;
mod interrupt;
pub mod layer;
mod offload;
#[cfg(target_os = "linux")]
pub mod rootfs;
pub mod schema1;
pub mod stall;
#[cfg(test)]
mod testutil;
mod tls;
pub mod writer;

pub use diffid::{decompress_to, diff_id_file};
pub use digest::{copy_sha256, sha256_bytes, sha256_file, Digest};
pub use error::{CoreError, FetchKind, Result};
pub use fetch::{FetchOptions, FetchResponse, Fetcher, Sink, Transfer};
pub use layer::LayerDigest;
pub use stall::StallPolicy;
pub use writer::{BlobWriter, ChunkWriter, Limits, Stop};
