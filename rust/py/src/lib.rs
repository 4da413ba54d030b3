//! imgpull._core: thin PyO3 bindings over imgpull-core. Arguments are
//! converted, the core runs with the GIL released, errors are mapped.

mod errors;
mod export;
mod fetch;
mod schema1;
mod writer;

use std::path::PathBuf;

use pyo3::prelude::*;

/// Below this, releasing the GIL costs more than hashing.
const DETACH_MIN: usize = 64 * 1024;

/// 'sha256:<hex>' of data.
#[pyfunction]
fn sha256_bytes(py: Python<'_>, data: &[u8]) -> String {
    if data.len() < DETACH_MIN {
        return imgpull_core::sha256_bytes(data).to_string();
    }
    py.detach(|| imgpull_core::sha256_bytes(data).to_string())
}

/// 'sha256:<hex>' of a file's content, streamed (GIL released).
#[pyfunction]
fn sha256_file(py: Python<'_>, path: PathBuf) -> errors::Result<String> {
    Ok(py.detach(|| imgpull_core::sha256_file(&path))?.to_string())
}

/// Copies `src` to `dest` hashing as it writes; returns 'sha256:<hex>' of
/// the bytes written (GIL released).
#[pyfunction]
fn copy_sha256(py: Python<'_>, src: PathBuf, dest: PathBuf) -> errors::Result<String> {
    Ok(py
        .detach(|| imgpull_core::copy_sha256(&src, &dest))?
        .to_string())
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    schema1::register(m)?;
    export::register(m)?;
    m.add_function(wrap_pyfunction!(sha256_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(sha256_file, m)?)?;
    m.add_function(wrap_pyfunction!(copy_sha256, m)?)?;
    writer::register(m)?;
    m.add_class::<fetch::Transfer>()?;
    m.add_class::<fetch::FetchResult>()?;
    m.add_class::<fetch::Fetcher>()?;
    Ok(())
}
