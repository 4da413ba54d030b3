//! A tiny HTTP/1.1 server on loopback for fetch tests: one thread per
//! connection, one request per connection, raw responses written by the test.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;

#[derive(Debug, Clone)]
pub struct Request {
    pub path: String,
    /// Lower-cased names.
    pub headers: HashMap<String, String>,
}

type Handler = dyn Fn(&Request, &mut TcpStream) + Send + Sync;

pub struct Server {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    pub fn start(handler: impl Fn(&Request, &mut TcpStream) + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let handler: Arc<Handler> = Arc::new(handler);
        let seen = requests.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let (handler, seen) = (handler.clone(), seen.clone());
                thread::spawn(move || {
                    if let Some(req) = read_request(&mut stream) {
                        seen.lock().unwrap().push(req.clone());
                        handler(&req, &mut stream);
                    }
                });
            }
        });
        Server { addr, requests }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_owned();
    let mut headers = HashMap::new();
    loop {
        line.clear();
        reader.read_line(&mut line).ok()?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    Some(Request { path, headers })
}

/// Writes a complete response with Content-Length and closes.
pub fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    head(stream, status, headers, Some(body.len()));
    let _ = stream.write_all(body);
}

/// Writes status line and headers (Content-Length if given; always
/// Connection: close so every request gets its own connection).
pub fn head(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], len: Option<usize>) {
    let mut out = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
    if let Some(len) = len {
        out += &format!("Content-Length: {len}\r\n");
    }
    for (k, v) in headers {
        out += &format!("{k}: {v}\r\n");
    }
    out += "\r\n";
    let _ = stream.write_all(out.as_bytes());
}
