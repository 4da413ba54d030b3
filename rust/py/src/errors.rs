//! CoreError -> Python exception. The classes here are the base of the
//! whole imgpull error hierarchy (python/imgpull/errors.py subclasses them).

use imgpull_core::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    imgpull._core,
    ImgpullError,
    PyException,
    "Base of every error imgpull raises (the Python side subclasses it too)."
);
create_exception!(
    imgpull._core,
    DigestMismatchError,
    ImgpullError,
    "The bytes do not hash to the digest they were asked for."
);
create_exception!(
    imgpull._core,
    SizeMismatchError,
    ImgpullError,
    "More or fewer bytes than the descriptor's size."
);
create_exception!(
    imgpull._core,
    FetchError,
    ImgpullError,
    "The native fetcher could not complete a transfer."
);
create_exception!(
    imgpull._core,
    LimitExceededError,
    ImgpullError,
    "A blob went past a limit on what a registry may send: a layer decompressing past \
     max_ratio, a blob of unknown size past max_unsized."
);

/// Lets `?` turn a CoreError into a PyErr (orphan rule: neither is ours).
pub struct Error(CoreError);

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<Error> for PyErr {
    fn from(Error(err): Error) -> PyErr {
        let message = err.to_string();
        Python::attach(|py| match err {
            CoreError::DigestMismatch { expected, actual } => {
                with_attrs(py, DigestMismatchError::new_err(message), |v| {
                    v.setattr("expected", expected)?;
                    v.setattr("actual", actual)
                })
            }
            CoreError::SizeMismatch { expected, actual } => {
                with_attrs(py, SizeMismatchError::new_err(message), |v| {
                    v.setattr("expected", expected)?;
                    v.setattr("actual", actual)
                })
            }
            CoreError::Fetch {
                kind, retryable, ..
            } => with_attrs(py, FetchError::new_err(message), |v| {
                v.setattr("kind", kind.as_str())?;
                v.setattr("retryable", retryable)
            }),
            // OSError(errno, strerror, filename) picks the built-in subclass
            // (FileNotFoundError, PermissionError, ...) from errno.
            CoreError::File { op, path, source } => match source.raw_os_error() {
                Some(errno) => {
                    let strerror = format!("{op}: {}", strip_os_suffix(&source));
                    PyOSError::new_err((errno, strerror, path.to_string_lossy().into_owned()))
                }
                None => PyOSError::new_err(message),
            },
            CoreError::RatioExceeded { max_ratio, .. } => {
                with_attrs(py, LimitExceededError::new_err(message), |v| {
                    v.setattr("kind", "ratio")?;
                    v.setattr("limit", max_ratio)
                })
            }
            CoreError::UnsizedTooLarge { limit, .. } => {
                with_attrs(py, LimitExceededError::new_err(message), |v| {
                    v.setattr("kind", "unsized")?;
                    v.setattr("limit", limit)
                })
            }
            CoreError::InvalidDigest(_) | CoreError::Invalid(_) => PyValueError::new_err(message),
            CoreError::Closed => PyValueError::new_err("I/O operation on a closed BlobWriter"),
        })
    }
}

fn with_attrs(
    py: Python<'_>,
    err: PyErr,
    set: impl FnOnce(&Bound<'_, pyo3::exceptions::PyBaseException>) -> PyResult<()>,
) -> PyErr {
    match set(err.value(py)) {
        Ok(()) => err,
        Err(e) => e,
    }
}

/// io::Error displays as "No such file or directory (os error 2)"; the errno
/// is already carried by OSError itself.
fn strip_os_suffix(err: &std::io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// Class-level defaults so the attributes exist even on an instance raised
/// from Python without them (and so stubtest sees them at runtime).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ImgpullError", py.get_type::<ImgpullError>())?;
    let digest = py.get_type::<DigestMismatchError>();
    digest.setattr("expected", "")?;
    digest.setattr("actual", "")?;
    m.add("DigestMismatchError", digest)?;
    let size = py.get_type::<SizeMismatchError>();
    size.setattr("expected", 0)?;
    size.setattr("actual", 0)?;
    m.add("SizeMismatchError", size)?;
    let fetch = py.get_type::<FetchError>();
    fetch.setattr("kind", "io")?;
    fetch.setattr("retryable", false)?;
    m.add("FetchError", fetch)?;
    let limit = py.get_type::<LimitExceededError>();
    limit.setattr("kind", "ratio")?;
    limit.setattr("limit", 0)?;
    m.add("LimitExceededError", limit)?;
    Ok(())
}
