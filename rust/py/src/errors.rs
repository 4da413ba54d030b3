//! The one place where a failure of the core becomes a Python exception: the
//! native classes of imgpull's error tree (python/imgpull/errors.py draws the
//! whole tree and imports these) and the one conversion, `From<Error> for
//! PyErr`, from every error type the core returns.

use imgpull_core::rootfs::ExtractError as CoreExtractError;
use imgpull_core::schema1::Schema1Error as CoreSchema1Error;
use imgpull_core::CoreError;
use pyo3::create_exception;
use pyo3::exceptions::{PyBaseException, PyException, PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};

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
create_exception!(
    imgpull._core,
    ExtractError,
    ImgpullError,
    "A layer could not be applied to a root filesystem: an unsafe entry, a limit, a file error."
);
create_exception!(
    imgpull._core,
    Schema1Error,
    ImgpullError,
    "A Docker schema1 manifest whose layer chain or signature block is invalid."
);

const CORRUPT_LAYER_DOC: &str =
    "A layer blob that does not decompress: an unknown compression, corrupt gzip/zstd \
     data, an unreadable tar. Also a ValueError (what it was before it had a class).";

/// CorruptLayerError(ImgpullError, ValueError): two bases, which
/// `create_exception!` cannot give, so built once by calling `type`.
static CORRUPT_LAYER: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn corrupt_layer_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    let class = CORRUPT_LAYER.get_or_try_init(py, || -> PyResult<Py<PyType>> {
        let bases = (py.get_type::<ImgpullError>(), py.get_type::<PyValueError>());
        let dict = PyDict::new(py);
        dict.set_item("__module__", "imgpull._core")?;
        dict.set_item("__doc__", CORRUPT_LAYER_DOC)?;
        let class = py
            .get_type::<PyType>()
            .call1(("CorruptLayerError", bases, dict))?;
        Ok(class.cast_into::<PyType>()?.unbind())
    })?;
    Ok(class.bind(py))
}

/// Every error the core returns, so that `?` turns any of them into a PyErr
/// (orphan rule: neither side of `From<CoreError> for PyErr` is ours).
pub enum Error {
    Core(CoreError),
    Extract(CoreExtractError),
    Schema1(CoreSchema1Error),
}

impl From<CoreError> for Error {
    fn from(e: CoreError) -> Self {
        Error::Core(e)
    }
}

impl From<CoreExtractError> for Error {
    fn from(e: CoreExtractError) -> Self {
        Error::Extract(e)
    }
}

impl From<CoreSchema1Error> for Error {
    fn from(e: CoreSchema1Error) -> Self {
        Error::Schema1(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// The mapping: which Python class each failure raises, with its attributes.
impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        Python::attach(|py| match err {
            Error::Core(e) | Error::Extract(CoreExtractError::Layer(e)) => {
                let message = e.to_string();
                match e {
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
                    // OSError(errno, strerror, filename) picks the built-in
                    // subclass (FileNotFoundError, PermissionError, ...) from errno.
                    CoreError::File { op, path, source } => match source.raw_os_error() {
                        Some(errno) => {
                            let strerror = format!("{op}: {}", strip_os_suffix(&source));
                            PyOSError::new_err((
                                errno,
                                strerror,
                                path.to_string_lossy().into_owned(),
                            ))
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
                    CoreError::CorruptLayer(_) => match corrupt_layer_type(py) {
                        Ok(class) => PyErr::from_type(class.clone(), message),
                        Err(e) => e,
                    },
                    // A bad argument, and I/O on a closed writer (as on a
                    // closed Python file): programming errors, plain ValueError.
                    CoreError::InvalidDigest(_) | CoreError::Invalid(_) => {
                        PyValueError::new_err(message)
                    }
                    CoreError::Closed => {
                        PyValueError::new_err("I/O operation on a closed BlobWriter")
                    }
                }
            }
            Error::Extract(e) => {
                let kind = match &e {
                    CoreExtractError::Unsafe { .. } => "unsafe",
                    CoreExtractError::Ratio { .. } => "ratio",
                    CoreExtractError::TooLarge { .. } => "size",
                    CoreExtractError::TooLong { .. } => "header",
                    CoreExtractError::DiffId { .. } => "diffid",
                    CoreExtractError::Cancelled => "cancelled",
                    _ => "io",
                };
                with_attrs(py, ExtractError::new_err(e.to_string()), |v| {
                    v.setattr("kind", kind)
                })
            }
            Error::Schema1(e) => Schema1Error::new_err(e.0),
        })
    }
}

fn with_attrs(
    py: Python<'_>,
    err: PyErr,
    set: impl FnOnce(&Bound<'_, PyBaseException>) -> PyResult<()>,
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

/// Adds the classes to the module, with class-level defaults so the
/// attributes exist even on an instance raised from Python without them (and
/// so stubtest sees them at runtime).
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
    m.add("CorruptLayerError", corrupt_layer_type(py)?)?;
    let extract = py.get_type::<ExtractError>();
    extract.setattr("kind", "io")?;
    m.add("ExtractError", extract)?;
    m.add("Schema1Error", py.get_type::<Schema1Error>())?;
    Ok(())
}
