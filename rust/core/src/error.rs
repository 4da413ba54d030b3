//! The one error type of the core. The PyO3 crate maps each variant to a
//! Python exception class, so variants follow what Python needs to tell apart.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// Why a fetch failed below HTTP (an HTTP status is never an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchKind {
    Connect,
    Dns,
    Tls,
    Timeout,
    Io,
    Protocol,
    Range,
    Redirect,
    Cancelled,
    /// The body came in under the stall floor for a whole window.
    Stalled,
}

impl FetchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FetchKind::Connect => "connect",
            FetchKind::Dns => "dns",
            FetchKind::Tls => "tls",
            FetchKind::Timeout => "timeout",
            FetchKind::Io => "io",
            FetchKind::Protocol => "protocol",
            FetchKind::Range => "range",
            FetchKind::Redirect => "redirect",
            FetchKind::Cancelled => "cancelled",
            FetchKind::Stalled => "stalled",
        }
    }
}

impl fmt::Display for FetchKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("invalid digest {0:?}: expected 'sha256:' followed by 64 lowercase hex digits")]
    InvalidDigest(String),

    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },

    #[error("size mismatch: expected {expected} bytes, got {actual}")]
    SizeMismatch { expected: u64, actual: u64 },

    /// A local file operation failed; `path` says which file.
    #[error("{op} {path}: {source}", path = .path.display())]
    File {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("blob writer is closed")]
    Closed,

    /// A bad setting or argument (CA file without certificates, bad URL, ...).
    #[error("{0}")]
    Invalid(String),

    /// A layer blob that does not decompress: an unknown compression, corrupt
    /// gzip/zstd data, a tar that cannot be read. The message names the layer.
    #[error("{0}")]
    CorruptLayer(String),

    /// A layer decompressing to more than `max_ratio` times its compressed
    /// size (see diffid::over_ratio): a decompression bomb, most likely.
    #[error(
        "layer {digest}: decompresses to more than {max_ratio} times its compressed size \
         (a decompression bomb?); refused at --max-ratio {max_ratio}: raise it if the layer \
         is genuine (0: no limit)"
    )]
    RatioExceeded { digest: String, max_ratio: u64 },

    /// A blob whose descriptor gives no size (schema1) sent more than the
    /// ceiling for such blobs.
    #[error(
        "blob {digest}: more than {limit} bytes sent for a blob of unknown size (an endless \
         body?); refused at --max-unsized-blob {limit}: raise it if the blob is genuine"
    )]
    UnsizedTooLarge { digest: String, limit: u64 },

    #[error("fetch failed ({kind}): {message}")]
    Fetch {
        kind: FetchKind,
        retryable: bool,
        message: String,
    },
}

impl CoreError {
    pub fn file(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        CoreError::File {
            op,
            path: path.into(),
            source,
        }
    }

    pub fn fetch(kind: FetchKind, retryable: bool, message: impl Into<String>) -> Self {
        CoreError::Fetch {
            kind,
            retryable,
            message: message.into(),
        }
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;
