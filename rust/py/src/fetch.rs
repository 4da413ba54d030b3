//! Fetcher, Transfer and FetchResult for Python.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use imgpull_core::{
    CoreError, FetchOptions, Fetcher as CoreFetcher, StallPolicy, Transfer as CoreTransfer,
};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::errors::{Error, Result};
use crate::writer::{BlobWriter, ChunkWriter};

#[pyclass(module = "imgpull._core", name = "Transfer", frozen)]
pub struct Transfer {
    inner: Arc<CoreTransfer>,
}

#[pymethods]
impl Transfer {
    #[new]
    fn new() -> Self {
        Transfer {
            inner: Arc::new(CoreTransfer::new()),
        }
    }

    #[getter]
    fn received(&self) -> u64 {
        self.inner.received()
    }

    #[getter]
    fn waited(&self) -> f64 {
        self.inner.waited().as_secs_f64()
    }

    #[getter]
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }

    fn cancel(&self) {
        self.inner.cancel()
    }

    fn __repr__(&self) -> String {
        format!(
            "Transfer(received={}, cancelled={})",
            self.received(),
            self.cancelled()
        )
    }
}

#[pyclass(module = "imgpull._core", name = "FetchResult", frozen, get_all)]
pub struct FetchResult {
    status: u16,
    headers: Vec<(String, String)>,
    url: String,
    written: u64,
    body: Py<PyBytes>,
}

#[pymethods]
impl FetchResult {
    fn __repr__(&self) -> String {
        format!(
            "FetchResult(status={}, url={:?}, written={})",
            self.status, self.url, self.written
        )
    }
}

#[pyclass(module = "imgpull._core", name = "Fetcher", frozen)]
pub struct Fetcher {
    inner: CoreFetcher,
}

fn seconds(name: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            CoreError::Invalid(format!("{name} must be a positive number of seconds")).into()
        })
}

const _: () =
    assert!(StallPolicy::DEFAULT.min_rate == 16384 && StallPolicy::DEFAULT.window.as_secs() == 30);

#[pymethods]
impl Fetcher {
    #[new]
    #[pyo3(signature = (
        *,
        user_agent,
        ca_file=None,
        client_cert=None,
        client_key=None,
        insecure=false,
        proxy=None,
        connect_timeout=30.0,
        read_timeout=60.0,
        // Literals, so that Python's signature shows them; equal to
        // StallPolicy::DEFAULT (checked below at compile time).
        stall_rate=16384,
        stall_window=30.0,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        user_agent: String,
        ca_file: Option<PathBuf>,
        client_cert: Option<PathBuf>,
        client_key: Option<PathBuf>,
        insecure: bool,
        proxy: Option<String>,
        connect_timeout: f64,
        read_timeout: f64,
        stall_rate: u64,
        stall_window: f64,
    ) -> Result<Self> {
        let opts = FetchOptions {
            user_agent,
            ca_file,
            client_cert,
            client_key,
            insecure,
            proxy,
            connect_timeout: seconds("connect_timeout", connect_timeout)?,
            read_timeout: seconds("read_timeout", read_timeout)?,
            // A rate of 0 turns stall detection off.
            stall: match stall_rate {
                0 => None,
                min_rate => Some(StallPolicy {
                    min_rate,
                    window: seconds("stall_window", stall_window)?,
                }),
            },
        };
        // Reads the TLS files given, and with them the system's roots.
        let inner = py.detach(|| CoreFetcher::new(&opts))?;
        Ok(Fetcher { inner })
    }

    #[pyo3(signature = (url, headers, writer, transfer=None))]
    fn fetch_blob(
        &self,
        py: Python<'_>,
        url: &str,
        headers: Vec<(String, String)>,
        writer: &Bound<'_, PyAny>,
        transfer: Option<&Bound<'_, Transfer>>,
    ) -> PyResult<FetchResult> {
        let transfer = transfer.map(|t| t.get().inner.clone());
        let transfer = transfer.as_deref();
        // A BlobWriter (the blob, in order) or a ChunkWriter (one range of it).
        let res = if let Ok(chunk) = writer.cast::<ChunkWriter>() {
            let chunk = chunk.get();
            py.detach(|| chunk.with(|c| self.inner.fetch_blob(url, &headers, c, transfer)))
        } else {
            let writer = writer.cast::<BlobWriter>()?.get();
            py.detach(|| writer.with(|w| self.inner.fetch_blob(url, &headers, w, transfer)))
        }
        .map_err(|e| PyErr::from(Error::from(e)))?;
        Ok(FetchResult {
            status: res.status,
            headers: res.headers,
            url: res.url,
            written: res.written,
            body: PyBytes::new(py, &res.body).unbind(),
        })
    }
}
