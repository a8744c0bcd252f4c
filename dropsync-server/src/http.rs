//! `--http ADDR`: a small HTTP/1.1 server on its own threads for `/metrics`
//! (Prometheus text), `/healthz` and the status page `/`.
//!
//! Written on `std::net` rather than with `tiny_http`: tiny_http starts a
//! new thread for every connection while its pool is busy (no upper bound)
//! and sets no socket timeouts, so a scraper that connects and never sends,
//! or never reads, holds a thread for ever. Here one accept thread hands
//! connections to [`WORKERS`] threads through a queue of [`BACKLOG`]; when
//! that is full the connection gets a 503 at once. Every read and write has
//! a deadline ([`REQUEST_TIMEOUT`] for the whole request, as much for the
//! whole response), and a request head is at most [`MAX_HEAD`] bytes. Only
//! GET and HEAD, one request per connection (`Connection: close`). Nothing
//! here takes a lock that a session holds for long: the pages are rendered
//! from atomics and short snapshots (`views`).

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::server::Server;
use crate::{exposition, spawn_named, status_page};

/// Threads answering requests: two, so a slow scraper leaves one for the
/// next; rendering takes well under a millisecond for a small server.
pub const WORKERS: usize = 2;

/// Connections accepted and waiting for a worker; one more gets a 503.
pub const BACKLOG: usize = 16;

/// The longest a client may take to send its request, and again to read the
/// response, before the connection is closed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head read (request line and headers); beyond it, 431.
pub const MAX_HEAD: usize = 8 * 1024;

/// How long the accept thread waits after an accept error (out of
/// descriptors, above all) before it tries again.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The longest the accept thread spends telling a client it is busy.
const BUSY_WRITE_TIMEOUT: Duration = Duration::from_millis(200);

/// Bytes written per step of a response, so that its deadline is checked
/// between steps.
const WRITE_STEP: usize = 16 * 1024;

/// Starts the accept thread and the workers on `listener`.
pub fn start(server: Arc<Server>, listener: TcpListener) -> io::Result<()> {
    let (tx, rx) = mpsc::sync_channel::<TcpStream>(BACKLOG);
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WORKERS {
        let (server, rx) = (server.clone(), rx.clone());
        spawn_named("http", move || worker(&server, &rx))?;
    }
    spawn_named("http-accept", move || accept(&listener, &tx))?;
    Ok(())
}

fn accept(listener: &TcpListener, tx: &SyncSender<TcpStream>) {
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(mut stream)) => {
                    let _ = stream.set_write_timeout(Some(BUSY_WRITE_TIMEOUT));
                    let _ = stream.write_all(&response(503, "text/plain", b"busy\n", false));
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e) => {
                log::debug!("http: accept failed: {e}");
                std::thread::sleep(ACCEPT_PAUSE);
            }
        }
    }
}

fn worker(server: &Server, rx: &Mutex<Receiver<TcpStream>>) {
    loop {
        // The lock is held only while this worker waits for a connection,
        // so the workers take turns at the queue.
        let next = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(stream) = next else { return };
        if let Err(e) = serve(server, stream) {
            log::debug!("http: {e}");
        }
    }
}

/// Answers one request on `stream`.
fn serve(server: &Server, mut stream: TcpStream) -> io::Result<()> {
    let head = match read_head(&mut stream, Instant::now() + REQUEST_TIMEOUT)? {
        Head::Complete(h) => h,
        Head::TooLarge => return write_by(&mut stream, &response(431, "text/plain", b"request too large\n", false)),
        Head::Closed => return Ok(()),
    };
    let (status, kind, body, head_only) = route(server, &head);
    write_by(&mut stream, &response(status, kind, &body, head_only))
}

/// What the request asked for: (status, content type, body, HEAD).
fn route(server: &Server, head: &str) -> (u16, &'static str, Vec<u8>, bool) {
    let mut words = head.lines().next().unwrap_or_default().split_whitespace();
    let (method, target) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
    let head_only = method == "HEAD";
    if method != "GET" && !head_only {
        return (405, "text/plain", b"only GET and HEAD\n".to_vec(), false);
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    match path {
        "/metrics" => (200, PROMETHEUS_TEXT, exposition::render(server).into_bytes(), head_only),
        "/healthz" => (200, "text/plain; charset=utf-8", b"ok\n".to_vec(), head_only),
        "/" => (200, "text/html; charset=utf-8", status_page::render(server).into_bytes(), head_only),
        _ => (404, "text/plain", b"not found\n".to_vec(), head_only),
    }
}

/// The content type of the Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How reading a request head ended.
enum Head {
    Complete(String),
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends a request head, by `deadline`.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    let mut piece = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "request not complete in time"));
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut piece)?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        buf.extend_from_slice(&piece[..n]);
        if let Some(end) = find_end(&buf) {
            buf.truncate(end);
            return Ok(Head::Complete(String::from_utf8_lossy(&buf).into_owned()));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// Where the head in `buf` ends (a blank line, CRLF or bare LF), if it does.
fn find_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

/// Writes all of `bytes` within [`REQUEST_TIMEOUT`], a step at a time.
fn write_by(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    for step in bytes.chunks(WRITE_STEP) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "response not read in time"));
        }
        stream.set_write_timeout(Some(left))?;
        stream.write_all(step)?;
    }
    stream.flush()
}

/// A whole response: status line, headers, and the body unless `head_only`.
fn response(status: u16, content_type: &str, body: &[u8], head_only: bool) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n\
         Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_ends_at_the_first_blank_line() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(23));
        assert_eq!(find_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: x\r\n"), None);
    }

    #[test]
    fn a_response_has_its_length_and_no_body_for_head() {
        let r = String::from_utf8(response(200, "text/plain", b"ok\n", false)).unwrap_or_default();
        assert!(
            r.starts_with("HTTP/1.1 200 OK\r\n") && r.contains("Content-Length: 3\r\n") && r.ends_with("\r\n\r\nok\n")
        );
        let h = String::from_utf8(response(200, "text/plain", b"ok\n", true)).unwrap_or_default();
        assert!(h.contains("Content-Length: 3\r\n") && h.ends_with("\r\n\r\n"));
    }
}
