//! Turns ureq/io errors into a FetchError kind and whether a retry can help.

use std::io;

use crate::error::{CoreError, FetchKind};

pub fn ureq_error(err: ureq::Error) -> CoreError {
    use ureq::Error as E;
    let err = match err {
        E::Io(e) => return io_error(e),
        other => other,
    };
    let (kind, retryable) = match &err {
        E::Timeout(_) => (FetchKind::Timeout, true),
        E::HostNotFound => (FetchKind::Dns, true),
        E::ConnectionFailed | E::ConnectProxyFailed(_) => (FetchKind::Connect, true),
        // A certificate problem does not go away by asking again.
        E::Tls(_) | E::Pem(_) | E::Rustls(_) | E::TlsRequired => (FetchKind::Tls, false),
        E::TooManyRedirects | E::RedirectFailed => (FetchKind::Redirect, false),
        // Garbled framing mid-body (bad chunk) is usually a broken connection.
        E::Protocol(_) | E::BodyStalled => (FetchKind::Protocol, true),
        E::BadUri(_) | E::Http(_) | E::LargeResponseHeader(..) | E::InvalidProxyUrl => {
            (FetchKind::Protocol, false)
        }
        _ => (FetchKind::Io, true),
    };
    CoreError::fetch(kind, retryable, err.to_string())
}

/// Body reads and TLS handshakes surface as io::Error, which may wrap a ureq
/// error (unwrapped by ureq's own From) or a rustls one.
pub fn io_error(err: io::Error) -> CoreError {
    let err = match ureq::Error::from(err) {
        ureq::Error::Io(e) => e,
        other => return ureq_error(other),
    };
    if let Some(inner) = err.get_ref().filter(|i| i.is::<rustls::Error>()) {
        return CoreError::fetch(FetchKind::Tls, false, format!("tls: {inner}"));
    }
    use io::ErrorKind as K;
    let kind = match err.kind() {
        K::ConnectionRefused | K::AddrNotAvailable | K::NetworkUnreachable | K::HostUnreachable => {
            FetchKind::Connect
        }
        K::TimedOut | K::WouldBlock => FetchKind::Timeout,
        // getaddrinfo failures come as an uncategorised io::Error.
        _ if err.to_string().contains("failed to lookup address") => FetchKind::Dns,
        _ => FetchKind::Io,
    };
    let message = match err.kind() {
        K::UnexpectedEof => format!("connection closed before the body was complete ({err})"),
        _ => format!("io: {err}"),
    };
    CoreError::fetch(kind, true, message)
}
