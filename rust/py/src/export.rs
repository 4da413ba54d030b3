//! Exports for Python: decompress_to (docker-archive layer tars) and
//! extract_layers (rootfs), with the ExtractError they raise.

use std::path::PathBuf;

use imgpull_core::rootfs::{self, ExtractError as CoreExtractError, ExtractOptions};
use pyo3::create_exception;
use pyo3::prelude::*;

use crate::errors::{self, ImgpullError};

create_exception!(
    imgpull._core,
    ExtractError,
    ImgpullError,
    "A layer could not be applied to a root filesystem: an unsafe entry, a limit, a file error."
);

/// Writes the decompressed layer `src` to `dest`; returns its diffID (GIL released).
#[pyfunction]
fn decompress_to(py: Python<'_>, src: PathBuf, dest: PathBuf) -> errors::Result<String> {
    Ok(py
        .detach(|| imgpull_core::decompress_to(&src, &dest))?
        .to_string())
}

/// Applies layer blobs in order to `root` (see the stub).
#[pyfunction]
#[pyo3(signature = (root, layers, *, max_ratio=rootfs::DEFAULT_MAX_RATIO, max_bytes=None))]
fn extract_layers(
    py: Python<'_>,
    root: PathBuf,
    layers: Vec<PathBuf>,
    max_ratio: u64,
    max_bytes: Option<u64>,
) -> PyResult<u64> {
    let opts = ExtractOptions {
        max_ratio,
        max_bytes,
        ..ExtractOptions::default()
    };
    match py.detach(|| rootfs::extract_layers(&root, &layers, &opts)) {
        Ok(n) => Ok(n),
        Err(CoreExtractError::Layer(e)) => Err(errors::Error::from(e).into()),
        Err(e) => {
            let kind = match &e {
                CoreExtractError::Unsafe { .. } => "unsafe",
                CoreExtractError::Ratio { .. } => "ratio",
                CoreExtractError::TooLarge { .. } => "size",
                CoreExtractError::TooLong { .. } => "header",
                _ => "io",
            };
            let err = ExtractError::new_err(e.to_string());
            err.value(py).setattr("kind", kind)?;
            Err(err)
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let extract = m.py().get_type::<ExtractError>();
    extract.setattr("kind", "io")?;
    m.add("ExtractError", extract)?;
    m.add("DEFAULT_MAX_RATIO", rootfs::DEFAULT_MAX_RATIO)?;
    m.add_function(wrap_pyfunction!(decompress_to, m)?)?;
    m.add_function(wrap_pyfunction!(extract_layers, m)?)?;
    Ok(())
}
