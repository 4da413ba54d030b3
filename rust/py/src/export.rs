//! Exports for Python: decompress_to (docker-archive layer tars) and
//! Extraction (rootfs). Their errors are mapped in errors.rs.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use imgpull_core::rootfs::{self, ExtractOptions};
use imgpull_core::Digest;
use pyo3::prelude::*;

use crate::errors;

/// Writes the decompressed layer `src` to `dest`; returns its diffID (GIL released).
#[pyfunction]
fn decompress_to(py: Python<'_>, src: PathBuf, dest: PathBuf) -> errors::Result<String> {
    Ok(py
        .detach(|| imgpull_core::decompress_to(&src, &dest))?
        .to_string())
}

/// A root filesystem being written, layer by layer (see the stub). The core
/// extraction sits behind a Mutex: apply() runs with the GIL released.
#[pyclass(module = "imgpull._core", name = "Extraction", frozen)]
pub struct Extraction {
    inner: Mutex<rootfs::Extraction>,
    cancel: Arc<AtomicBool>,
}

#[pymethods]
impl Extraction {
    #[new]
    #[pyo3(signature = (root, *, max_ratio=rootfs::DEFAULT_MAX_RATIO, max_bytes=None))]
    fn new(root: PathBuf, max_ratio: u64, max_bytes: Option<u64>) -> Self {
        let opts = ExtractOptions {
            max_ratio,
            max_bytes,
            ..ExtractOptions::default()
        };
        let inner = rootfs::Extraction::new(&root, opts);
        Extraction {
            cancel: inner.canceller(),
            inner: Mutex::new(inner),
        }
    }

    /// Stops a running apply() at its next entry (from any thread).
    fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// Applies (blob path, diffID or None) pairs in order; returns each
    /// layer's (diffID, decompressed size).
    fn apply(
        &self,
        py: Python<'_>,
        layers: Vec<(PathBuf, Option<String>)>,
    ) -> errors::Result<Vec<(String, u64)>> {
        let mut parsed = Vec::with_capacity(layers.len());
        for (path, want) in layers {
            let want = match want {
                Some(d) => Some(Digest::parse(&d)?),
                None => None,
            };
            parsed.push((path, want));
        }
        let done = py.detach(|| {
            let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            inner.apply(&parsed)
        })?;
        Ok(done
            .into_iter()
            .map(|i| (i.diff_id.to_string(), i.size))
            .collect())
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("DEFAULT_MAX_RATIO", rootfs::DEFAULT_MAX_RATIO)?;
    m.add_function(wrap_pyfunction!(decompress_to, m)?)?;
    m.add_class::<Extraction>()?;
    Ok(())
}
