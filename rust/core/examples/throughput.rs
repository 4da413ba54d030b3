//! Quick throughput figures, outside the test suite:
//!
//!   cargo run --release -p imgpull-core --example throughput -- hash [MiB]
//!   cargo run --release -p imgpull-core --example throughput -- fetch URL [DIR]
//!   cargo run --release -p imgpull-core --example throughput -- serve FILE PORT
//!
//! `fetch` streams URL into a BlobWriter in DIR (default: a temp dir) and
//! reports MB/s; the digest is taken from a first pass so commit verifies.
//! `serve` answers every GET with FILE, sent with sendfile(2) (std::io::copy
//! does that for File -> TcpStream), so the server is not what is measured.

use std::time::{Duration, Instant};

use imgpull_core::{sha256_bytes, BlobWriter, FetchOptions, Fetcher};

fn rate(bytes: u64, took: Duration) -> String {
    format!("{:.0} MB/s", bytes as f64 / took.as_secs_f64() / 1e6)
}

fn hash(mib: usize) {
    let data = vec![0x5au8; mib << 20];
    sha256_bytes(&data[..1 << 20]); // warm up
    let start = Instant::now();
    let digest = sha256_bytes(&data);
    println!(
        "sha256 {mib} MiB: {} ({digest})",
        rate(data.len() as u64, start.elapsed())
    );
}

fn fetch(url: &str, dir: &std::path::Path) {
    let fetcher = Fetcher::new(&FetchOptions {
        user_agent: "imgpull-throughput".into(),
        ca_file: None,
        client_cert: None,
        client_key: None,
        insecure: false,
        proxy: None,
        connect_timeout: Duration::from_secs(10),
        read_timeout: Duration::from_secs(30),
        stall: None,
    })
    .unwrap();
    // Pass 1 learns the digest (any digest will do: nothing is committed).
    let partial = dir.join("partial");
    let zero = "sha256:".to_owned() + &"0".repeat(64);
    let mut writer = BlobWriter::open(&partial, &zero, None).unwrap();
    let start = Instant::now();
    let res = fetcher.fetch_blob(url, &[], &mut writer, None).unwrap();
    let took = start.elapsed();
    println!(
        "fetch {} bytes (status {}): {}",
        res.written,
        res.status,
        rate(res.written, took)
    );
    writer.close().unwrap();
    let digest = imgpull_core::sha256_file(&partial).unwrap().to_string();
    std::fs::remove_file(&partial).unwrap();

    // Pass 2: fetch + verify + fsync + rename, as a pull does.
    let mut writer = BlobWriter::open(&partial, &digest, Some(res.written)).unwrap();
    let start = Instant::now();
    fetcher.fetch_blob(url, &[], &mut writer, None).unwrap();
    writer.commit(&dir.join("blob")).unwrap();
    println!("fetch+commit: {}", rate(res.written, start.elapsed()));
    std::fs::remove_file(dir.join("blob")).unwrap();
}

fn serve(file: &str, port: u16) {
    use std::io::{BufRead, BufReader, Write};
    let len = std::fs::metadata(file).unwrap().len();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    println!("serving {file} ({len} bytes) on http://127.0.0.1:{port}/");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let file = file.to_owned();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            let mut f = std::fs::File::open(&file).unwrap();
            let _ = stream.write_all(head.as_bytes());
            let _ = std::io::copy(&mut f, &mut stream);
        });
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hash") => hash(args.get(1).map_or(1024, |s| s.parse().unwrap())),
        Some("fetch") if args.len() >= 2 => {
            let tmp =
                std::env::temp_dir().join(format!("imgpull-throughput-{}", std::process::id()));
            let dir = args.get(2).map_or(tmp, Into::into);
            std::fs::create_dir_all(&dir).unwrap();
            fetch(&args[1], &dir);
        }
        Some("serve") if args.len() == 3 => serve(&args[1], args[2].parse().unwrap()),
        _ => eprintln!("usage: throughput hash [MiB] | fetch URL [DIR] | serve FILE PORT"),
    }
}
