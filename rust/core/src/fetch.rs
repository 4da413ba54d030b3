//! Fetcher: GET a blob and stream its body into a BlobWriter.
//!
//! Redirects are followed here, not by ureq, so that Authorization is
//! dropped when the origin changes; HTTP statuses are results, not errors.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ureq::config::AutoHeaderValue;
use ureq::http::{HeaderMap, Response};
use ureq::tls::TlsConfig;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::{Agent, Body, Proxy, ProxyProtocol};
use url::Url;

use crate::classify;
use crate::digest::CHUNK;
use crate::error::{CoreError, FetchKind, Result};
use crate::interrupt::{Interrupt, InterruptibleConnector};
use crate::offload::Busy;
use crate::stall::{StallGuard, StallPolicy};
use crate::tls::{tls_config, TlsOptions};
use crate::writer::{BlobWriter, ChunkWriter};

/// Where a fetched body goes: a blob's writer (in order, hashed), or one
/// chunk of it written in place (a Range request of its own).
pub trait Sink {
    /// The next byte of the blob this sink takes: where a 206 must start.
    fn offset(&self) -> u64;
    /// Takes what it can of `data`; fewer bytes than given: it is full
    /// (its stop or its end), and the fetch ends there.
    fn take(&mut self, data: &[u8]) -> Result<usize>;
    /// Bytes it takes before it is full.
    fn room(&self) -> u64;
    /// A 200 answered the Range request: the whole blob is coming.
    fn restart(&mut self, status: u16) -> Result<()>;
    /// The end (exclusive) a 206's Content-Range must name, if any.
    fn range_end(&self) -> Option<u64>;
    fn is_layer(&self) -> bool;
    fn digest(&self) -> String;
    /// The bytes taken so far are in the file (called whatever the outcome).
    fn finish(&mut self) -> Result<()>;
}

impl Sink for BlobWriter {
    fn offset(&self) -> u64 {
        BlobWriter::offset(self)
    }
    fn take(&mut self, data: &[u8]) -> Result<usize> {
        self.write_upto(data)
    }
    fn room(&self) -> u64 {
        BlobWriter::room(self)
    }
    fn restart(&mut self, _status: u16) -> Result<()> {
        // The range was ignored and the whole blob is coming: start over.
        self.truncate()
    }
    fn range_end(&self) -> Option<u64> {
        None
    }
    fn is_layer(&self) -> bool {
        BlobWriter::is_layer(self)
    }
    fn digest(&self) -> String {
        BlobWriter::digest(self).to_string()
    }
    fn finish(&mut self) -> Result<()> {
        self.flush()
    }
}

impl Sink for ChunkWriter {
    fn offset(&self) -> u64 {
        ChunkWriter::offset(self)
    }
    fn take(&mut self, data: &[u8]) -> Result<usize> {
        self.write(data)
    }
    fn room(&self) -> u64 {
        self.end() - ChunkWriter::offset(self)
    }
    fn restart(&mut self, status: u16) -> Result<()> {
        // Never the whole blob into a chunk: the caller goes back to one stream.
        Err(CoreError::fetch(
            FetchKind::Range,
            false,
            format!("the server ignored the Range request (HTTP {status}, not 206)"),
        ))
    }
    fn range_end(&self) -> Option<u64> {
        Some(self.end())
    }
    fn is_layer(&self) -> bool {
        false
    }
    fn digest(&self) -> String {
        ChunkWriter::digest(self).to_string()
    }
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

const MAX_REDIRECTS: usize = 10;
/// How much of a non-2xx body is kept for the caller's error message.
const ERROR_BODY_MAX: u64 = 64 * 1024;

pub struct FetchOptions {
    pub user_agent: String,
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub insecure: bool,
    /// 'http://host:port'. None means no proxy at all: the caller resolves
    /// the environment (as httpx does) and passes the result.
    pub proxy: Option<String>,
    pub connect_timeout: Duration,
    /// Longest wait for any byte; longer is FetchKind::Timeout.
    pub read_timeout: Duration,
    /// A body slower than this is given up (FetchKind::Stalled, retryable,
    /// the bytes so far kept); None: only read_timeout applies.
    pub stall: Option<StallPolicy>,
}

/// Progress and cancellation shared between a running fetch and its caller.
/// `cancel()` from another thread also shuts down the socket the fetch is
/// blocked on (interrupt.rs): it ends at once, not at its read timeout.
#[derive(Debug, Default)]
pub struct Transfer {
    received: AtomicU64,
    /// Time spent waiting in reads of the body: near the whole of it when
    /// the connection is what limits the rate, little when the bytes are
    /// already there and hashing them is (transfer.py splits only the former).
    waited_nanos: AtomicU64,
    interrupt: Arc<Interrupt>,
}

impl Transfer {
    pub fn new() -> Transfer {
        Transfer::default()
    }
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    /// Seconds spent waiting for body bytes so far.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited_nanos.load(Ordering::Relaxed))
    }
    pub fn cancelled(&self) -> bool {
        self.interrupt.cancelled()
    }
    pub fn cancel(&self) {
        self.interrupt.cancel();
    }
}

#[derive(Debug)]
pub struct FetchResponse {
    pub status: u16,
    /// Names lower-cased (as http::HeaderName always is).
    pub headers: Vec<(String, String)>,
    /// Final URL after redirects.
    pub url: String,
    /// Body bytes written to the writer by this call.
    pub written: u64,
    /// For a non-2xx status, the start of the body; else empty.
    pub body: Vec<u8>,
}

pub struct Fetcher {
    /// For http URLs: it makes no TLS connection, so it was given no roots.
    plain: Agent,
    /// For https URLs (every URL, behind an https proxy), made at the first
    /// one when no TLS file was given: it reads the system's roots (~10 ms),
    /// which a plain-http registry needs only for a redirect to https.
    tls: OnceLock<Agent>,
    settings: AgentSettings,
    stall: Option<StallPolicy>,
    /// The stall window is no longer than read_timeout, so a read timeout
    /// mid-body means a window without a byte.
    silence_is_stall: bool,
    /// The longest wait for a byte: also the limit, in all, of a response's
    /// headers and of reading a non-2xx body, so that a server trickling
    /// them cannot hold the fetch.
    per_read: Duration,
}

impl Fetcher {
    pub fn new(opts: &FetchOptions) -> Result<Fetcher> {
        let proxy = match &opts.proxy {
            Some(p) => {
                Some(Proxy::new(p).map_err(|e| CoreError::Invalid(format!("proxy {p:?}: {e}")))?)
            }
            None => None,
        };
        // A body that sends nothing at all must end within the stall window
        // too: its reads then time out at the window, and stream() calls
        // that a stall (the rate was zero for a whole window).
        let per_read = match opts.stall {
            Some(s) => opts.read_timeout.min(s.window),
            None => opts.read_timeout,
        };
        let settings = AgentSettings {
            user_agent: opts.user_agent.clone(),
            insecure: opts.insecure,
            proxy,
            connect_timeout: opts.connect_timeout,
            read_timeout: opts.read_timeout,
            per_read,
        };
        let tls = OnceLock::new();
        if opts.ca_file.is_some() || opts.client_cert.is_some() || opts.client_key.is_some() {
            // Read now, so that a file that cannot be used is reported here.
            let files = tls_config(&TlsOptions {
                ca_file: opts.ca_file.as_deref(),
                client_cert: opts.client_cert.as_deref(),
                client_key: opts.client_key.as_deref(),
                insecure: opts.insecure,
            })?;
            let _ = tls.set(settings.agent(files));
        }
        Ok(Fetcher {
            // ureq's default TLS settings (its bundled roots, parsed only at
            // a TLS connection, which this agent never makes).
            plain: settings.agent(TlsConfig::default()),
            tls,
            settings,
            stall: opts.stall,
            silence_is_stall: opts.stall.is_some_and(|s| s.window <= opts.read_timeout),
            per_read,
        })
    }

    /// GETs `url` with `headers` and streams a 2xx body into `writer`,
    /// applying the resume rules against `writer.offset()` first. It ends
    /// early, without an error, when the writer is full (see [`Sink`]).
    pub fn fetch_blob<S: Sink + ?Sized>(
        &self,
        url: &str,
        headers: &[(String, String)],
        writer: &mut S,
        transfer: Option<&Transfer>,
    ) -> Result<FetchResponse> {
        let url = Url::parse(url).map_err(|e| CoreError::Invalid(format!("url {url:?}: {e}")))?;
        if transfer.is_some_and(Transfer::cancelled) {
            return Err(cancelled());
        }
        // The connections used from here on can be shut down by a cancel.
        let _entered = transfer.map(|t| Interrupt::enter(&t.interrupt));
        // Whatever a shut-down socket made of the answer, it was the cancel.
        let check = |result: Result<FetchResponse>| match transfer {
            Some(t) if t.cancelled() => Err(cancelled()),
            _ => result,
        };
        check(self.fetch_hops(url, headers, writer, transfer))
    }

    fn fetch_hops<S: Sink + ?Sized>(
        &self,
        mut url: Url,
        headers: &[(String, String)],
        writer: &mut S,
        transfer: Option<&Transfer>,
    ) -> Result<FetchResponse> {
        let origin = url.origin();
        let mut keep_auth = true;
        for hop in 0..=MAX_REDIRECTS {
            let response = self.get(&url, headers, keep_auth)?;
            let status = response.status().as_u16();
            if let Some(next) = redirect_target(&url, status, response.headers())? {
                if hop == MAX_REDIRECTS {
                    break;
                }
                // Once credentials would leave the origin they stay dropped.
                keep_auth &= next.origin() == origin;
                url = next;
                continue;
            }
            let headers = header_pairs(response.headers());
            let (written, body) = if (200..300).contains(&status) {
                let guard = self.stall_guard();
                (receive(response, writer, transfer, guard)?, Vec::new())
            } else {
                (0, error_body(response, self.per_read))
            };
            return Ok(FetchResponse {
                status,
                headers,
                url: url.into(),
                written,
                body,
            });
        }
        Err(CoreError::fetch(
            FetchKind::Redirect,
            false,
            format!("more than {MAX_REDIRECTS} redirects, last to {url}"),
        ))
    }

    /// A fresh guard for one body, when stall detection is on.
    fn stall_guard(&self) -> Option<StallGuard> {
        self.stall.map(|policy| {
            let mut guard = StallGuard::new(policy, Instant::now());
            guard.silence_is_stall = self.silence_is_stall;
            guard
        })
    }

    /// The agent for `url`: the TLS one for https, or for everything
    /// behind an https proxy.
    fn agent(&self, url: &Url) -> Result<&Agent> {
        let tls_proxy =
            (self.settings.proxy.as_ref()).is_some_and(|p| p.protocol() == ProxyProtocol::Https);
        if url.scheme() == "http" && !tls_proxy {
            return Ok(&self.plain);
        }
        if let Some(agent) = self.tls.get() {
            return Ok(agent);
        }
        // No TLS file was given (else it was made in new()): only the
        // system's roots, read once per process (tls::system_roots).
        let tls = tls_config(&TlsOptions {
            ca_file: None,
            client_cert: None,
            client_key: None,
            insecure: self.settings.insecure,
        })?;
        Ok(self.tls.get_or_init(|| self.settings.agent(tls)))
    }

    fn get(
        &self,
        url: &Url,
        headers: &[(String, String)],
        keep_auth: bool,
    ) -> Result<Response<Body>> {
        let mut request = self.agent(url)?.get(url.as_str());
        for (name, value) in headers {
            if keep_auth || !name.eq_ignore_ascii_case("authorization") {
                request = request.header(name.as_str(), value.as_str());
            }
        }
        request.call().map_err(|e| match e {
            ureq::Error::Http(e) => CoreError::Invalid(format!("bad request header: {e}")),
            ureq::Error::Timeout(ureq::Timeout::RecvResponse | ureq::Timeout::PerRead) => {
                CoreError::fetch(
                    FetchKind::Timeout,
                    true,
                    format!(
                        "{} sent no complete answer (status line and headers) within {} s",
                        url.host_str().unwrap_or("the server"),
                        self.per_read.as_secs_f64()
                    ),
                )
            }
            e => classify::ureq_error(e),
        })
    }
}

/// What both agents of a Fetcher are made with, besides their TLS settings.
struct AgentSettings {
    user_agent: String,
    insecure: bool,
    proxy: Option<Proxy>,
    connect_timeout: Duration,
    read_timeout: Duration,
    per_read: Duration,
}

impl AgentSettings {
    fn agent(&self, tls: TlsConfig) -> Agent {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(self.user_agent.as_str())
            .accept_encoding(AutoHeaderValue::None)
            .proxy(self.proxy.clone())
            .tls_config(tls)
            .timeout_resolve(Some(self.connect_timeout))
            .timeout_connect(Some(self.connect_timeout))
            .timeout_per_read(Some(self.per_read))
            .timeout_recv_response(Some(self.per_read))
            .timeout_per_write(Some(self.read_timeout))
            // Several layers of one image, and the chunks of a split one,
            // come from the same host at once: as many kept as transfer.py
            // opens to a host (16), and room for a few hosts.
            .max_idle_connections_per_host(16)
            .max_idle_connections(64)
            .build();
        // ureq's own connector, with the sockets' handles kept for a cancel.
        Agent::with_parts(
            config,
            InterruptibleConnector::default(),
            DefaultResolver::default(),
        )
    }
}

fn redirect_target(url: &Url, status: u16, headers: &HeaderMap) -> Result<Option<Url>> {
    if !matches!(status, 301 | 302 | 303 | 307 | 308) {
        return Ok(None);
    }
    // A redirect without Location is returned to the caller as it is.
    let Some(location) = headers.get("location") else {
        return Ok(None);
    };
    let bad = |why: String| CoreError::fetch(FetchKind::Redirect, false, why);
    let location = location
        .to_str()
        .map_err(|_| bad(format!("{status} redirect with a non-ASCII Location")))?;
    let next = url.join(location).map_err(|e| {
        bad(format!(
            "{status} redirect to bad Location {location:?}: {e}"
        ))
    })?;
    if !matches!(next.scheme(), "http" | "https") {
        return Err(bad(format!("{status} redirect to unsupported URL {next}")));
    }
    Ok(Some(next))
}

fn header_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect()
}

fn error_body(response: Response<Body>, limit: Duration) -> Vec<u8> {
    let mut body = Vec::new();
    let mut reader = response.into_body().into_reader().take(ERROR_BODY_MAX);
    let mut buf = [0u8; 4096];
    let until = Instant::now() + limit;
    // The status is the answer; a body cut short only shortens the message.
    while Instant::now() < until {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    body
}

/// Applies the resume rules, then streams the body into `writer`.
fn receive<S: Sink + ?Sized>(
    response: Response<Body>,
    writer: &mut S,
    transfer: Option<&Transfer>,
    mut guard: Option<StallGuard>,
) -> Result<u64> {
    let offset = writer.offset();
    let status = response.status().as_u16();
    let end = writer.range_end();
    if status == 206 {
        let range = response
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok());
        let found = range.and_then(content_range);
        let expected =
            |(start, last): (u64, u64)| start == offset && end.is_none_or(|e| last + 1 == e);
        if !found.is_some_and(expected) {
            let asked = end.map_or(format!("{offset}-"), |e| format!("{offset}-{}", e - 1));
            return Err(CoreError::fetch(
                FetchKind::Range,
                false,
                format!(
                    "206 with Content-Range {:?}, expected bytes {asked}",
                    range.unwrap_or("")
                ),
            ));
        }
    } else if offset > 0 || end.is_some() {
        writer.restart(status)?;
    }
    let length = content_length(&response);
    let mut reader = response.into_body().into_reader();
    let out = stream(&mut reader, writer, transfer, guard.as_mut());
    if out.as_ref().is_ok_and(|&written| Some(written) == length) {
        // The whole body was taken: ureq gives the connection back to its
        // pool only once a read has seen the end (answered at once, from
        // what it already knows), so that the next chunk or blob of the
        // host need not connect again (one round trip, more through TLS).
        let _ = reader.read(&mut [0u8; 1]);
    }
    // Also after an error: the bytes taken are in the file, for a resume
    // (or a record of chunks) to rely on.
    let flushed = writer.finish();
    let written = out?;
    flushed.map(|()| written)
}

/// The body's framing length, None when chunked. Only this one: where a
/// 206's range says less, the reader would wait for the rest at the end.
fn content_length(response: &Response<Body>) -> Option<u64> {
    let value = response.headers().get("content-length")?;
    value.to_str().ok()?.trim().parse().ok()
}

/// 'bytes <start>-<end>/<total|*>' -> (start, end), end inclusive.
fn content_range(value: &str) -> Option<(u64, u64)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (start, rest) = rest.split_once('-')?;
    let (end, _total) = rest.split_once('/')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    (end >= start).then_some((start, end))
}

/// Copies the body into `writer` through one reused ~1 MiB buffer, so that
/// hashing and write(2) work on big chunks and nothing is allocated per
/// chunk. Whatever arrived is written, also on error, so a retry can resume
/// after it. (Overlapping hashing with receiving on a second thread was
/// measured: no gain on a 2-core machine, so it is not done; a layer's
/// decoding and tar hashing move to spare cores, see offload.rs.)
fn stream<S: Sink + ?Sized>(
    reader: &mut impl Read,
    writer: &mut S,
    transfer: Option<&Transfer>,
    mut guard: Option<&mut StallGuard>,
) -> Result<u64> {
    // Counted so that layer stages move to other threads only when cores
    // would idle (offload.rs: up to one thread more than cores).
    let _busy = writer.is_layer().then(Busy::enter);
    let mut buf = vec![0u8; CHUNK];
    let mut written = 0u64;
    loop {
        // Full (a stop set meanwhile, a chunk's end): what is left of the
        // body is not read; a connection with some left is dropped.
        let room = writer.room().min(CHUNK as u64) as usize;
        if room == 0 {
            return Ok(written);
        }
        let (filled, outcome) = fill(reader, &mut buf[..room], transfer, guard.as_deref_mut());
        if filled > 0 {
            let took = writer.take(&buf[..filled])?;
            written += took as u64;
            if took < filled {
                return Ok(written);
            }
        }
        match outcome {
            Ok(true) => {}
            Ok(false) => return Ok(written),
            Err(e) => {
                return Err(match (&e, guard) {
                    // A timeout is silence for a whole window (the per-read
                    // timeout is capped at it): a stall too.
                    (CoreError::Fetch { kind, .. }, Some(g))
                        if *kind == FetchKind::Stalled
                            || (*kind == FetchKind::Timeout && g.silence_is_stall) =>
                    {
                        stalled(writer, g.policy())
                    }
                    _ => e,
                });
            }
        }
    }
}

/// "download of sha256:… stalled: under 16 KiB/s for 30 s": retryable, and
/// the retry resumes at writer.offset().
fn stalled<S: Sink + ?Sized>(writer: &S, policy: StallPolicy) -> CoreError {
    CoreError::fetch(
        FetchKind::Stalled,
        true,
        format!(
            "download of {} stalled: {} (at byte {})",
            writer.digest(),
            policy.describe(),
            writer.offset()
        ),
    )
}

/// Reads into `buf` until it is full (Ok(true)), EOF (Ok(false)), an error
/// or a cancel; returns how much was filled either way.
fn fill(
    reader: &mut impl Read,
    buf: &mut [u8],
    transfer: Option<&Transfer>,
    mut guard: Option<&mut StallGuard>,
) -> (usize, Result<bool>) {
    let mut filled = 0;
    while filled < buf.len() {
        if transfer.is_some_and(Transfer::cancelled) {
            return (filled, Err(cancelled()));
        }
        let asked = Instant::now();
        let read = reader.read(&mut buf[filled..]);
        if let Some(t) = transfer {
            let waited = asked.elapsed().as_nanos().min(u64::MAX as u128) as u64;
            t.waited_nanos.fetch_add(waited, Ordering::Relaxed);
        }
        match read {
            Ok(0) => return (filled, Ok(false)),
            Ok(n) => {
                filled += n;
                if let Some(t) = transfer {
                    t.received.fetch_add(n as u64, Ordering::Relaxed);
                }
                if guard
                    .as_deref_mut()
                    .is_some_and(|g| g.record(n as u64, Instant::now()))
                {
                    // stream() words the error: it knows the blob.
                    return (filled, Err(CoreError::fetch(FetchKind::Stalled, true, "")));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (filled, Err(classify::io_error(e))),
        }
    }
    (filled, Ok(true))
}

fn cancelled() -> CoreError {
    CoreError::fetch(FetchKind::Cancelled, false, "cancelled")
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use url::Url;

    use super::{content_range, FetchOptions, Fetcher};

    fn options(proxy: Option<&str>, ca_file: Option<&str>) -> FetchOptions {
        FetchOptions {
            user_agent: "test".into(),
            ca_file: ca_file.map(PathBuf::from),
            client_cert: None,
            client_key: None,
            insecure: false,
            proxy: proxy.map(String::from),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            stall: None,
        }
    }

    #[test]
    fn tls_agent_made_at_the_first_https_url() {
        let fetcher = Fetcher::new(&options(None, None)).unwrap();
        let http = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        // A plain-http registry's blobs: the system's roots are not read.
        assert!(std::ptr::eq(fetcher.agent(&http).unwrap(), &fetcher.plain));
        assert!(fetcher.tls.get().is_none());
        let https = Url::parse("https://registry.test/v2/").unwrap();
        let agent = fetcher.agent(&https).unwrap();
        assert!(fetcher
            .tls
            .get()
            .is_some_and(|tls| std::ptr::eq(agent, tls)));
    }

    #[test]
    fn https_proxy_takes_every_url_through_tls() {
        let fetcher = Fetcher::new(&options(Some("https://proxy.test:3128"), None)).unwrap();
        let http = Url::parse("http://127.0.0.1:5000/v2/").unwrap();
        assert!(!std::ptr::eq(fetcher.agent(&http).unwrap(), &fetcher.plain));
    }

    #[test]
    fn tls_files_are_read_when_made() {
        assert!(Fetcher::new(&options(None, Some("/nonexistent/ca.pem"))).is_err());
    }

    #[test]
    fn content_range_parsed() {
        assert_eq!(content_range("bytes 100-199/200"), Some((100, 199)));
        assert_eq!(content_range("bytes 0-0/*"), Some((0, 0)));
        assert_eq!(content_range(" bytes  5-9/10 "), Some((5, 9)));
        assert_eq!(content_range("bytes 9-5/10"), None);
        assert_eq!(content_range("bytes */10"), None);
        assert_eq!(content_range("items 0-1/2"), None);
        assert_eq!(content_range(""), None);
    }
}
