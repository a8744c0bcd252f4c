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
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
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
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let (status, body) = request(self.port, "GET", &format!("/{bucket}?list-type=2")).unwrap();
        assert_eq!(status, 200, "{body}");
        body.split("<Key>").skip(1).filter_map(|k| k.split_once("</Key>")).map(|(k, _)| k.to_owned()).collect()
    }
}

impl Drop for S3Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
