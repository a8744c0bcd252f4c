//! A real S3-compatible server for tests (issue 18): moto's server mode
//! (`pip install "moto[server]"`; `.ci/run` does it) on a free loopback
//! port, killed when dropped, with a bucket made for the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running S3 server.
#[derive(Debug)]
pub struct S3Proc {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
}

/// One plain HTTP request with an empty body; the status and the body.
fn request(port: u16, method: &str, path: &str) -> std::io::Result<(u16, String)> {
    let (status, body) = request_bytes(port, method, path)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// [`request`] with the body as bytes (an object's content), read to the
/// end of the connection (`Connection: close`) and de-chunked if the
/// server chunked it.
fn request_bytes(port: u16, method: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |i| i + 4);
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = &raw[split..];
    if head.contains("transfer-encoding: chunked") {
        return Ok((status, dechunk(body)?));
    }
    Ok((status, body.to_vec()))
}

/// The payload of a chunked HTTP body (no trailers expected).
fn dechunk(mut body: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunked body");
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(body.get(..size).ok_or_else(bad)?);
        body = body.get(size + 2..).ok_or_else(bad)?;
    }
}

impl S3Proc {
    /// The credentials a server needs in its environment to use this S3
    /// server (moto takes any).
    pub const CREDENTIALS: [(&'static str, &'static str); 2] =
        [("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")];

    /// [`CREDENTIALS`](Self::CREDENTIALS) in the form
    /// `ServerProc::start_with_env` takes.
    pub fn env() -> [(&'static str, &'static std::ffi::OsStr); 2] {
        Self::CREDENTIALS.map(|(k, v)| (k, std::ffi::OsStr::new(v)))
    }

    /// Starts moto's server and makes `bucket`; panics, saying why, when
    /// moto is not installed.
    pub fn start(bucket: &str) -> Self {
        // A port picked free can be taken before moto binds it (another
        // test starting its own): then moto exits, and the bucket is made
        // again on a new port, never on someone else's server.
        for _ in 0..5 {
            if let Some(s3) = Self::try_start(bucket) {
                return s3;
            }
        }
        panic!("moto_server did not come up (pip install \"moto[server]\"; .ci/run does it)");
    }

    fn try_start(bucket: &str) -> Option<Self> {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).ok()?;
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start moto_server (pip install \"moto[server]\"; .ci/run does it): {e}")
            });
        let mut s3 = Self { child, port, endpoint: format!("http://127.0.0.1:{port}") };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if !matches!(s3.child.try_wait(), Ok(None)) {
                return None;
            }
            match request(port, "PUT", &format!("/{bucket}")) {
                // Ours, still running: the bucket is on our server.
                Ok((200, _)) if matches!(s3.child.try_wait(), Ok(None)) => return Some(s3),
                Ok((status, body)) if status >= 400 => panic!("moto refused bucket {bucket:?}: {status} {body}"),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                _ => return None,
            }
        }
    }

    /// The keys in `bucket` (an unsigned ListObjectsV2, which moto allows).
    /// One page: at most 1,000 keys.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = request(self.port, "GET", &format!("/{bucket}?list-type=2")).unwrap();
        assert_eq!(status, 200, "{body}");
        body.split("<Key>").skip(1).filter_map(|k| k.split_once("</Key>")).map(|(k, _)| k.to_owned()).collect()
    }

    /// The content of object `key` in `bucket`; `Ok(None)` when there is
    /// no such object. Signed with [`CREDENTIALS`](Self::CREDENTIALS) (moto
    /// refuses an unsigned GetObject), by `rusty-s3` as the server signs.
    pub fn get(&self, bucket: &str, key: &str) -> std::io::Result<Option<Vec<u8>>> {
        use rusty_s3::S3Action as _;
        let endpoint = url::Url::parse(&self.endpoint).map_err(std::io::Error::other)?;
        let b = rusty_s3::Bucket::new(endpoint, rusty_s3::UrlStyle::Path, bucket.to_owned(), "us-east-1")
            .map_err(std::io::Error::other)?;
        let [(_, id), (_, secret)] = Self::CREDENTIALS;
        let credentials = rusty_s3::Credentials::new(id, secret);
        let signed = rusty_s3::actions::GetObject::new(&b, Some(&credentials), key).sign(Duration::from_secs(600));
        let target = format!("{}?{}", signed.path(), signed.query().unwrap_or_default());
        match request_bytes(self.port, "GET", &target)? {
            (200, body) => Ok(Some(body)),
            (404, _) => Ok(None),
            (status, body) => Err(std::io::Error::other(format!(
                "GET {bucket}/{key}: {status} {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))),
        }
    }
}

impl Drop for S3Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn a_chunked_body_is_put_back_together() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        assert_eq!(dechunk(body).unwrap(), b"hello, world");
        assert!(dechunk(b"5\r\nhel").is_err(), "a body cut short is an error, not a short object");
        assert!(dechunk(b"zz\r\n").is_err());
    }
}
