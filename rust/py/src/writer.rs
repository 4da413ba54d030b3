//! BlobWriter for Python: one core writer behind a Mutex so the object can
//! be shared across threads; every file operation runs with the GIL released.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use imgpull_core::diffid::DEFAULT_MAX_RATIO;
use imgpull_core::writer::DEFAULT_MAX_UNSIZED;
use imgpull_core::{BlobWriter as CoreWriter, ChunkWriter as CoreChunk, Limits, Stop};
use pyo3::prelude::*;

use crate::errors::Result;

#[pyclass(module = "imgpull._core", name = "BlobWriter", frozen)]
pub struct BlobWriter {
    inner: Mutex<CoreWriter>,
    /// Mirrors inner.offset() so reading it never waits for a running write.
    offset: AtomicU64,
    path: String,
    digest: String,
    size: Option<u64>,
    layer: bool,
    /// (diffID, uncompressed size), set by a layer writer's successful commit.
    layer_digest: OnceLock<(String, u64)>,
    /// Set without the writer's lock: while a fetch holds it.
    stop: Arc<Stop>,
}

impl BlobWriter {
    /// Locks the core writer; call only with the GIL released. A panic in
    /// another holder cannot leave the writer half-updated in a way the
    /// checks in commit() would miss, so poisoning is ignored.
    pub fn lock(&self) -> MutexGuard<'_, CoreWriter> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the locked writer, then publishes the new offset, also
    /// when `f` failed (a fetch may have written some bytes first).
    pub fn with<T>(&self, f: impl FnOnce(&mut CoreWriter) -> T) -> T {
        let mut w = self.lock();
        let out = f(&mut w);
        self.offset.store(w.offset(), Ordering::Relaxed);
        out
    }
}

#[pymethods]
impl BlobWriter {
    #[new]
    #[pyo3(signature = (
        path, digest, size=None, *, layer=false,
        max_ratio=DEFAULT_MAX_RATIO, max_unsized=DEFAULT_MAX_UNSIZED, trusted=None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        digest: String,
        size: Option<u64>,
        layer: bool,
        max_ratio: u64,
        max_unsized: u64,
        trusted: Option<u64>,
    ) -> Result<Self> {
        let limits = Limits {
            max_ratio,
            max_unsized,
        };
        let writer =
            py.detach(|| CoreWriter::open_trusted(&path, &digest, size, layer, limits, trusted))?;
        Ok(BlobWriter {
            stop: writer.stop(),
            offset: AtomicU64::new(writer.offset()),
            inner: Mutex::new(writer),
            path: path.to_string_lossy().into_owned(),
            digest,
            size,
            layer,
            layer_digest: OnceLock::new(),
        })
    }

    #[getter]
    fn layer(&self) -> bool {
        self.layer
    }

    #[getter]
    fn diff_id(&self) -> Option<&str> {
        self.layer_digest.get().map(|(d, _)| d.as_str())
    }

    #[getter]
    fn uncompressed_size(&self) -> Option<u64> {
        self.layer_digest.get().map(|&(_, n)| n)
    }

    #[getter]
    fn offset(&self) -> u64 {
        self.offset.load(Ordering::Relaxed)
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    #[getter]
    fn digest(&self) -> &str {
        &self.digest
    }

    #[getter]
    fn size(&self) -> Option<u64> {
        self.size
    }

    fn write(&self, py: Python<'_>, data: &[u8]) -> Result<()> {
        Ok(py.detach(|| self.with(|w| w.write(data)))?)
    }

    #[getter]
    fn generation(&self) -> u64 {
        self.stop.generation()
    }

    fn stop_at(&self, at: u64, generation: u64) -> Option<u64> {
        self.stop.stop_at(at, generation)
    }

    fn absorb(&self, py: Python<'_>, to: u64) -> Result<()> {
        Ok(py.detach(|| self.with(|w| w.absorb(to)))?)
    }

    fn truncate(&self, py: Python<'_>) -> Result<()> {
        Ok(py.detach(|| self.with(|w| w.truncate()))?)
    }

    fn commit(&self, py: Python<'_>, dest: PathBuf) -> Result<()> {
        let found = py.detach(|| self.with(|w| w.commit(&dest).map(|()| w.layer_digest())))?;
        if let Some(found) = found {
            let _ = self
                .layer_digest
                .set((found.diff_id.to_string(), found.uncompressed_size));
        }
        Ok(())
    }

    fn close(&self, py: Python<'_>) -> Result<()> {
        Ok(py.detach(|| self.with(|w| w.close()))?)
    }

    fn __repr__(&self) -> String {
        let size = self.size.map_or("None".to_owned(), |s| s.to_string());
        format!(
            "BlobWriter(path={:?}, digest={:?}, size={size}, offset={}, layer={})",
            self.path,
            self.digest,
            self.offset(),
            if self.layer { "True" } else { "False" }
        )
    }
}

#[pyclass(module = "imgpull._core", name = "ChunkWriter", frozen)]
pub struct ChunkWriter {
    inner: Mutex<CoreChunk>,
    pos: Arc<AtomicU64>,
    start: u64,
    end: u64,
}

impl ChunkWriter {
    /// Runs `f` on the locked chunk; call only with the GIL released.
    pub fn with<T>(&self, f: impl FnOnce(&mut CoreChunk) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[pymethods]
impl ChunkWriter {
    #[new]
    fn new(py: Python<'_>, path: PathBuf, digest: String, start: u64, end: u64) -> Result<Self> {
        let chunk = py.detach(|| CoreChunk::open(&path, &digest, start, end))?;
        Ok(ChunkWriter {
            pos: chunk.position(),
            inner: Mutex::new(chunk),
            start,
            end,
        })
    }

    #[getter]
    fn offset(&self) -> u64 {
        self.pos.load(Ordering::Acquire)
    }

    #[getter]
    fn start(&self) -> u64 {
        self.start
    }

    #[getter]
    fn end(&self) -> u64 {
        self.end
    }

    fn __repr__(&self) -> String {
        format!(
            "ChunkWriter(start={}, end={}, offset={})",
            self.start,
            self.end,
            self.offset()
        )
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<BlobWriter>()?;
    m.add_class::<ChunkWriter>()?;
    m.add("DEFAULT_MAX_UNSIZED", DEFAULT_MAX_UNSIZED)?;
    Ok(())
}
