//! Schema1 helpers and layer diffIDs for Python: fix_schema1_layers,
//! schema1_payload, diff_id_file. Their errors are mapped in errors.rs.

use std::path::PathBuf;

use imgpull_core::schema1;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors;

/// Indexes of the history entries to keep, top first (see the stub).
#[pyfunction]
#[pyo3(signature = (layers, *, allow_base_parent=false))]
fn fix_schema1_layers(
    layers: Vec<(String, String)>,
    allow_base_parent: bool,
) -> errors::Result<Vec<usize>> {
    Ok(schema1::fix_layers(&layers, allow_base_parent)?)
}

/// The canonical payload of a schema1 manifest (signatures stripped).
#[pyfunction]
fn schema1_payload<'py>(py: Python<'py>, raw: &[u8]) -> errors::Result<Bound<'py, PyBytes>> {
    let payload = schema1::canonical_payload(raw)?;
    Ok(PyBytes::new(py, &payload))
}

/// 'sha256:<hex>' of a layer blob's decompressed content (GIL released).
#[pyfunction]
#[pyo3(signature = (path, *, max_ratio=imgpull_core::diffid::DEFAULT_MAX_RATIO))]
fn diff_id_file(py: Python<'_>, path: PathBuf, max_ratio: u64) -> errors::Result<String> {
    Ok(py
        .detach(|| imgpull_core::diff_id_file(&path, max_ratio))?
        .to_string())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(fix_schema1_layers, m)?)?;
    m.add_function(wrap_pyfunction!(schema1_payload, m)?)?;
    m.add_function(wrap_pyfunction!(diff_id_file, m)?)?;
    Ok(())
}
