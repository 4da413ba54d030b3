mod common;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::{head, respond, Server};
use imgpull_core::{
    sha256_bytes, BlobWriter, ChunkWriter, CoreError, FetchKind, FetchOptions, Fetcher,
    StallPolicy, Transfer,
};

fn fetcher(read_timeout: Duration) -> Fetcher {
    fetcher_with(read_timeout, None)
}

fn fetcher_with(read_timeout: Duration, stall: Option<StallPolicy>) -> Fetcher {
    Fetcher::new(&FetchOptions {
        user_agent: "imgpull-test/1".into(),
        ca_file: None,
        client_cert: None,
        client_key: None,
        insecure: false,
        proxy: None,
        connect_timeout: Duration::from_secs(5),
        read_timeout,
        stall,
    })
    .unwrap()
}

fn default_fetcher() -> Fetcher {
    fetcher(Duration::from_secs(10))
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 253) as u8).collect()
}

struct Blob {
    _dir: tempfile::TempDir,
    partial: PathBuf,
    dest: PathBuf,
    writer: BlobWriter,
}

fn writer_for(content: &[u8]) -> Blob {
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("partial");
    let dest = dir.path().join("blob");
    let digest = sha256_bytes(content).to_string();
    let writer = BlobWriter::open(&partial, &digest, Some(content.len() as u64)).unwrap();
    Blob {
        _dir: dir,
        partial,
        dest,
        writer,
    }
}

fn no_headers() -> Vec<(String, String)> {
    Vec::new()
}

fn fetch_kind(err: CoreError) -> (FetchKind, bool) {
    match err {
        CoreError::Fetch {
            kind, retryable, ..
        } => (kind, retryable),
        other => panic!("expected a fetch error, got {other:?}"),
    }
}

#[test]
fn ok_200_streams_the_body() {
    let body = Arc::new(data(3 << 20));
    let b = body.clone();
    let server = Server::start(move |_, s| respond(s, "200 OK", &[("X-Test", "yes")], &b));
    let mut blob = writer_for(&body);
    let transfer = Transfer::new();
    let res = default_fetcher()
        .fetch_blob(
            &server.url("/blob"),
            &no_headers(),
            &mut blob.writer,
            Some(&transfer),
        )
        .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.written, body.len() as u64);
    assert_eq!(transfer.received(), body.len() as u64);
    assert!(res.body.is_empty());
    assert!(res.headers.contains(&("x-test".into(), "yes".into())));
    assert_eq!(res.url, server.url("/blob"));
    // No compression is asked for: blob bytes must arrive as stored.
    let req = &server.requests()[0];
    assert!(!req.headers.contains_key("accept-encoding"));
    assert_eq!(req.headers["user-agent"], "imgpull-test/1");
    blob.writer.commit(&blob.dest).unwrap();
    assert_eq!(std::fs::read(&blob.dest).unwrap(), *body);
}

#[test]
fn resume_with_206() {
    let body = Arc::new(data(100_000));
    let b = body.clone();
    let server = Server::start(move |req, s| {
        assert_eq!(req.headers["range"], "bytes=40000-");
        let range = format!("bytes 40000-99999/{}", b.len());
        respond(
            s,
            "206 Partial Content",
            &[("Content-Range", &range)],
            &b[40_000..],
        );
    });
    let mut blob = writer_for(&body);
    blob.writer.write(&body[..40_000]).unwrap();
    let headers = vec![("Range".to_owned(), "bytes=40000-".to_owned())];
    let res = default_fetcher()
        .fetch_blob(&server.url("/b"), &headers, &mut blob.writer, None)
        .unwrap();
    assert_eq!((res.status, res.written), (206, 60_000));
    blob.writer.commit(&blob.dest).unwrap();
}

#[test]
fn range_ignored_200_truncates_and_starts_over() {
    let body = Arc::new(data(50_000));
    let b = body.clone();
    let server = Server::start(move |_, s| respond(s, "200 OK", &[], &b));
    let mut blob = writer_for(&body);
    blob.writer.write(b"stale bytes that must go").unwrap();
    let headers = vec![("Range".to_owned(), "bytes=24-".to_owned())];
    let res = default_fetcher()
        .fetch_blob(&server.url("/b"), &headers, &mut blob.writer, None)
        .unwrap();
    assert_eq!((res.status, res.written), (200, 50_000));
    assert_eq!(blob.writer.offset(), 50_000);
    blob.writer.commit(&blob.dest).unwrap();
}

#[test]
fn wrong_content_range_is_a_range_error_and_writes_nothing() {
    let body = Arc::new(data(1000));
    let b = body.clone();
    let server = Server::start(move |_, s| {
        respond(
            s,
            "206 Partial Content",
            &[("Content-Range", "bytes 0-999/1000")],
            &b,
        )
    });
    let mut blob = writer_for(&body);
    blob.writer.write(&body[..500]).unwrap();
    let err = default_fetcher()
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    assert_eq!(fetch_kind(err), (FetchKind::Range, false));
    assert_eq!(blob.writer.offset(), 500);
}

#[test]
fn short_body_is_retryable_io_and_keeps_the_bytes() {
    let body = Arc::new(data(200_000));
    let b = body.clone();
    let server = Server::start(move |_, s| {
        head(s, "200 OK", &[], Some(b.len()));
        let _ = s.write_all(&b[..120_000]);
        // Dropping the stream closes it early.
    });
    let mut blob = writer_for(&body);
    let err = default_fetcher()
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    assert_eq!(fetch_kind(err), (FetchKind::Io, true));
    assert_eq!(blob.writer.offset(), 120_000);
    blob.writer.close().unwrap();
    assert_eq!(std::fs::metadata(&blob.partial).unwrap().len(), 120_000);
}

#[test]
fn redirect_to_another_origin_drops_authorization() {
    let body = Arc::new(data(1000));
    let b = body.clone();
    let storage = Server::start(move |_, s| respond(s, "200 OK", &[], &b));
    let target = storage.url("/signed?x=1");
    let registry = Server::start(move |req, s| match req.path.as_str() {
        "/v2/blob" => respond(
            s,
            "307 Temporary Redirect",
            &[("Location", "/v2/moved")],
            b"",
        ),
        _ => respond(s, "302 Found", &[("Location", &target)], b""),
    });
    let mut blob = writer_for(&body);
    let headers = vec![
        ("Authorization".to_owned(), "Bearer secret".to_owned()),
        ("Accept".to_owned(), "*/*".to_owned()),
    ];
    let res = default_fetcher()
        .fetch_blob(&registry.url("/v2/blob"), &headers, &mut blob.writer, None)
        .unwrap();
    assert_eq!(res.status, 200);
    assert_eq!(res.url, storage.url("/signed?x=1"));
    // Same origin: kept on the relative hop.
    let hops = registry.requests();
    assert_eq!(hops.len(), 2);
    assert!(hops
        .iter()
        .all(|r| r.headers["authorization"] == "Bearer secret"));
    let last = &storage.requests()[0];
    assert!(!last.headers.contains_key("authorization"));
    assert_eq!(last.headers["accept"], "*/*");
    blob.writer.commit(&blob.dest).unwrap();
}

#[test]
fn endless_redirects_are_a_redirect_error() {
    let server = Server::start(|_, s| respond(s, "302 Found", &[("Location", "/again")], b""));
    let mut blob = writer_for(b"x");
    let err = default_fetcher()
        .fetch_blob(&server.url("/"), &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    assert_eq!(fetch_kind(err), (FetchKind::Redirect, false));
    assert_eq!(server.requests().len(), 11);
}

#[test]
fn not_found_returns_status_and_body() {
    let json = br#"{"errors":[{"code":"BLOB_UNKNOWN"}]}"#;
    let server = Server::start(move |_, s| respond(s, "404 Not Found", &[], json));
    let mut blob = writer_for(b"x");
    let res = default_fetcher()
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap();
    assert_eq!((res.status, res.written), (404, 0));
    assert_eq!(res.body, json);
    assert_eq!(blob.writer.offset(), 0);
}

#[test]
fn error_body_is_capped_at_64k() {
    let server = Server::start(|_, s| respond(s, "500 Oops", &[], &vec![b'e'; 100_000]));
    let mut blob = writer_for(b"x");
    let res = default_fetcher()
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap();
    assert_eq!((res.status, res.body.len()), (500, 65_536));
}

#[test]
fn cancel_stops_a_running_fetch_and_keeps_the_bytes() {
    let server = Server::start(|_, s| {
        head(s, "200 OK", &[], Some(100 << 20));
        // Trickle until the client goes away.
        while s.write_all(&[7u8; 4096]).is_ok() {
            thread::sleep(Duration::from_millis(5));
        }
    });
    let content = vec![7u8; 100 << 20];
    let mut blob = writer_for(&content);
    let transfer = Arc::new(Transfer::new());
    let t = transfer.clone();
    let canceller = thread::spawn(move || {
        while t.received() < 20_000 {
            thread::sleep(Duration::from_millis(5));
        }
        t.cancel();
    });
    let err = default_fetcher()
        .fetch_blob(
            &server.url("/b"),
            &no_headers(),
            &mut blob.writer,
            Some(&transfer),
        )
        .unwrap_err();
    canceller.join().unwrap();
    assert_eq!(fetch_kind(err), (FetchKind::Cancelled, false));
    assert!(transfer.cancelled());
    assert_eq!(blob.writer.offset(), transfer.received());
}

/// A server that sends `head` (maybe nothing) and then stays silent until
/// the client hangs up; the receiver gets the moment it saw the hangup.
fn silent_server(head_len: Option<usize>) -> (Server, mpsc::Receiver<Instant>) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let server = Server::start(move |_, s| {
        if let Some(len) = head_len {
            head(s, "200 OK", &[], Some(len));
            let _ = s.write_all(&[0; 10]);
        }
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        let mut buf = [0u8; 64];
        // EOF (or a reset) is the client hanging up; a timeout is not.
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
        let _ = tx.lock().unwrap().send(Instant::now());
    });
    (server, rx)
}

/// A fetch blocked on a silent server (its read timeout 30 s) ends as soon
/// as it is cancelled, and its connection with it.
fn assert_cancel_interrupts(head_len: Option<usize>) {
    let (server, hangups) = silent_server(head_len);
    let mut blob = writer_for(&[0; 1000]);
    let transfer = Arc::new(Transfer::new());
    let t = transfer.clone();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(300));
        t.cancel();
        Instant::now()
    });
    let err = fetcher(Duration::from_secs(30))
        .fetch_blob(
            &server.url("/b"),
            &no_headers(),
            &mut blob.writer,
            Some(&transfer),
        )
        .unwrap_err();
    let ended = Instant::now();
    let cancelled_at = canceller.join().unwrap();
    assert_eq!(fetch_kind(err), (FetchKind::Cancelled, false));
    let late = ended.duration_since(cancelled_at);
    assert!(
        late < Duration::from_secs(2),
        "ended {late:?} after the cancel"
    );
    let hangup = hangups.recv_timeout(Duration::from_secs(5)).unwrap();
    let late = hangup.saturating_duration_since(cancelled_at);
    assert!(
        late < Duration::from_secs(2),
        "hung up {late:?} after the cancel"
    );
    assert_eq!(
        blob.writer.offset(),
        if head_len.is_some() { 10 } else { 0 }
    );
}

#[test]
fn cancel_interrupts_a_silent_body() {
    assert_cancel_interrupts(Some(1000));
}

#[test]
fn cancel_interrupts_a_wait_for_the_headers() {
    assert_cancel_interrupts(None);
}

/// A keep-alive server on loopback: the requests of each connection in
/// turn, `answer(head, n)` giving the bytes sent for the nth request of its
/// connection (`head` lower-cased). Returns its URL and how many
/// connections it got.
fn keep_alive_server(
    answer: impl Fn(&str, usize) -> Vec<u8> + Send + Sync + 'static,
) -> (String, Arc<Mutex<usize>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(0));
    let counted = connections.clone();
    let answer = Arc::new(answer);
    thread::spawn(move || {
        for stream in listener.incoming().take(8) {
            let Ok(mut stream) = stream else { return };
            *counted.lock().unwrap() += 1;
            let answer = answer.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                for n in 0.. {
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(k) => got.extend_from_slice(&buf[..k]),
                        }
                    }
                    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    if stream.write_all(&answer(&head, n)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/b"), connections)
}

/// 200s with `body`: the first at once, the next ones after `delay`.
fn delayed_server(body: &'static [u8], delay: Duration) -> (String, Arc<Mutex<usize>>) {
    keep_alive_server(move |_, n| {
        if n > 0 {
            thread::sleep(delay);
        }
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
        [head.as_bytes(), body].concat()
    })
}

/// A finished fetch forgets its connection: cancelling its Transfer later
/// does not cut the pooled connection another fetch is using.
#[test]
fn a_finished_transfer_cancelled_leaves_the_pooled_connection_alone() {
    const BODY: &[u8] = b"0123456789";
    let (url, connections) = delayed_server(BODY, Duration::from_millis(600));
    let fetcher = default_fetcher();
    let first = Arc::new(Transfer::new());
    let mut blob = writer_for(BODY);
    fetcher
        .fetch_blob(&url, &no_headers(), &mut blob.writer, Some(&first))
        .unwrap();
    let stale = first.clone();
    let canceller = thread::spawn(move || {
        thread::sleep(Duration::from_millis(200));
        stale.cancel();
    });
    let second = Transfer::new();
    let mut blob = writer_for(BODY);
    let res = fetcher
        .fetch_blob(&url, &no_headers(), &mut blob.writer, Some(&second))
        .unwrap();
    canceller.join().unwrap();
    assert_eq!((res.status, res.written), (200, BODY.len() as u64));
    assert_eq!(
        *connections.lock().unwrap(),
        1,
        "the second fetch reused the connection"
    );
}

#[test]
fn stalled_body_is_a_timeout() {
    let server = Server::start(|_, s| {
        head(s, "200 OK", &[], Some(1000));
        let _ = s.write_all(&[0; 10]);
        thread::sleep(Duration::from_secs(3));
    });
    let mut blob = writer_for(&[0; 1000]);
    let err = fetcher(Duration::from_millis(300))
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    assert_eq!(fetch_kind(err), (FetchKind::Timeout, true));
    assert_eq!(blob.writer.offset(), 10);
}

#[test]
fn oversized_body_hits_the_size_guard() {
    let server = Server::start(|_, s| respond(s, "200 OK", &[], &[1; 5000]));
    let mut blob = writer_for(&[1; 1000]);
    match default_fetcher().fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None) {
        Err(CoreError::SizeMismatch { expected: 1000, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn refused_connection_is_retryable_connect() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut blob = writer_for(b"x");
    let url = format!("http://127.0.0.1:{port}/b");
    let err = default_fetcher()
        .fetch_blob(&url, &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    assert_eq!(fetch_kind(err), (FetchKind::Connect, true));
}

#[test]
fn tls_to_a_plain_http_server_is_a_fetch_error() {
    let server = Server::start(|_, s| respond(s, "200 OK", &[], b"not tls"));
    let mut blob = writer_for(b"x");
    let url = format!("https://{}/b", server.addr);
    let err = default_fetcher()
        .fetch_blob(&url, &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    let (kind, _) = fetch_kind(err);
    assert!(
        matches!(kind, FetchKind::Tls | FetchKind::Io | FetchKind::Protocol),
        "{kind:?}"
    );
}

#[test]
fn bad_settings_are_refused() {
    let mut opts = FetchOptions {
        user_agent: "x".into(),
        ca_file: Some("/nonexistent/ca.pem".into()),
        client_cert: None,
        client_key: None,
        insecure: false,
        proxy: None,
        connect_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        stall: None,
    };
    assert!(matches!(Fetcher::new(&opts), Err(CoreError::File { .. })));
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "no pem here").unwrap();
    opts.ca_file = Some(empty);
    assert!(matches!(Fetcher::new(&opts), Err(CoreError::Invalid(_))));
    opts.ca_file = None;
    opts.proxy = Some("::not a url::".into());
    assert!(matches!(Fetcher::new(&opts), Err(CoreError::Invalid(_))));
}

#[test]
fn local_write_failure_is_a_file_error_with_its_errno() {
    // /dev/full fails every write with ENOSPC.
    if !std::path::Path::new("/dev/full").exists() {
        return;
    }
    let body = Arc::new(data(3 << 20));
    let b = body.clone();
    let server = Server::start(move |_, s| respond(s, "200 OK", &[], &b));
    let digest = sha256_bytes(&body).to_string();
    let mut writer = BlobWriter::open("/dev/full", &digest, None).unwrap();
    let err = default_fetcher()
        .fetch_blob(&server.url("/b"), &no_headers(), &mut writer, None)
        .unwrap_err();
    // A File error (an OSError in Python, errno and path kept), not a fetch
    // error: the network is not at fault and a retry would fail the same way.
    match err {
        CoreError::File { path, source, .. } => {
            assert_eq!(path, std::path::Path::new("/dev/full"));
            assert_eq!(source.raw_os_error(), Some(libc_enospc()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_cancelled_transfer_sends_no_request() {
    let server = Server::start(|_, s| respond(s, "200 OK", &[], b"x"));
    let mut blob = writer_for(b"x");
    let transfer = Transfer::new();
    transfer.cancel();
    let err = default_fetcher()
        .fetch_blob(
            &server.url("/b"),
            &no_headers(),
            &mut blob.writer,
            Some(&transfer),
        )
        .unwrap_err();
    assert_eq!(fetch_kind(err), (FetchKind::Cancelled, false));
    assert!(server.requests().is_empty());
}

fn stall_fetcher(min_rate: u64, window: Duration) -> Fetcher {
    fetcher_with(
        Duration::from_secs(10),
        Some(StallPolicy { min_rate, window }),
    )
}

fn stall_message(err: CoreError) -> String {
    let text = err.to_string();
    assert_eq!(fetch_kind(err), (FetchKind::Stalled, true));
    text
}

#[test]
fn a_trickle_is_a_stall_and_keeps_the_bytes() {
    // 20 bytes every 100 ms = 200 B/s, under a 1 KiB/s floor; the read
    // timeout (10 s) alone would wait for ever.
    let server = Server::start(|_, s| {
        head(s, "200 OK", &[], Some(100_000));
        let _ = s.write_all(&[7; 5000]);
        for _ in 0..100 {
            if s.write_all(&[7; 20]).is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    });
    let mut blob = writer_for(&[7; 100_000]);
    let err = stall_fetcher(1024, Duration::from_millis(800))
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    let digest = blob.writer.digest().to_string();
    assert_eq!(
        stall_message(err),
        format!(
            "fetch failed (stalled): download of {digest} stalled: under 1 KiB/s for 0.8 s \
             (at byte {})",
            blob.writer.offset()
        )
    );
    assert!(blob.writer.offset() >= 5000, "{}", blob.writer.offset());
}

#[test]
fn silence_is_a_stall_within_the_window() {
    let server = Server::start(|_, s| {
        head(s, "200 OK", &[], Some(1000));
        let _ = s.write_all(&[0; 10]);
        thread::sleep(Duration::from_secs(5));
    });
    let mut blob = writer_for(&[0; 1000]);
    let err = stall_fetcher(1024, Duration::from_millis(500))
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap_err();
    stall_message(err);
    assert_eq!(blob.writer.offset(), 10);
}

#[test]
fn a_fast_body_is_not_a_stall() {
    let body = Arc::new(data(2 << 20));
    let b = body.clone();
    let server = Server::start(move |_, s| respond(s, "200 OK", &[], &b));
    let mut blob = writer_for(&body);
    let res = stall_fetcher(1024, Duration::from_millis(300))
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap();
    assert_eq!(res.written, body.len() as u64);
    blob.writer.commit(&blob.dest).unwrap();
}

/// ENOSPC on Linux (no libc dependency in these tests).
fn libc_enospc() -> i32 {
    28
}

// Chunks: one range of a blob on a connection of its own ---------------------

/// The blob's partial file with its first `front` bytes written by its
/// writer (the rest to come as chunks).
fn split_blob(content: &[u8], front: usize) -> Blob {
    let mut blob = writer_for(content);
    blob.writer.write(&content[..front]).unwrap();
    blob.writer.flush().unwrap();
    blob
}

fn chunk_server(body: Arc<Vec<u8>>, answer: &'static str) -> Server {
    Server::start(move |req, s| {
        let range = req.headers["range"].trim_start_matches("bytes=").to_owned();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let total = body.len();
        match answer {
            "206" => respond(
                s,
                "206 Partial Content",
                &[("Content-Range", &format!("bytes {a}-{b}/{total}"))],
                &body[a..=b],
            ),
            "200" => respond(s, "200 OK", &[], &body),
            "shifted" => respond(
                s,
                "206 Partial Content",
                &[("Content-Range", &format!("bytes {a}-{}/{total}", b + 1))],
                &body[a..=b],
            ),
            _ => unreachable!(),
        }
    })
}

#[test]
fn chunks_land_in_place_and_the_writer_absorbs_them_in_order() {
    let body = Arc::new(data(300_000));
    let server = chunk_server(body.clone(), "206");
    let mut blob = split_blob(&body, 100_000);
    let digest = sha256_bytes(&body).to_string();
    // The later chunk first: bytes land ahead of the writer.
    for (a, b) in [(200_000u64, 300_000u64), (100_000, 200_000)] {
        let mut chunk = ChunkWriter::open(&blob.partial, &digest, a, b).unwrap();
        let headers = vec![("Range".to_owned(), format!("bytes={a}-{}", b - 1))];
        let res = default_fetcher()
            .fetch_blob(&server.url("/b"), &headers, &mut chunk, None)
            .unwrap();
        assert_eq!((res.status, res.written, chunk.offset()), (206, b - a, b));
    }
    assert_eq!(blob.writer.offset(), 100_000);
    blob.writer.absorb(300_000).unwrap();
    blob.writer.commit(&blob.dest).unwrap();
    assert_eq!(std::fs::read(&blob.dest).unwrap(), *body);
}

#[test]
fn a_chunk_answered_200_or_with_another_range_is_a_range_error_writing_nothing() {
    let body = Arc::new(data(300_000));
    let digest = sha256_bytes(&body).to_string();
    for answer in ["200", "shifted"] {
        let server = chunk_server(body.clone(), answer);
        let blob = split_blob(&body, 100_000);
        let mut chunk = ChunkWriter::open(&blob.partial, &digest, 100_000, 200_000).unwrap();
        let headers = vec![("Range".to_owned(), "bytes=100000-199999".to_owned())];
        let err = default_fetcher()
            .fetch_blob(&server.url("/b"), &headers, &mut chunk, None)
            .unwrap_err();
        assert_eq!(fetch_kind(err), (FetchKind::Range, false), "{answer}");
        assert_eq!(chunk.offset(), 100_000);
        assert_eq!(std::fs::metadata(&blob.partial).unwrap().len(), 100_000);
    }
}

#[test]
fn a_stop_set_while_streaming_ends_the_fetch_exactly_there() {
    let body = Arc::new(data(3_000_000));
    let b = body.clone();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let go_rx = Mutex::new(go_rx);
    let server = Server::start(move |_, s| {
        head(s, "200 OK", &[], Some(b.len()));
        let _ = s.write_all(&b[..1_000_000]);
        // The rest once the stop is set.
        let _ = go_rx.lock().unwrap().recv_timeout(Duration::from_secs(5));
        let _ = s.write_all(&b[1_000_000..]);
    });
    let mut blob = writer_for(&body);
    let stop = blob.writer.stop();
    let generation = stop.generation();
    let setter = thread::spawn(move || {
        // A stop below what was already taken becomes that point.
        thread::sleep(Duration::from_millis(200));
        let at = stop.stop_at(10, generation).unwrap();
        go_tx.send(()).unwrap();
        at
    });
    let res = default_fetcher()
        .fetch_blob(&server.url("/b"), &no_headers(), &mut blob.writer, None)
        .unwrap();
    let at = setter.join().unwrap();
    assert_eq!(res.written, at);
    assert_eq!(blob.writer.offset(), at);
    assert!((10..=1_000_000).contains(&at), "{at}");
    assert_eq!(std::fs::metadata(&blob.partial).unwrap().len(), at);
}

/// 206s for the Range each request asks; `extra`: bytes its Content-Length
/// promises beyond the range, never sent.
fn range_server(body: Arc<Vec<u8>>, extra: usize) -> (String, Arc<Mutex<usize>>) {
    keep_alive_server(move |head, _| {
        let range = head.split("range: bytes=").nth(1).unwrap();
        let range = range.split("\r\n").next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
        let head = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {a}-{b}/{}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len(),
            b + 1 - a + extra
        );
        [head.as_bytes(), &body[a..=b]].concat()
    })
}

fn fetch_chunk(fetcher: &Fetcher, url: &str, body: &[u8], blob: &Blob, (a, b): (u64, u64)) -> u64 {
    let digest = sha256_bytes(body).to_string();
    let mut chunk = ChunkWriter::open(&blob.partial, &digest, a, b).unwrap();
    let headers = vec![("Range".to_owned(), format!("bytes={a}-{}", b - 1))];
    let res = fetcher.fetch_blob(url, &headers, &mut chunk, None).unwrap();
    assert_eq!((res.status, chunk.offset()), (206, b));
    res.written
}

/// A chunk read to its end gives its connection back to the pool: the
/// next chunk of the blob does not connect again (a round trip saved).
#[test]
fn chunks_read_to_their_end_share_one_connection() {
    let body = Arc::new(data(3_000_000));
    let (url, connections) = range_server(body.clone(), 0);
    let blob = split_blob(&body, 1_000_000);
    let fetcher = default_fetcher();
    for span in [(1_000_000, 2_000_000), (2_000_000, 3_000_000)] {
        assert_eq!(fetch_chunk(&fetcher, &url, &body, &blob, span), 1_000_000);
    }
    assert_eq!(*connections.lock().unwrap(), 1);
}

/// A 206 whose Content-Length promises more than its range: the chunk ends
/// at its range at once (its connection dropped), not after a wait for
/// bytes the server never sends.
#[test]
fn a_206_promising_more_than_its_range_is_not_waited_for() {
    let body = Arc::new(data(300_000));
    let (url, _) = range_server(body.clone(), 1000);
    let blob = split_blob(&body, 100_000);
    let started = Instant::now();
    let written = fetch_chunk(
        &fetcher(Duration::from_secs(20)),
        &url,
        &body,
        &blob,
        (100_000, 200_000),
    );
    assert_eq!(written, 100_000);
    // Waiting would last the read timeout (20 s).
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
