//! Helpers shared by the client's integration tests: a real server with
//! clients on temp folders, waiting for folders to converge, and a scripted
//! fake server for byte-level protocol checks.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropsync_io::wire::{FrameReader, Msg};
use dropsync_proto::{md5, Frame, MessageType, StatusCode};
use dropsync_testkit::{tree, wait_until, ClientProc, ServerProc, TempDir, DEFAULT_DEADLINE};

/// Chunk size most tests use: small, so files of a few hundred bytes
/// already take several chunks.
pub const CHUNK: u32 = 64;

/// A real server on a temp root, and temp folders for its clients.
pub struct Net {
    pub tmp: TempDir,
    pub server: ServerProc,
}

impl Net {
    pub fn new(tag: &str) -> Self {
        let tmp = TempDir::new(tag);
        let server = ServerProc::start(&tmp.join("server"), &[]);
        Net { tmp, server }
    }

    /// The folder of client `name`.
    pub fn folder(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Starts client `name` (its label too) on its folder.
    pub fn client(&self, name: &str, extra: &[&str]) -> ClientProc {
        let mut args = vec!["--label", name, "--rescan-secs", "1"];
        args.extend_from_slice(extra);
        ClientProc::start(&self.server, &self.folder(name), CHUNK, &args)
    }

    /// Runs client `name` with `--once` to completion; asserts exit 0.
    pub fn once(&self, name: &str) {
        let mut c = ClientProc::start(&self.server, &self.folder(name), CHUNK, &["--once", "--label", name]);
        let status = c.wait(DEFAULT_DEADLINE);
        assert!(status.is_some_and(|s| s.success()), "--once of {name} ended with {status:?}; log:\n{}", c.log());
    }
}

/// Waits until every folder has the same files, and that set satisfies
/// `ok`; returns it. Fails with every folder's listing and the logs.
pub fn converge(
    folders: &[&Path],
    clients: &[&ClientProc],
    what: &str,
    ok: impl Fn(&BTreeMap<String, Vec<u8>>) -> bool,
) -> BTreeMap<String, Vec<u8>> {
    let mut last = Vec::new();
    let done = wait_until(DEFAULT_DEADLINE, || {
        last = folders.iter().map(|f| tree(f)).collect();
        last.windows(2).all(|w| w[0] == w[1]) && ok(&last[0])
    });
    if !done {
        let listing: Vec<String> =
            folders.iter().zip(&last).map(|(f, t)| format!("{}: {:?}", f.display(), show(t))).collect();
        let logs: Vec<String> = clients.iter().map(|c| c.log()).collect();
        panic!("timed out waiting for {what}\n{}\nlogs:\n{}", listing.join("\n"), logs.join("\n-----\n"));
    }
    last.swap_remove(0)
}

/// A folder listing with contents shown as text where possible.
pub fn show(t: &BTreeMap<String, Vec<u8>>) -> BTreeMap<&str, String> {
    t.iter().map(|(k, v)| (k.as_str(), String::from_utf8_lossy(&v[..v.len().min(40)]).into_owned())).collect()
}

/// A listing from literal names and texts.
pub fn files(entries: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    entries.iter().map(|(k, v)| (k.to_string(), v.as_bytes().to_vec())).collect()
}

/// The names in a listing that are conflict copies.
pub fn conflict_copies(t: &BTreeMap<String, Vec<u8>>) -> Vec<&String> {
    t.keys().filter(|k| k.contains("(conflicted copy ")).collect()
}

/// How long a scripted fake server waits for the client.
const FAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A scripted stand-in for the server: two listeners, and whatever the
/// test makes it say.
pub struct FakeServer {
    send_l: TcpListener,
    recv_l: TcpListener,
    pub send_port: u16,
    pub recv_port: u16,
}

/// One client session as the fake server sees it.
pub struct FakeSession {
    pub send: TcpStream,
    pub send_rx: FrameReader<TcpStream>,
    pub recv: TcpStream,
    pub recv_rx: FrameReader<TcpStream>,
    pub id: [u8; 16],
    pub label: String,
    pub recv_hello_id: [u8; 16],
}

fn accept_within(l: &TcpListener, until: Instant) -> Option<TcpStream> {
    l.set_nonblocking(true).unwrap();
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(FAKE_TIMEOUT)).unwrap();
                return Some(s);
            }
            Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            Err(_) => return None,
        }
    }
}

fn read_hello(rx: &mut FrameReader<TcpStream>) -> ([u8; 16], String) {
    match rx.read_msg().unwrap() {
        Some(Msg::Hello { client_id, label }) => (client_id, label),
        other => panic!("expected HELLO, got {other:?}"),
    }
}

impl FakeServer {
    pub fn new() -> Self {
        let send_l = TcpListener::bind("127.0.0.1:0").unwrap();
        let recv_l = TcpListener::bind("127.0.0.1:0").unwrap();
        let send_port = send_l.local_addr().unwrap().port();
        let recv_port = recv_l.local_addr().unwrap().port();
        FakeServer { send_l, recv_l, send_port, recv_port }
    }

    /// Accepts a client's two connections within `within`, reads HELLO on
    /// each and answers OK.
    pub fn accept(&self, within: Duration) -> Option<FakeSession> {
        let until = Instant::now() + within;
        let mut send = accept_within(&self.send_l, until)?;
        let mut recv = accept_within(&self.recv_l, until)?;
        let mut send_rx = FrameReader::new(send.try_clone().unwrap());
        let mut recv_rx = FrameReader::new(recv.try_clone().unwrap());
        let (id, label) = read_hello(&mut send_rx);
        let (recv_hello_id, _) = read_hello(&mut recv_rx);
        send.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
        recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
        Some(FakeSession { send, send_rx, recv, recv_rx, id, label, recv_hello_id })
    }

    /// Accepts a client's two connections within `within` and reads
    /// nothing: for a server that refuses HELLO, or a legacy session.
    pub fn accept_raw(&self, within: Duration) -> Option<(TcpStream, TcpStream)> {
        let until = Instant::now() + within;
        let send = accept_within(&self.send_l, until)?;
        let recv = accept_within(&self.recv_l, until)?;
        Some((send, recv))
    }
}

impl FakeSession {
    /// A session on connections where no HELLO was said (a legacy one).
    pub fn legacy(send: TcpStream, recv: TcpStream) -> Self {
        let send_rx = FrameReader::new(send.try_clone().unwrap());
        let recv_rx = FrameReader::new(recv.try_clone().unwrap());
        FakeSession { send, send_rx, recv, recv_rx, id: [0; 16], label: String::new(), recv_hello_id: [0; 16] }
    }
}

/// A message from the client on the send connection, payload included.
#[derive(Debug, PartialEq, Eq)]
pub enum FromClient {
    Chunk { name: String, digest: [u8; 16], payload: Vec<u8> },
    Named { kind: MessageType, name: String, digest: [u8; 16] },
    Status(StatusCode),
}

impl FakeSession {
    /// Sends META-DATA text as the first transfer and checks the replies.
    pub fn send_metadata(&mut self, text: &str) {
        let name = dropsync_proto::name::METADATA_TRANSFER_NAME;
        if !text.is_empty() {
            assert_eq!(
                self.push(&Frame::Chunk { digest: md5(text.as_bytes()), name, payload: text.as_bytes() }),
                StatusCode::OK
            );
        }
        assert_eq!(self.push(&Frame::Finished { digest: md5(text.as_bytes()), name }), StatusCode::OK);
    }

    /// An empty META-DATA.
    pub fn send_empty_metadata(&mut self) {
        self.send_metadata("dropsync-metadata 1\n");
    }

    /// Writes `frame` on the receive connection and returns the client's
    /// reply (keep-alives skipped).
    pub fn push(&mut self, frame: &Frame<'_>) -> StatusCode {
        self.recv.write_all(&frame.to_vec()).unwrap();
        loop {
            match self.recv_rx.read_msg().unwrap() {
                Some(Msg::Status(StatusCode::KEEP_ALIVE)) => continue,
                Some(Msg::Status(code)) => return code,
                other => panic!("expected a STATUS on the receive connection, got {other:?}"),
            }
        }
    }

    /// Sends a whole file on the receive connection; returns the first
    /// non-OK reply or the reply to FINISHED.
    pub fn push_file(&mut self, name: &str, data: &[u8]) -> StatusCode {
        for piece in data.chunks(1024) {
            let code = self.push(&Frame::Chunk { digest: md5(piece), name, payload: piece });
            if code != StatusCode::OK {
                return code;
            }
        }
        self.push(&Frame::Finished { digest: md5(data), name })
    }

    /// The next message the client sends on the send connection, skipping
    /// keep-alives unless `keepalives` is set.
    pub fn next_from_client(&mut self, keepalives: bool) -> FromClient {
        loop {
            let msg = self.send_rx.read_msg().unwrap().expect("client closed the send connection");
            return match msg {
                Msg::Status(StatusCode::KEEP_ALIVE) if !keepalives => continue,
                Msg::Status(code) => FromClient::Status(code),
                Msg::Chunk { digest, name, len } => {
                    let payload = self.send_rx.read_payload(len).unwrap().to_vec();
                    FromClient::Chunk { name, digest, payload }
                }
                Msg::Named { kind, digest, name } => FromClient::Named { kind, name, digest },
                other => panic!("unexpected {other:?} on the send connection"),
            };
        }
    }

    /// Answers the client's message on the send connection.
    pub fn reply(&mut self, code: StatusCode) {
        self.send.write_all(&Frame::Status(code).to_vec()).unwrap();
    }

    /// Receives a whole upload (answering OK to everything) and returns
    /// its name and bytes; checks every chunk is at most `max_chunk`.
    pub fn receive_upload(&mut self, max_chunk: usize) -> (String, Vec<u8>) {
        self.receive_upload_after(Vec::new(), max_chunk)
    }

    /// Like `receive_upload`, for an upload whose first bytes (`data`)
    /// the test already read and answered itself.
    pub fn receive_upload_after(&mut self, mut data: Vec<u8>, max_chunk: usize) -> (String, Vec<u8>) {
        loop {
            match self.next_from_client(false) {
                FromClient::Chunk { name: _, digest, payload } => {
                    assert!(!payload.is_empty() && payload.len() <= max_chunk, "chunk of {} bytes", payload.len());
                    assert_eq!(md5(&payload), digest);
                    data.extend_from_slice(&payload);
                    self.reply(StatusCode::OK);
                }
                FromClient::Named { kind: MessageType::Finished, name, digest } => {
                    assert_eq!(md5(&data), digest, "whole-file digest of {name}");
                    self.reply(StatusCode::OK);
                    return (name, data);
                }
                other => panic!("expected an upload, got {other:?}"),
            }
        }
    }
}
