//! The Wireshark dissector `contrib/wireshark/dropsync.lua` checked against
//! real sessions on the wire.
//!
//! `dissector_decodes_a_real_session`: the real server runs on 127.0.0.1;
//! dumpcap captures its two ports on the loopback interface; scripted peers
//! go through pairing, META-DATA, a multi-chunk upload whose chunks span
//! several TCP segments, pipelined frames sharing one segment, a header split
//! across two segments, fan-out, a lock conflict (0x0040), a resend (0x0002),
//! an ABORT, an empty file, a bad name (0x0100), a DELETE, REQUESTs, a
//! keep-alive, and the COPY [ext] offer then a COPY split across two
//! segments before its second name's length. Every message each peer wrote
//! or read is logged per connection and direction; tshark with the dissector must show exactly those messages,
//! field by field and in order, once with the ports given as preferences and
//! once found by the heuristic alone; nothing may be malformed or an error,
//! and every STATUS must answer an outstanding message.
//!
//! `dissector_decodes_real_clients`: the same with two real `client --once`
//! runs, checking what holds whatever order they choose (pairing, one reply
//! per message, files rebuilt from the dissected payloads), then both
//! clients running with the watcher on while one renames a file: a COPY to
//! the server and one from it to the other client. The test decodes the
//! capture itself (TCP payloads reassembled here, parsed by dropsync-proto)
//! and the dissector must show exactly the same messages.
//!
//! `dissector_decodes_a_tls_session`: the same in secure mode (TLS 1.3),
//! the server and the clients writing SSLKEYLOGFILE: tshark decrypts with
//! either key log, through the ports and through the heuristics, and without
//! one shows TLS only; the rename's two COPYs show in the decrypted stream.
//!
//! `dissector_flags_rule_breaks_and_unknown_types`: crafted bytes (a pcap
//! written here) with an unknown type, unknown status bits, bad names and a
//! STATUS too many: each is flagged, and only the unknown type is an error;
//! a COPY split across three segments (inside both lengths) is reassembled,
//! and the COPY offer's reserved name is not flagged.
//!
//! Needs `tshark` and `dumpcap` (Debian: `apt-get install tshark`, which
//! `.ci/run` does) and the right to capture (root). Without them the tests
//! fail and say so: they never pass without having looked at the wire.
//! DROPSYNC_KEEP_CAPTURE=<folder> keeps the captures.

// Test helpers, like the tests themselves, may unwrap: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dropsync_io::wire::{FrameReader, Msg};
use dropsync_proto::name::COPY_OFFER_NAME;
use dropsync_proto::{md5, Frame, MessageType, StatusCode, ZERO_DIGEST};
use dropsync_testkit::{bin_path, http_get, wait_until, ClientProc, RawPeer, ServerProc, TempDir, DEFAULT_DEADLINE};

/// Longest any one tshark run may take.
const TSHARK_DEADLINE: Duration = Duration::from_secs(120);
/// The capture stops by itself after this long, whatever happens to the test.
const CAPTURE_SECONDS: u32 = 300;

// ---------------------------------------------------------------------------
// Tools and processes
// ---------------------------------------------------------------------------

fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")];
    std::env::split_paths(&path)
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` not found: the Wireshark dissector test needs tshark and dumpcap \
                 (Debian/Ubuntu: `apt-get install tshark`; .ci/run installs it). \
                 This test fails rather than pass without checking the dissector."
            )
        })
}

fn dissector_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/wireshark/dropsync.lua");
    assert!(p.is_file(), "{} missing", p.display());
    p.canonicalize().unwrap()
}

/// A child process killed and reaped on drop.
struct Proc(Option<Child>);

impl Proc {
    fn id(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Waits (bounded) for the exit; kills on timeout. True if it exited by itself.
    fn wait(&mut self, deadline: Duration) -> bool {
        let Some(mut c) = self.0.take() else { return true };
        let exited = wait_until(deadline, || c.try_wait().ok().flatten().is_some());
        if !exited {
            let _ = c.kill();
        }
        let _ = c.wait();
        exited
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` to completion within `deadline`, output kept in files under `dir`.
fn run_bounded(mut cmd: Command, dir: &Path, tag: &str, deadline: Duration) -> Output {
    let out_path = dir.join(format!("{tag}.stdout"));
    let err_path = dir.join(format!("{tag}.stderr"));
    let child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut p = Proc(Some(child));
    let mut status = None;
    let done = wait_until(deadline, || {
        status = p.0.as_mut().and_then(|c| c.try_wait().ok().flatten());
        status.is_some()
    });
    assert!(done, "{tag} did not finish within {deadline:?}: {cmd:?}");
    p.0 = None;
    Output {
        status: status.unwrap(),
        stdout: std::fs::read(&out_path).unwrap(),
        stderr: std::fs::read(&err_path).unwrap(),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// dumpcap on the loopback interface, writing `file`; stops by itself after
/// CAPTURE_SECONDS, and is killed if dropped.
struct Capture {
    proc: Proc,
    file: PathBuf,
    log: PathBuf,
    /// A connection of our own whose port is in the capture filter: bytes
    /// written on it are markers proving what the capture has seen.
    probe: TcpStream,
    _probe_peer: TcpStream,
    nonce: String,
}

impl Capture {
    fn start(dir: &Path, ports: &[u16]) -> Self {
        let dumpcap = find_tool("dumpcap");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let probe_port = listener.local_addr().unwrap().port();
        let probe = TcpStream::connect(("127.0.0.1", probe_port)).unwrap();
        probe.set_nodelay(true).unwrap();
        let (probe_peer, _) = listener.accept().unwrap();
        let mut filter: Vec<String> = ports.iter().map(|p| format!("tcp port {p}")).collect();
        filter.push(format!("tcp port {probe_port}"));
        let file = dir.join("session.pcapng");
        let log = dir.join("dumpcap.log");
        let child = Command::new(dumpcap)
            .args(["-i", "lo", "-q", "-B", "32", "-f", &filter.join(" or ")])
            .arg("-a")
            .arg(format!("duration:{CAPTURE_SECONDS}"))
            .arg("-w")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let nonce = format!("{}-{nanos}", std::process::id());
        let mut cap = Capture { proc: Proc(Some(child)), file, log, probe, _probe_peer: probe_peer, nonce };
        cap.mark("START");
        cap
    }

    /// Writes a marker on the probe connection until the capture file holds
    /// it: everything sent before the marker has been captured and flushed.
    fn mark(&mut self, what: &str) {
        let marker = format!("DROPSYNC-CAPTURE-{what}-{}", self.nonce);
        let mut last_write = None::<Instant>;
        let ok = wait_until(DEFAULT_DEADLINE, || {
            let due = match last_write {
                None => true,
                Some(t) => t.elapsed() > Duration::from_millis(500),
            };
            if due {
                self.probe.write_all(marker.as_bytes()).unwrap();
                last_write = Some(Instant::now());
            }
            if let Some(c) = self.proc.0.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("dumpcap exited ({st}): {}", std::fs::read_to_string(&self.log).unwrap_or_default());
                }
            }
            std::fs::read(&self.file).is_ok_and(|b| contains(&b, marker.as_bytes()))
        });
        assert!(
            ok,
            "capture never saw marker {marker}; dumpcap log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    /// Marks the end, then stops dumpcap (SIGINT) so it closes the file cleanly.
    fn stop(mut self) -> PathBuf {
        self.mark("END");
        let _ = Command::new("kill").args(["-INT", &self.proc.id().to_string()]).status();
        assert!(self.proc.wait(DEFAULT_DEADLINE), "dumpcap did not stop on SIGINT");
        self.file.clone()
    }
}

// ---------------------------------------------------------------------------
// Peers that log every message they write or read
// ---------------------------------------------------------------------------

/// One side of one connection: (client's port, client → server?).
type Way = (u16, bool);

/// What a message looks like, in the form both the log and the dissector
/// output are reduced to.
fn describe_frame(f: &Frame<'_>) -> String {
    match *f {
        Frame::Chunk { digest, name, payload } => describe_chunk(name, &digest, payload),
        Frame::Status(c) => format!("STATUS 0x{:04x}", c.0),
        Frame::Finished { digest, name } => format!("FINISHED {name:?} md5={}", hex(&digest)),
        Frame::Abort { digest, name } => format!("ABORT {name:?} md5={}", hex(&digest)),
        Frame::Delete { digest, name } => format!("DELETE {name:?} md5={}", hex(&digest)),
        Frame::Request { digest, name } => format!("REQUEST {name:?} md5={}", hex(&digest)),
        Frame::Hello { client_id, label } => format!("HELLO id={} label={label:?}", hex(&client_id)),
        Frame::Copy { digest, from, name } => format!("COPY {from:?} -> {name:?} md5={}", hex(&digest)),
    }
}

/// A FILE_CHUNK, marked when its digest is not its payload's MD5 (as a
/// deliberately wrong one is).
fn describe_chunk(name: &str, digest: &[u8], payload: &[u8]) -> String {
    let mark = if md5(payload) == digest { "" } else { " (digest does not match payload)" };
    format!("FILE_CHUNK {name:?} size={} md5={}{mark}", payload.len(), hex(digest))
}

fn describe_msg(m: &Msg, payload: &[u8]) -> String {
    match m {
        Msg::Chunk { digest, name, len } => {
            assert_eq!(*len as usize, payload.len());
            describe_chunk(name, digest, payload)
        }
        Msg::Status(c) => format!("STATUS 0x{:04x}", c.0),
        Msg::Copy { digest, from, name } => format!("COPY {from:?} -> {name:?} md5={}", hex(digest)),
        Msg::Named { kind, digest, name } => {
            let t = match kind {
                MessageType::Finished => "FINISHED",
                MessageType::Abort => "ABORT",
                MessageType::Delete => "DELETE",
                MessageType::Request => "REQUEST",
                other => panic!("named {other:?}"),
            };
            format!("{t} {name:?} md5={}", hex(digest))
        }
        Msg::Hello { client_id, label } => format!("HELLO id={} label={label:?}", hex(client_id)),
        Msg::Rejected(e) => panic!("server sent a frame we reject: {e}"),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Default)]
struct Log(BTreeMap<Way, Vec<String>>);

impl Log {
    fn push(&mut self, way: Way, what: String) {
        self.0.entry(way).or_default().push(what);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Conn {
    Send,
    Recv,
}

struct Peer {
    raw: RawPeer,
    send_port: u16,
    recv_port: u16,
    /// Deliveries under way, by name: the server interleaves up to
    /// `--parallel` of them ([ext] parallel transfers), each chunk naming
    /// its file.
    open: BTreeMap<String, Vec<u8>>,
}

impl Peer {
    /// Connects, HELLO on both connections (as RawPeer::hello does), then
    /// receives the META-DATA transfer.
    fn join(s: &ServerProc, log: &mut Log, id: [u8; 16], label: &str) -> Self {
        let raw = RawPeer::connect_raw(s.send_port, s.recv_port);
        let send_port = raw.send.tcp().local_addr().unwrap().port();
        let recv_port = raw.recv.tcp().local_addr().unwrap().port();
        let mut p = Peer { raw, send_port, recv_port, open: BTreeMap::new() };
        let hello = Frame::Hello { client_id: id, label };
        p.write(log, Conn::Send, &[hello]);
        assert_eq!(p.status(log, Conn::Send), StatusCode::OK);
        p.write(log, Conn::Recv, &[hello]);
        assert_eq!(p.status(log, Conn::Recv), StatusCode::OK);
        let (name, data) = p.receive_transfer(log);
        assert_eq!(name, ".dropsync-metadata");
        assert!(data.is_some_and(|d| d.starts_with(b"dropsync-metadata 1\n")));
        p
    }

    fn way(&self, conn: Conn, to_server: bool) -> Way {
        (if conn == Conn::Send { self.send_port } else { self.recv_port }, to_server)
    }

    fn stream(&mut self, conn: Conn) -> &mut dropsync_io::conn::Conn {
        match conn {
            Conn::Send => &mut self.raw.send,
            Conn::Recv => &mut self.raw.recv,
        }
    }

    /// Writes `frames` in one write (so small ones share a TCP segment).
    fn write(&mut self, log: &mut Log, conn: Conn, frames: &[Frame<'_>]) {
        let mut bytes = Vec::new();
        for f in frames {
            f.encode(&mut bytes);
            log.push(self.way(conn, true), describe_frame(f));
        }
        self.stream(conn).write_all(&bytes).unwrap();
    }

    /// Writes one frame in two writes split after `at` bytes (TCP_NODELAY is
    /// on, so the two halves travel in two segments).
    fn write_split(&mut self, log: &mut Log, conn: Conn, frame: &Frame<'_>, at: usize) {
        let bytes = frame.to_vec();
        log.push(self.way(conn, true), describe_frame(frame));
        self.stream(conn).write_all(&bytes[..at]).unwrap();
        self.stream(conn).flush().unwrap();
        self.stream(conn).write_all(&bytes[at..]).unwrap();
    }

    /// Reads the next message on `conn` (keep-alives included); a chunk's
    /// payload comes with it.
    fn read(&mut self, log: &mut Log, conn: Conn) -> (Msg, Vec<u8>) {
        let way = self.way(conn, false);
        let rx: &mut FrameReader<dropsync_io::conn::Conn> = match conn {
            Conn::Send => &mut self.raw.send_rx,
            Conn::Recv => &mut self.raw.recv_rx,
        };
        let msg = rx.read_msg().unwrap().expect("server closed the connection");
        let payload = match &msg {
            Msg::Chunk { len, .. } => rx.read_payload(*len).unwrap().to_vec(),
            _ => Vec::new(),
        };
        log.push(way, describe_msg(&msg, &payload));
        (msg, payload)
    }

    fn status(&mut self, log: &mut Log, conn: Conn) -> StatusCode {
        match self.read(log, conn).0 {
            Msg::Status(c) => c,
            other => panic!("expected STATUS, got {other:?}"),
        }
    }

    /// Sends one frame on the send connection and reads its reply.
    fn request(&mut self, log: &mut Log, f: Frame<'_>) -> StatusCode {
        self.write(log, Conn::Send, &[f]);
        self.status(log, Conn::Send)
    }

    fn upload(&mut self, log: &mut Log, name: &str, data: &[u8], chunk: usize) {
        for piece in data.chunks(chunk) {
            let st = self.request(log, Frame::Chunk { digest: md5(piece), name, payload: piece });
            assert_eq!(st, StatusCode::OK, "chunk of {name}");
        }
        assert_eq!(self.request(log, Frame::Finished { digest: md5(data), name }), StatusCode::OK, "FINISHED {name}");
    }

    /// Receives messages on the receive connection, answering OK to each,
    /// until a transfer ends: `(name, Some(content))` for a file, `(name,
    /// None)` for a DELETE. Transfers interleaved with it go on in `open`.
    fn receive_transfer(&mut self, log: &mut Log) -> (String, Option<Vec<u8>>) {
        loop {
            let (msg, payload) = self.read(log, Conn::Recv);
            if matches!(msg, Msg::Status(StatusCode::KEEP_ALIVE)) {
                continue;
            }
            self.write(log, Conn::Recv, &[Frame::Status(StatusCode::OK)]);
            match msg {
                Msg::Chunk { digest, name, .. } => {
                    assert_eq!(md5(&payload), digest);
                    self.open.entry(name).or_default().extend_from_slice(&payload);
                }
                Msg::Named { kind: MessageType::Finished, digest, name } => {
                    let data = self.open.remove(&name).unwrap_or_default();
                    assert_eq!(md5(&data), digest, "{name}");
                    return (name, Some(data));
                }
                Msg::Named { kind: MessageType::Delete, name, .. } => return (name, None),
                Msg::Named { kind: MessageType::Abort, name, .. } => drop(self.open.remove(&name)),
                other => panic!("unexpected {other:?} on the receive connection"),
            }
        }
    }

    /// Receives transfers until exactly `names` (in any order) have arrived.
    fn receive_all(&mut self, log: &mut Log, names: &[&str]) -> BTreeMap<String, Option<Vec<u8>>> {
        let mut got = BTreeMap::new();
        for _ in names {
            let (n, d) = self.receive_transfer(log);
            got.insert(n, d);
        }
        let mut want: Vec<&str> = names.to_vec();
        want.sort_unstable();
        want.dedup();
        assert_eq!(got.keys().map(String::as_str).collect::<Vec<_>>(), want);
        got
    }
}

/// The session. Returns the log of every message written or read.
fn run_session(s: &ServerProc) -> Log {
    let mut log = Log::default();
    let l = &mut log;
    let mut a = Peer::join(s, l, [0xa1; 16], "alice");
    let mut b = Peer::join(s, l, [0xb2; 16], "bob");

    // 200 KiB in 64 KiB chunks: each chunk frame is larger than loopback's
    // MSS, so every one spans segments; the server sends it back to B in its
    // own 64 KiB chunks.
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    a.upload(l, "big.bin", &big, 64 * 1024);
    assert_eq!(b.receive_all(l, &["big.bin"])["big.bin"].as_deref(), Some(&big[..]));

    // [ext] A offers COPY (a REQUEST of the reserved name), then copies
    // big.bin to copy.bin in one COPY split across two segments inside its
    // source name (before its name length is known); B, which offered
    // nothing, is sent copy.bin whole.
    assert_eq!(a.request(l, Frame::Request { digest: ZERO_DIGEST, name: COPY_OFFER_NAME }), StatusCode::OK);
    let copy = Frame::Copy { digest: md5(&big), from: "big.bin", name: "copy.bin" };
    a.write_split(l, Conn::Send, &copy, 2 + 16 + 2 + 3);
    assert_eq!(a.status(l, Conn::Send), StatusCode::OK);
    assert_eq!(b.receive_all(l, &["copy.bin"])["copy.bin"].as_deref(), Some(&big[..]));

    // Pipelined: a keep-alive and three messages of three transfers in one
    // segment; the replies come back in order.
    a.write(
        l,
        Conn::Send,
        &[
            Frame::Status(StatusCode::KEEP_ALIVE),
            Frame::Chunk { digest: md5(b"hello\n"), name: "a.txt", payload: b"hello\n" },
            Frame::Chunk { digest: md5(b"world!\n"), name: "sub/b.txt", payload: b"world!\n" },
            Frame::Request { digest: md5(&big), name: "big.bin" },
        ],
    );
    for _ in 0..3 {
        assert_eq!(a.status(l, Conn::Send), StatusCode::OK);
    }
    // A header split across two segments (inside the digest).
    a.write_split(l, Conn::Send, &Frame::Finished { digest: md5(b"hello\n"), name: "a.txt" }, 9);
    assert_eq!(a.status(l, Conn::Send), StatusCode::OK);
    assert_eq!(a.request(l, Frame::Finished { digest: md5(b"world!\n"), name: "sub/b.txt" }), StatusCode::OK);
    // A's REQUEST is served to A.
    assert_eq!(a.receive_all(l, &["big.bin"])["big.bin"].as_deref(), Some(&big[..]));
    b.receive_all(l, &["a.txt", "sub/b.txt"]);

    // Lock conflict: A holds locked.txt open; B's chunk and DELETE get 0x0040.
    a.upload(l, "locked.txt", b"v1", 64);
    b.receive_all(l, &["locked.txt"]);
    assert_eq!(a.request(l, Frame::Chunk { digest: md5(b"v2"), name: "locked.txt", payload: b"v2" }), StatusCode::OK);
    let theirs = Frame::Chunk { digest: md5(b"theirs"), name: "locked.txt", payload: b"theirs" };
    assert_eq!(b.request(l, theirs), StatusCode::LOCKED);
    assert_eq!(b.request(l, Frame::Delete { digest: md5(b"v1"), name: "locked.txt" }), StatusCode::LOCKED);
    assert_eq!(a.request(l, Frame::Finished { digest: md5(b"v2"), name: "locked.txt" }), StatusCode::OK);
    assert_eq!(b.receive_all(l, &["locked.txt"])["locked.txt"].as_deref(), Some(&b"v2"[..]));

    // A wrong chunk digest: 0x0002, then the same chunk again.
    let bad = Frame::Chunk { digest: md5(b"not this"), name: "d.txt", payload: b"resent" };
    assert_eq!(a.request(l, bad), StatusCode::RESEND_CHECKSUM);
    a.upload(l, "d.txt", b"resent", 64);
    // ABORT mid-transfer, an empty file, a bad name.
    assert_eq!(a.request(l, Frame::Chunk { digest: md5(b"c"), name: "c.txt", payload: b"c" }), StatusCode::OK);
    assert_eq!(a.request(l, Frame::abort("c.txt")), StatusCode::OK);
    assert_eq!(a.request(l, Frame::Finished { digest: md5(b""), name: "empty.txt" }), StatusCode::OK);
    assert_eq!(a.request(l, Frame::Delete { digest: ZERO_DIGEST, name: "../x" }), StatusCode::BAD_REQUEST);
    b.receive_all(l, &["d.txt", "empty.txt"]);

    // DELETE fans out; REQUESTs, known and unknown.
    assert_eq!(b.request(l, Frame::Delete { digest: md5(b"hello\n"), name: "a.txt" }), StatusCode::OK);
    assert_eq!(a.receive_all(l, &["a.txt"])["a.txt"], None);
    assert_eq!(b.request(l, Frame::Request { digest: ZERO_DIGEST, name: "sub/b.txt" }), StatusCode::OK);
    b.receive_all(l, &["sub/b.txt"]);
    assert_eq!(b.request(l, Frame::Request { digest: ZERO_DIGEST, name: "nope" }), StatusCode::NO_FILE);
    assert_eq!(b.request(l, Frame::Delete { digest: ZERO_DIGEST, name: "nope" }), StatusCode::NO_FILE);

    // A third client with an empty label gets the whole META-DATA.
    let _c = Peer::join(s, l, [0xc3; 16], "");
    log
}

// ---------------------------------------------------------------------------
// Reading tshark's PDML
// ---------------------------------------------------------------------------

fn unescape_xml(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..].find(';').map_or(rest.len(), |e| i + e);
        let ent = &rest[i + 1..end];
        match ent {
            "amp" => out.push('&'),
            "lt" => out.push('<'),
            "gt" => out.push('>'),
            "quot" => out.push('"'),
            "apos" => out.push('\''),
            _ => {
                let code = ent
                    .strip_prefix("#x")
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                    .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()));
                out.push(code.and_then(char::from_u32).unwrap_or('\u{fffd}'));
            }
        }
        rest = &rest[(end + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

/// The value of attribute `attr` of the first `<field name="field" ...>` in `text`.
fn field_attr(text: &str, field: &str, attr: &str) -> Option<String> {
    let start = text.find(&format!("<field name=\"{field}\""))?;
    let tag = &text[start..start + text[start..].find('>')?];
    let key = format!(" {attr}=\"");
    let v = tag.find(&key)? + key.len();
    let len = tag[v..].find('"')?;
    Some(unescape_xml(&tag[v..v + len]))
}

/// One dissected message: where it travelled and what it said.
struct Dissected {
    frame: u64,
    /// tshark's TCP stream index: one connection.
    stream: u64,
    way: Way,
    /// The server's port of the connection: with the client's (in `way`),
    /// what tells one connection from another (two clients run one after
    /// the other can get the same client port, towards the other port).
    server_port: u16,
    /// The wire type.
    ty: u16,
    /// The message reduced as `describe_frame` does.
    what: String,
    /// The file name (or HELLO label).
    name: String,
    /// A FILE_CHUNK's payload as the dissector delimited it.
    payload: Vec<u8>,
    /// For a STATUS, the message it answers, as the dissector matched it.
    reply_to: Option<String>,
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2).filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()).collect()
}

/// Reads every dropsync message from tshark's PDML, in capture order.
fn parse_pdml(pdml: &str, server_ports: [u16; 2]) -> Vec<Dissected> {
    let mut out = Vec::new();
    for packet in pdml.split("<packet>").skip(1) {
        let frame: u64 = field_attr(packet, "frame.number", "show").and_then(|v| v.parse().ok()).unwrap_or(0);
        let stream: u64 = field_attr(packet, "tcp.stream", "show").and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
        let port = |f: &str| -> u16 { field_attr(packet, f, "show").and_then(|v| v.parse().ok()).unwrap_or(0) };
        let (src, dst) = (port("tcp.srcport"), port("tcp.dstport"));
        let way = if server_ports.contains(&dst) { (src, true) } else { (dst, false) };
        for proto in packet.split("<proto name=\"").skip(1).filter(|p| p.starts_with("dropsync\"")) {
            let get = |f: &str, a: &str| field_attr(proto, f, a).unwrap_or_else(|| format!("<no {f}>"));
            let ty = get("dropsync.type", "show");
            let ty = u16::from_str_radix(ty.trim_start_matches("0x"), 16).unwrap_or(0xffff);
            let name = get(if ty == 7 { "dropsync.label" } else { "dropsync.name" }, "show");
            let digest = get("dropsync.md5", "value");
            let payload = field_attr(proto, "dropsync.payload", "value").map(|h| unhex(&h)).unwrap_or_default();
            let named = |t: &str| format!("{t} {name:?} md5={digest}");
            let what = match ty {
                1 => {
                    // The payload must be exactly `size` bytes; a digest that is
                    // not its MD5 is marked as the wire log marks it.
                    let size = get("dropsync.size", "show");
                    let mut what = format!("FILE_CHUNK {name:?} size={size} md5={digest}");
                    if size != payload.len().to_string() {
                        what.push_str(&format!(" (PAYLOAD MISDELIMITED: {} bytes)", payload.len()));
                    }
                    if digest != hex(&md5(&payload)) {
                        what.push_str(" (digest does not match payload)");
                    }
                    what
                }
                2 => {
                    let code = get("dropsync.status", "show");
                    let code = u16::from_str_radix(code.trim_start_matches("0x"), 16).unwrap_or(0xffff);
                    format!("STATUS 0x{code:04x}")
                }
                3 => named("FINISHED"),
                4 => named("ABORT"),
                5 => named("DELETE"),
                6 => named("REQUEST"),
                7 => format!("HELLO id={} label={name:?}", get("dropsync.client_id", "value")),
                8 => format!("COPY {:?} -> {name:?} md5={digest}", get("dropsync.from", "show")),
                t => format!("UNKNOWN TYPE 0x{t:04x}"),
            };
            let reply_to = field_attr(proto, "dropsync.reply_to.message", "show");
            let server_port = if way.1 { dst } else { src };
            out.push(Dissected { frame, stream, way, server_port, ty, what, name, payload, reply_to });
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

struct Tshark {
    bin: PathBuf,
    capture: PathBuf,
    dissector: PathBuf,
    dir: PathBuf,
    /// `--disable-protocol` for dissectors registered on a port this session used.
    disabled: Vec<String>,
}

impl Tshark {
    fn run(&self, tag: &str, prefs: &[String], args: &[&str]) -> String {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-n").arg("-r").arg(&self.capture);
        cmd.arg("-X").arg(format!("lua_script:{}", self.dissector.display()));
        for p in prefs {
            cmd.arg("-o").arg(p);
        }
        for d in &self.disabled {
            cmd.args(["--disable-protocol", d]);
        }
        cmd.args(args);
        let out = run_bounded(cmd, &self.dir, tag, TSHARK_DEADLINE);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let noise = |l: &str| l.trim().is_empty() || l.contains("Running as user") || l.contains("could be dangerous");
        let complaints: Vec<&str> = stderr.lines().filter(|l| !noise(l)).collect();
        assert!(out.status.success() && complaints.is_empty(), "tshark {tag} failed ({}):\n{stderr}", out.status);
        // Lossy: tshark prints bytes of names that are not UTF-8 as they are.
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The Info column's field: `_ws.col.Info` up to Wireshark 4.0, renamed
/// `_ws.col.info` later.
fn info_column() -> &'static str {
    static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let out = Command::new(find_tool("tshark")).args(["-G", "fields"]).stderr(Stdio::null()).output().unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("\t_ws.col.info\t") {
            "_ws.col.info"
        } else {
            "_ws.col.Info"
        }
    })
}

/// Dissectors that tshark registers on a TCP port the capture uses (they
/// would take those connections before ours, whatever our preferences say).
fn protocols_on_capture_ports(tshark: &Path, capture: &Path, dir: &Path) -> Vec<String> {
    let mut cmd = Command::new(tshark);
    cmd.arg("-n").arg("-r").arg(capture).args(["-T", "fields", "-e", "tcp.srcport", "-e", "tcp.dstport"]);
    let out = run_bounded(cmd, dir, "ports", TSHARK_DEADLINE);
    let ports: BTreeSet<u16> =
        String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
    let mut cmd = Command::new(tshark);
    cmd.args(["-G", "decodes"]);
    let out = run_bounded(cmd, dir, "decodes", TSHARK_DEADLINE);
    let names: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut cols = l.split('\t');
            let (table, port, proto) = (cols.next()?, cols.next()?, cols.next()?);
            let port: u16 = port.trim().parse().ok()?;
            (table == "tcp.port" && ports.contains(&port)).then(|| proto.trim().to_owned())
        })
        .collect();
    names.into_iter().collect()
}

/// The four checks common to both live tests: the capture is whole, nothing
/// is malformed or an error, and every STATUS answers a message.
impl Tshark {
    fn for_capture(capture: PathBuf, dir: &Path) -> Self {
        let bin = find_tool("tshark");
        Tshark {
            disabled: protocols_on_capture_ports(&bin, &capture, dir),
            bin,
            capture,
            dissector: dissector_path(),
            dir: dir.to_path_buf(),
        }
    }

    fn check_clean(&self, prefs: &[String]) {
        let lost = self.run("lost", prefs, &["-Y", "tcp.analysis.lost_segment or tcp.analysis.ack_lost_segment", "-T", "fields", "-e", "frame.number"]);
        assert!(lost.trim().is_empty(), "the capture missed segments (frames {lost}); dumpcap dropped packets?");
        let bad = self.run(
            "errors",
            prefs,
            &["-Y", "_ws.malformed or _ws.expert.severity >= error or _ws.lua.error", "-T", "fields", "-e", "frame.number", "-e", info_column()],
        );
        assert!(bad.trim().is_empty(), "malformed or erroneous frames:\n{bad}");
        let unmatched = self.run("unmatched", prefs, &["-Y", "dropsync.expert.unmatched_status", "-T", "fields", "-e", "frame.number"]);
        assert!(unmatched.trim().is_empty(), "STATUS answering nothing in frames:\n{unmatched}");
    }
}

fn compare(log: &Log, got: &[Dissected], how: &str) {
    let mut seen: BTreeMap<Way, Vec<String>> = BTreeMap::new();
    for d in got {
        seen.entry(d.way).or_default().push(d.what.clone());
    }
    let dir = |to_server: bool| if to_server { "client -> server" } else { "server -> client" };
    compare_ways(&log.0, seen, how, "the peer wrote/read", |way| format!("port {} {}", way.0, dir(way.1)));
}

/// Fails unless `have` (the dissector's) holds exactly the messages of
/// `want`, in order, per key; `source` says where `want` comes from.
fn compare_ways<K: Ord + std::fmt::Debug>(
    want: &BTreeMap<K, Vec<String>>,
    mut have: BTreeMap<K, Vec<String>>,
    how: &str,
    source: &str,
    show: impl Fn(&K) -> String,
) {
    for (key, want) in want {
        let have = have.remove(key).unwrap_or_default();
        if &have != want {
            let mut msg = format!("{how}: {}: dissected messages differ from what {source}\n", show(key));
            for i in 0..want.len().max(have.len()) {
                let w = want.get(i).map_or("-", String::as_str);
                let h = have.get(i).map_or("-", String::as_str);
                let mark = if w == h { "  " } else { "!!" };
                msg.push_str(&format!("{mark} #{i}\n     expected:  {w}\n     dissector: {h}\n"));
            }
            panic!("{msg}");
        }
    }
    assert!(have.is_empty(), "{how}: dissected messages on connections {source} did not have: {have:?}");
}

#[test]
fn dissector_decodes_a_real_session() {
    let started = Instant::now();
    find_tool("tshark");
    find_tool("dumpcap");
    let tmp = TempDir::new("wireshark");
    let s = ServerProc::start(&tmp.join("root"), &["--chunk-size", "65536", "--keepalive-secs", "600"]);
    let server_ports = [s.send_port, s.recv_port];

    let capture = Capture::start(tmp.path(), &server_ports);
    let log = run_session(&s);
    let file = capture.stop();
    let captured = started.elapsed();
    keep_capture(&file, "session");
    let ts = Tshark::for_capture(file, tmp.path());
    let prefs = vec![format!("dropsync.send_port:{}", s.send_port), format!("dropsync.receive_port:{}", s.recv_port)];

    // The capture is whole; nothing malformed or an error (an unknown type
    // or a Lua error would be); every STATUS answers an outstanding message.
    ts.check_clean(&prefs);

    // The ports as preferences (heuristic off): every message, field by
    // field, in order, per connection and direction.
    let pdml = ts.run("pdml-prefs", &prefs, &["--disable-heuristic", "dropsync_tcp", "-T", "pdml", "-Y", "dropsync"]);
    let got = parse_pdml(&pdml, server_ports);
    for conn in ["send", "receive"] {
        assert!(
            pdml.contains(&format!("<field name=\"dropsync.connection\" showname=\"Connection: {conn}\"")),
            "no message marked as on the {conn} connection: the port preferences did not apply"
        );
    }
    compare(&log, &got, "ports from preferences");
    let locked = got.iter().find(|d| d.what == "STATUS 0x0040").expect("a 0x0040");
    assert!(locked.reply_to.as_deref().is_some_and(|r| r.starts_with("FILE_CHUNK locked.txt")), "{:?}", locked.reply_to);
    let copy_reply = got.iter().find(|d| d.reply_to.as_deref() == Some(r#"COPY "big.bin" -> "copy.bin""#));
    let copy_reply = copy_reply.map(|d| &d.what);
    assert!(copy_reply.is_some_and(|w| w == "STATUS 0x0001"), "the COPY's reply: {copy_reply:?}");
    // Several messages shared a segment, and messages spanned segments.
    let mut per_frame: BTreeMap<u64, usize> = BTreeMap::new();
    for d in &got {
        *per_frame.entry(d.frame).or_default() += 1;
    }
    assert!(per_frame.values().any(|&n| n >= 4), "no segment carried the 4 pipelined messages");
    assert!(pdml.contains("name=\"tcp.reassembled.length\""), "no message was reassembled from segments");

    // Info column summaries.
    let info = ts.run("info", &prefs, &["-Y", "dropsync", "-T", "fields", "-e", info_column()]);
    for want in [
        "HELLO alice a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
        "HELLO (no label) c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3c3",
        "FILE_CHUNK big.bin (65536 bytes)",
        "FILE_CHUNK big.bin (8192 bytes)",
        "STATUS 0x8000 keep-alive, FILE_CHUNK a.txt (6 bytes), FILE_CHUNK sub/b.txt (7 bytes), REQUEST big.bin",
        "STATUS 0x0040 abort: file locked",
        "STATUS 0x0002 resend: checksum incorrect",
        "STATUS 0x0100 abort: bad request",
        "STATUS 0x0020 no file to delete",
        "FINISHED a.txt",
        "ABORT c.txt",
        "DELETE a.txt",
        "DELETE ../x",
        "REQUEST nope",
        "REQUEST .dropsync-ext/copy",
        r#"COPY "big.bin" -> "copy.bin""#,
        "STATUS 0x0001 OK",
    ] {
        assert!(info.contains(want), "no Info column contains {want:?}:\n{info}");
    }

    // No port preferences: the heuristic finds every connection by its HELLO.
    let no_ports = ["dropsync.send_port:0".to_string(), "dropsync.receive_port:0".to_string()];
    let pdml = ts.run("pdml-heuristic", &no_ports, &["-T", "pdml", "-Y", "dropsync"]);
    compare(&log, &parse_pdml(&pdml, server_ports), "heuristic (no port preferences)");

    eprintln!(
        "wireshark test: session+capture {:.1?}, total {:.1?}, {} messages on {} connection directions",
        captured,
        started.elapsed(),
        log.0.values().map(Vec::len).sum::<usize>(),
        log.0.len()
    );
}

/// DROPSYNC_KEEP_CAPTURE=<folder> keeps a copy of each capture to look at.
fn keep_capture(file: &Path, tag: &str) {
    if let Some(dir) = std::env::var_os("DROPSYNC_KEEP_CAPTURE") {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(file, dir.join(format!("dropsync-{tag}.pcapng"))).unwrap();
    }
}

/// `client --once` sometimes exits without answering the FINISHED of its last
/// download: it records the file, finds nothing left to do and closes its
/// sockets before the STATUS is written (dropsync-client incoming.rs
/// `on_finished` calls `self.ended(..)` before `self.reply(..)`). Seen in about
/// one run in three. Until that is fixed, that one missing reply is reported
/// on stderr rather than failed; set this to false once it is.
const TOLERATE_UNANSWERED_LAST_DELIVERY: bool = false;

/// Two real clients (`client --once`): alice uploads a folder, bob gets it.
/// Their message order is theirs to choose, so this checks what must hold
/// whatever it is: pairing, one reply per message, and files rebuilt from
/// the dissected chunk payloads equal to the files on disk. Then both run
/// with the watcher on and alice renames big.bin (`rename_with_live_clients`):
/// a COPY to the server, then a COPY from it to bob. The test decodes the
/// capture itself (`decode_capture`: the TCP payloads reassembled here,
/// parsed by dropsync-proto), and the dissector must show exactly those
/// messages on every connection, both COPYs and the COPY offers included.
#[test]
fn dissector_decodes_real_clients() {
    let started = Instant::now();
    find_tool("tshark");
    find_tool("dumpcap");
    let tmp = TempDir::new("wireshark-clients");
    let s = ServerProc::start(
        &tmp.join("root"),
        &["--chunk-size", "65536", "--keepalive-secs", "600", "--http", "127.0.0.1:0"],
    );
    let server_ports = [s.send_port, s.recv_port];
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i.wrapping_mul(40_503) >> 7) as u8).collect();
    let files: [(&str, &[u8]); 2] = [("big.bin", &big), ("dir/hi.txt", b"hello\n")];
    let (a, b) = (tmp.join("alice"), tmp.join("bob"));
    for (name, data) in files {
        let p = a.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(&b).unwrap();

    let capture = Capture::start(tmp.path(), &server_ports);
    for (folder, label) in [(&a, "alice"), (&b, "bob")] {
        let st = ClientProc::run_once(&s, folder, 64 * 1024, &["--label", label], DEFAULT_DEADLINE);
        let log = std::fs::read_to_string(folder.with_extension("client.log")).unwrap_or_default();
        assert!(st.is_some_and(|st| st.success()), "client {label} --once: {st:?}\n{log}\nserver:\n{}", s.log());
    }
    for (name, data) in files {
        assert!(std::fs::read(b.join(name)).unwrap() == data, "bob's {name} differs");
    }
    rename_with_live_clients(&s, [(&a, "alice"), (&b, "bob")], &[], &[], ("big.bin", "moved.bin"));
    let file = capture.stop();
    keep_capture(&file, "clients");
    let ts = Tshark::for_capture(file, tmp.path());
    let prefs = vec![format!("dropsync.send_port:{}", s.send_port), format!("dropsync.receive_port:{}", s.recv_port)];
    ts.check_clean(&prefs);
    let got = parse_pdml(&ts.run("pdml-clients", &prefs, &["-T", "pdml", "-Y", "dropsync"]), server_ports);
    // Exactly what the test decodes itself, message for message.
    let own = decode_capture(&ts, server_ports);
    let mut dissected: BTreeMap<(u64, bool), Vec<String>> = BTreeMap::new();
    for d in &got {
        dissected.entry((d.stream, d.way.1)).or_default().push(d.what.clone());
    }
    let dir = |to_server: bool| if to_server { "client -> server" } else { "server -> client" };
    compare_ways(&own, dissected, "real clients", "the test decoded", |k| format!("TCP stream {} {}", k.0, dir(k.1)));
    check_real_clients(&got, &files, 2);
    check_copy(&got, server_ports, ("big.bin", "moved.bin"), &md5(&big));
    let copy = format!("COPY \"big.bin\" -> \"moved.bin\" md5={}", hex(&md5(&big)));
    for to_server in [true, false] {
        let n = own.iter().filter(|(k, _)| k.1 == to_server).flat_map(|(_, v)| v).filter(|m| **m == copy).count();
        assert_eq!(n, 1, "the test decoded {n} times {copy} ({})", dir(to_server));
    }
    let info = ts.run("info-clients", &prefs, &["-Y", "dropsync", "-T", "fields", "-e", info_column()]);
    for want in ["REQUEST .dropsync-ext/copy", r#"COPY "big.bin" -> "moved.bin""#, "DELETE big.bin"] {
        assert!(info.contains(want), "no Info column contains {want:?}:\n{info}");
    }
    // Real clients break no naming rule: the COPY offer's reserved name and
    // the COPY's names are not flagged.
    let bad_names = ["-Y", "dropsync.expert.bad_name", "-T", "fields", "-e", info_column()];
    let bad_names = ts.run("bad-names-clients", &prefs, &bad_names);
    assert!(bad_names.trim().is_empty(), "names flagged as bad:\n{bad_names}");
    eprintln!("wireshark clients test: {:.1?}, {} messages", started.elapsed(), got.len());
}

/// The server's counter `name` (`dropsync_<name>_total`) from /metrics.
fn counter(s: &ServerProc, name: &str) -> u64 {
    let (status, text) = http_get(s.http_port.expect("the server runs with --http"), "/metrics");
    assert_eq!(status, 200);
    let key = format!("dropsync_{name}_total ");
    text.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Waits until every file under `dirs` was last written more than the
/// client's racy window (2 s, `scan::RACY_WINDOW`) ago: before, a stat
/// proves nothing about content, and a rename is sent whole.
fn past_racy_window(dirs: &[&Path]) {
    let racy = Duration::from_millis(2100);
    let settled = || {
        dirs.iter().all(|d| {
            dropsync_testkit::tree(d).keys().all(|name| {
                let modified = std::fs::metadata(d.join(name)).and_then(|m| m.modified()).unwrap();
                modified.elapsed().is_ok_and(|age| age > racy)
            })
        })
    };
    assert!(wait_until(DEFAULT_DEADLINE, settled), "files still inside the racy window");
}

/// Runs the two clients (`[alice, bob]`, in sync) with the watcher on until
/// both have offered COPY and had it taken; once their files are past the
/// racy window, alice renames `from` to `to`. That reaches the server as a
/// COPY (copies_in) and bob as a COPY of his `from` (copies_out, acked),
/// then bob gets the DELETE of `from` (deletes_out, acked); no chunk byte
/// moves either way. Both then stop (SIGTERM, exit 0). `extra` and `env`
/// are for both clients.
fn rename_with_live_clients(
    s: &ServerProc,
    clients: [(&Path, &str); 2],
    extra: &[&str],
    env: &[(&str, &std::ffi::OsStr)],
    (from, to): (&str, &str),
) {
    let mut env = env.to_vec();
    // The COPY offer's outcome is a debug line.
    env.push(("RUST_LOG", std::ffi::OsStr::new("debug")));
    let mut procs: Vec<(ClientProc, usize)> = clients
        .iter()
        .map(|(folder, label)| {
            // The log file is appended to: the --once run's lines come first.
            let logged = std::fs::metadata(folder.with_extension("client.log")).map_or(0, |m| m.len() as usize);
            // No listing of what changed since ([ext] META-DATA since a
            // version) during the rename: its bytes would count.
            let mut args = vec!["--label", label, "--checkpoint-secs", "3600"];
            args.extend_from_slice(extra);
            (ClientProc::start_with_env(s, folder, 64 * 1024, &args, &env), logged)
        })
        .collect();
    for (c, logged) in &procs {
        let offered = wait_until(DEFAULT_DEADLINE, || {
            c.log().get(*logged..).is_some_and(|l| l.contains("COPY offer: Committed"))
        });
        assert!(offered, "the COPY offer was not taken:\n{}\nserver:\n{}", c.log(), s.log());
    }
    let folders: Vec<&Path> = clients.iter().map(|(f, _)| *f).collect();
    past_racy_window(&folders);
    let before = |name: &str| counter(s, name);
    let (copies_in, copies_out, deletes_out) = (before("copies_in"), before("copies_out"), before("deletes_out"));
    let (bytes_in, bytes_out) = (before("bytes_in"), before("bytes_out"));
    std::fs::rename(folders[0].join(from), folders[0].join(to)).unwrap();
    let delivered = wait_until(DEFAULT_DEADLINE, || {
        counter(s, "copies_in") == copies_in + 1
            && counter(s, "copies_out") == copies_out + 1
            && counter(s, "deletes_out") == deletes_out + 1
    });
    let logs = || format!("{}\n-----\n{}\n-----\nserver:\n{}", procs[0].0.log(), procs[1].0.log(), s.log());
    assert!(delivered, "the rename did not go as a COPY to the server and from it to bob:\n{}", logs());
    assert_eq!(
        (counter(s, "bytes_in"), counter(s, "bytes_out")),
        (bytes_in, bytes_out),
        "chunk bytes moved:\n{}",
        logs()
    );
    let want = std::fs::read(folders[0].join(to)).unwrap();
    assert!(std::fs::read(folders[1].join(to)).is_ok_and(|d| d == want), "bob's {to} differs");
    assert!(!folders[1].join(from).exists(), "bob still has {from}");
    for (c, _) in &mut procs {
        let st = c.terminate();
        assert!(st.is_some_and(|st| st.success()), "client on SIGTERM: {st:?}\n{}", c.log());
    }
}

/// What must hold of two real clients' session, whatever order they chose:
/// alice uploaded `files`, bob downloaded them, each client ran `runs` times.
/// Each connection opens with a HELLO and all of a client's share its id;
/// every message got exactly one reply; the files rebuilt from the dissected
/// chunk payloads, alice's uploads and bob's downloads, are `files`, and each
/// FINISHED carries the MD5 of its chunks.
fn check_real_clients(got: &[Dissected], files: &[(&str, &[u8])], runs: usize) {
    // One connection and direction: (TCP stream, towards the server?).
    let mut ways: BTreeMap<(u64, bool), Vec<&Dissected>> = BTreeMap::new();
    for d in got {
        ways.entry((d.stream, d.way.1)).or_default().push(d);
    }
    // Each connection opens with HELLO; all of a client's share its id.
    let mut by_label: BTreeMap<String, Vec<(u16, String)>> = BTreeMap::new();
    for ((_, to_server), msgs) in &ways {
        if *to_server {
            let first = msgs[0];
            let port = first.way.0;
            assert_eq!(first.ty, 7, "connection from port {port} opens with {}", first.what);
            by_label.entry(first.name.clone()).or_default().push((port, first.what.clone()));
        }
    }
    assert_eq!(by_label.keys().collect::<Vec<_>>(), ["alice", "bob"], "{by_label:?}");
    for (label, conns) in &by_label {
        assert_eq!(conns.len(), 2 * runs, "{label}: {conns:?}");
        assert!(conns.iter().all(|c| c.1 == conns[0].1), "{label}'s HELLOs differ: {conns:?}");
    }
    // Every message got exactly one reply by the time the clients exited.
    for ((stream, to_server), msgs) in &ways {
        let port = msgs[0].way.0;
        let asked = msgs.iter().filter(|d| d.ty != 2).count();
        let answered = ways
            .get(&(*stream, !to_server))
            .map_or(0, |v| v.iter().filter(|d| d.ty == 2 && d.what != "STATUS 0x8000").count());
        let last = msgs.last().map_or("", |d| d.what.as_str());
        if TOLERATE_UNANSWERED_LAST_DELIVERY && !to_server && asked == answered + 1 && last.starts_with("FINISHED") {
            eprintln!("KNOWN CLIENT BUG: the client on port {port} exited without answering its last delivery: {last}");
            continue;
        }
        assert_eq!(asked, answered, "port {port} {}: {asked} messages, {answered} replies", if *to_server { "->" } else { "<-" });
    }
    // Files rebuilt from the chunk payloads the dissector delimited: alice's
    // uploads on her connections to the server, bob's downloads from it.
    let rebuilt = |to_server: bool| -> BTreeMap<String, Vec<u8>> {
        let mut open: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut done = BTreeMap::new();
        for d in got.iter().filter(|d| d.way.1 == to_server && !d.name.starts_with(".dropsync")) {
            match d.ty {
                1 => {
                    assert!(!d.what.contains(" (PAYLOAD") && !d.what.contains(" (digest"), "frame {}: {}", d.frame, d.what);
                    assert!(d.payload.len() <= 64 * 1024, "frame {}: chunk above 64 KiB: {}", d.frame, d.what);
                    open.entry(d.name.clone()).or_default().extend_from_slice(&d.payload);
                }
                3 => {
                    let data = open.remove(&d.name).unwrap_or_default();
                    assert!(d.what.ends_with(&hex(&md5(&data))), "frame {}: FINISHED md5 is not that of the chunks: {}", d.frame, d.what);
                    done.insert(d.name.clone(), data);
                }
                _ => {}
            }
        }
        done
    };
    let want: BTreeMap<String, Vec<u8>> = files.iter().map(|(n, d)| (n.to_string(), d.to_vec())).collect();
    assert!(rebuilt(true) == want, "uploads rebuilt from the capture differ from alice's files");
    assert!(rebuilt(false) == want, "downloads rebuilt from the capture differ from alice's files");
}

/// The COPY [ext] of `from` to `to` (content MD5 `digest`) crossed the wire
/// exactly once each way, as the dissector shows it: alice's on her send
/// connection, the server's to bob on his receive connection, each answered
/// OK (the dissector matching the reply to it); and every COPY offer (a
/// REQUEST of the reserved name) was answered OK.
fn check_copy(got: &[Dissected], server_ports: [u16; 2], (from, to): (&str, &str), digest: &[u8]) {
    let want = format!("COPY {from:?} -> {to:?} md5={}", hex(digest));
    let summary = format!("COPY {from:?} -> {to:?}");
    for (to_server, server_port) in [(true, server_ports[0]), (false, server_ports[1])] {
        let copies: Vec<&Dissected> = got.iter().filter(|d| d.ty == 8 && d.way.1 == to_server).collect();
        let shown: Vec<(u16, &str)> = copies.iter().map(|d| (d.server_port, d.what.as_str())).collect();
        assert_eq!(
            shown,
            [(server_port, want.as_str())],
            "COPYs {}",
            if to_server { "to the server" } else { "from it" }
        );
        let reply = got
            .iter()
            .filter(|d| d.stream == copies[0].stream && d.way.1 != to_server)
            .find(|d| d.reply_to.as_deref() == Some(summary.as_str()));
        assert!(
            reply.is_some_and(|r| r.what == "STATUS 0x0001"),
            "frame {}: no STATUS 0x0001 answers {summary}: {:?}",
            copies[0].frame,
            reply.map(|r| &r.what)
        );
    }
    let offer = format!("REQUEST {COPY_OFFER_NAME:?} md5={}", hex(&ZERO_DIGEST));
    let offers = got.iter().filter(|d| d.way.1 && d.what == offer).count();
    let offer_summary = format!("REQUEST {COPY_OFFER_NAME}");
    let taken = got
        .iter()
        .filter(|d| d.what == "STATUS 0x0001" && d.reply_to.as_deref() == Some(offer_summary.as_str()))
        .count();
    assert!(offers >= 2 && taken == offers, "{offers} COPY offers, {taken} answered OK");
}

/// The test's own decoding of every dropsync connection in the capture,
/// keyed by (TCP stream, towards the server?): each direction's bytes are
/// put together here from the segments' raw TCP payloads (tshark without
/// this dissector only lists the segments: stream, ports, raw sequence
/// number, payload), in sequence order (retransmitted bytes once), and
/// parsed with dropsync-proto, each message reduced by `describe_frame`.
fn decode_capture(ts: &Tshark, server_ports: [u16; 2]) -> BTreeMap<(u64, bool), Vec<String>> {
    let mut cmd = Command::new(&ts.bin);
    cmd.arg("-n").arg("-r").arg(&ts.capture);
    let filter = format!("tcp.len > 0 and (tcp.port == {} or tcp.port == {})", server_ports[0], server_ports[1]);
    cmd.args(["-Y", &filter, "-T", "fields"]);
    for f in ["tcp.stream", "tcp.dstport", "tcp.seq_raw", "tcp.payload"] {
        cmd.args(["-e", f]);
    }
    let out = run_bounded(cmd, &ts.dir, "own-decode", TSHARK_DEADLINE);
    assert!(out.status.success(), "tshark (segments): {}", String::from_utf8_lossy(&out.stderr));
    // (stream, to server) -> (next sequence number, bytes so far)
    let mut streams: BTreeMap<(u64, bool), (u32, Vec<u8>)> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 4, "tshark segment line: {line:?}");
        let stream: u64 = cols[0].parse().unwrap();
        let to_server = server_ports.contains(&cols[1].parse().unwrap());
        let seq: u32 = cols[2].parse().unwrap();
        let data = unhex(&cols[3].replace(':', ""));
        assert!(!data.is_empty(), "segment without its payload: {line:?}");
        let (next, bytes) = streams.entry((stream, to_server)).or_insert((seq, Vec::new()));
        // Sequence numbers wrap: compare by difference.
        let ahead = seq.wrapping_sub(*next) as i32;
        assert!(ahead <= 0, "stream {stream}: {ahead} bytes missing before seq {seq}");
        let skip = ahead.unsigned_abs() as usize;
        if skip < data.len() {
            bytes.extend_from_slice(&data[skip..]);
            *next = seq.wrapping_add(data.len() as u32);
        }
    }
    streams
        .into_iter()
        .map(|(key, (_, bytes))| {
            let mut msgs = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                match dropsync_proto::parse(rest) {
                    Ok(Some((frame, used))) => {
                        msgs.push(describe_frame(&frame));
                        rest = &rest[used..];
                    }
                    Ok(None) => panic!("stream {key:?} ends inside a message: {} bytes left", rest.len()),
                    Err(e) => panic!("stream {key:?}: the test cannot decode its message {}: {e}", msgs.len()),
                }
            }
            (key, msgs)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Secure mode: the same over TLS, decrypted with SSLKEYLOGFILE
// ---------------------------------------------------------------------------

/// The server's fingerprint, as `server fingerprint --root` prints it.
fn server_fingerprint(s: &ServerProc, dir: &Path) -> String {
    let mut cmd = Command::new(bin_path("server"));
    cmd.arg("fingerprint").arg("--root").arg(&s.root);
    let out = run_bounded(cmd, dir, "fingerprint", DEFAULT_DEADLINE);
    let fp = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(out.status.success() && !fp.is_empty(), "server fingerprint: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    fp
}

/// The client randoms of the TLS 1.3 sessions an NSS key log has the
/// application traffic secrets of.
fn key_log_randoms(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(!text.trim().is_empty(), "{} is empty: SSLKEYLOGFILE not honoured", path.display());
    text.lines()
        .filter_map(|l| l.strip_prefix("CLIENT_TRAFFIC_SECRET_0 "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// Secure mode: two real clients (`client --once --server-fingerprint`) sync
/// over TLS 1.3 while dumpcap captures, the server and the clients writing
/// the TLS secrets to SSLKEYLOGFILE (one file for the server, one for both
/// clients); then both run with the watcher on and alice renames big.bin (a
/// COPY each way, as in `dissector_decodes_real_clients`). With the server's
/// key log and the ports as preferences (the heuristics off: TLS finds this
/// dissector in "tls.port") tshark shows the decrypted messages, and they
/// pass `check_real_clients`, `check_copy` and the checks of the plain tests
/// (nothing malformed, every STATUS answers a message), with
/// META-DATA on each receive connection and the multi-chunk file in 64 KiB
/// chunks; with the clients' key log and no ports (TLS's heuristic, then
/// dropsync_tls) it shows the same. Without a key log it shows TLS and no
/// dropsync, and the capture holds none of the files' bytes in clear.
#[test]
fn dissector_decodes_a_tls_session() {
    let started = Instant::now();
    find_tool("tshark");
    find_tool("dumpcap");
    let tmp = TempDir::new("wireshark-tls");
    let (server_keys, client_keys) = (tmp.join("server.keys"), tmp.join("clients.keys"));
    let s = ServerProc::start_with_env(
        &tmp.join("root"),
        &["--chunk-size", "65536", "--keepalive-secs", "600", "--http", "127.0.0.1:0"],
        &[("SSLKEYLOGFILE", server_keys.as_os_str())],
    );
    let server_ports = [s.send_port, s.recv_port];
    let fp = server_fingerprint(&s, tmp.path());
    let big: Vec<u8> = (0..200 * 1024u32).map(|i| (i.wrapping_mul(2_246_822_519) >> 13) as u8).collect();
    let secret: &[u8] = b"this line only ever crosses the wire encrypted\n";
    let files: [(&str, &[u8]); 2] = [("big.bin", &big), ("dir/secret.txt", secret)];
    let (a, b) = (tmp.join("alice"), tmp.join("bob"));
    for (name, data) in files {
        let p = a.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(&b).unwrap();

    let capture = Capture::start(tmp.path(), &server_ports);
    for (folder, label) in [(&a, "alice"), (&b, "bob")] {
        let args = ["--once", "--label", label, "--server-fingerprint", &fp];
        let env = [("SSLKEYLOGFILE", client_keys.as_os_str())];
        let mut c = ClientProc::start_with_env(&s, folder, 64 * 1024, &args, &env);
        let st = c.wait(DEFAULT_DEADLINE);
        assert!(st.is_some_and(|st| st.success()), "client {label} --once: {st:?}\n{}\nserver:\n{}", c.log(), s.log());
    }
    for (name, data) in files {
        assert!(std::fs::read(b.join(name)).unwrap() == data, "bob's {name} differs");
    }
    // Then with the watcher on: alice renames big.bin, a COPY each way.
    let env = [("SSLKEYLOGFILE", client_keys.as_os_str())];
    let live = ["--server-fingerprint", fp.as_str()];
    rename_with_live_clients(&s, [(&a, "alice"), (&b, "bob")], &live, &env, ("big.bin", "moved.bin"));
    let file = capture.stop();
    keep_capture(&file, "tls");
    let wire = std::fs::read(&file).unwrap();
    assert!(!contains(&wire, secret), "secret.txt's content is in the capture in clear");
    assert!(!contains(&wire, &big[100_000..100_064]), "big.bin's content is in the capture in clear");

    let mut ts = Tshark::for_capture(file, tmp.path());
    ts.disabled.retain(|p| p != "tls");
    let ports = vec![format!("dropsync.send_port:{}", s.send_port), format!("dropsync.receive_port:{}", s.recv_port)];
    let keys = |f: &Path| format!("tls.keylog_file:{}", f.display());

    // Without a key log: TLS, and nothing tshark could read as dropsync.
    let no_keys = ts.run(
        "tls-no-keys",
        &ports,
        &["-Y", "dropsync or _ws.malformed or _ws.expert.severity >= error or _ws.lua.error", "-T", "fields", "-e", "frame.number"],
    );
    assert!(no_keys.trim().is_empty(), "without the key log, frames show dropsync or errors: {no_keys}");
    let fields = |tag: &str, filter: &str, field: &str| -> BTreeSet<String> {
        ts.run(tag, &ports, &["-Y", filter, "-T", "fields", "-e", field]).split_whitespace().map(str::to_owned).collect()
    };
    let app_data_frames = fields("tls-app-data", "tls.app_data", "frame.number");
    let hellos: BTreeSet<String> =
        fields("tls-client-hellos", "tls.handshake.type == 1", "tls.handshake.random").iter().map(|r| r.replace(':', "")).collect();
    assert_eq!(hellos.len(), 8, "expected 8 TLS connections (2 per client run, 2 runs each): {hellos:?}");
    // Both programs wrote the secrets of every session.
    for (whose, log) in [("server's", &server_keys), ("clients'", &client_keys)] {
        let have = key_log_randoms(log);
        let missing: Vec<&String> = hellos.difference(&have).collect();
        assert!(missing.is_empty(), "the {whose} key log lacks the sessions of client randoms {missing:?}");
    }

    // With the server's key log, the ports as preferences, heuristics off.
    let prefs = [ports.clone(), vec![keys(&server_keys)]].concat();
    ts.check_clean(&prefs);
    let off = ["--disable-heuristic", "dropsync_tcp", "--disable-heuristic", "dropsync_tls"];
    let pdml = ts.run("tls-pdml-ports", &prefs, &[&off[..], &["-T", "pdml", "-Y", "dropsync"]].concat());
    let got = parse_pdml(&pdml, server_ports);
    for conn in ["send", "receive"] {
        assert!(
            pdml.contains(&format!("<field name=\"dropsync.connection\" showname=\"Connection: {conn}\"")),
            "no message marked as on the {conn} connection: the port preferences did not apply"
        );
    }
    check_real_clients(&got, &files, 2);
    check_copy(&got, server_ports, ("big.bin", "moved.bin"), &md5(&big));
    // Every message came out of TLS: its frame is one tshark shows as
    // encrypted application data without the key log.
    let plain: Vec<&Dissected> = got.iter().filter(|d| !app_data_frames.contains(&d.frame.to_string())).collect();
    assert!(plain.is_empty(), "messages in frames that are not TLS application data: {:?}", plain.iter().map(|d| d.frame).collect::<Vec<_>>());
    // META-DATA to each client run; big.bin up in 64 KiB chunks; every STATUS OK.
    let metadata: BTreeSet<u64> =
        got.iter().filter(|d| !d.way.1 && d.ty == 3 && d.name == ".dropsync-metadata").map(|d| d.stream).collect();
    assert_eq!(metadata.len(), 4, "META-DATA transfers on TCP streams {metadata:?}, want one per client run");
    let sizes: Vec<usize> = got.iter().filter(|d| d.way.1 && d.ty == 1 && d.name == "big.bin").map(|d| d.payload.len()).collect();
    assert_eq!(sizes, [65536, 65536, 65536, 8192], "big.bin's uploaded chunks");
    for d in got.iter().filter(|d| d.ty == 2) {
        assert!(d.what == "STATUS 0x0001" || d.what == "STATUS 0x8000", "frame {}: {}", d.frame, d.what);
        assert!(d.what == "STATUS 0x8000" || d.reply_to.is_some(), "frame {}: {} answers nothing", d.frame, d.what);
    }
    let info = ts.run("tls-info", &prefs, &["-Y", "dropsync", "-T", "fields", "-e", info_column()]);
    let copy = r#"COPY "big.bin" -> "moved.bin""#;
    let wants = ["HELLO alice ", "HELLO bob ", "FILE_CHUNK big.bin (65536 bytes)", "FINISHED dir/secret.txt", copy];
    for want in wants.into_iter().chain(["STATUS 0x0001 OK"]) {
        assert!(info.contains(want), "no Info column contains {want:?}:\n{info}");
    }

    // With the clients' key log and no ports: found by the heuristics.
    let no_ports = ["dropsync.send_port:0".to_string(), "dropsync.receive_port:0".to_string(), keys(&client_keys)];
    let again = parse_pdml(&ts.run("tls-pdml-heuristic", &no_ports, &["-T", "pdml", "-Y", "dropsync"]), server_ports);
    let seen = |v: &[Dissected]| -> Vec<(u64, Way, String)> { v.iter().map(|d| (d.frame, d.way, d.what.clone())).collect() };
    assert!(seen(&again) == seen(&got), "the clients' key log and the heuristics show other messages than the server's and the ports");

    eprintln!("wireshark TLS test: {:.1?}, {} messages in {} TLS connections", started.elapsed(), got.len(), hellos.len());
}

// ---------------------------------------------------------------------------
// Rule breaks, on crafted bytes
// ---------------------------------------------------------------------------

/// Writes a classic pcap of raw IPv4 packets: one TCP connection between
/// 10.0.0.1:`client` and 10.0.0.2:`server`, handshake first, then each
/// segment `(to_server, bytes)` with consistent sequence numbers.
fn write_pcap(path: &Path, client: u16, server: u16, segments: &[(bool, Vec<u8>)]) {
    const LINKTYPE_IPV4: u32 = 228;
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    for v in [0u32, 0, 262_144, LINKTYPE_IPV4] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    let (mut cseq, mut sseq) = (1000u32, 5000u32);
    let mut n = 0u32;
    let mut packet = |out: &mut Vec<u8>, to_server: bool, flags: u8, seq: u32, ack: u32, data: &[u8]| {
        let (src, dst, sport, dport) = if to_server { ([10, 0, 0, 1], [10, 0, 0, 2], client, server) } else { ([10, 0, 0, 2], [10, 0, 0, 1], server, client) };
        let total = (20 + 20 + data.len()) as u16;
        let mut p = vec![0x45, 0];
        p.extend_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ack.to_be_bytes());
        p.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
        p.extend_from_slice(data);
        n += 1;
        for v in [1_700_000_000u32, n * 1000, p.len() as u32, p.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&p);
    };
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    const PSH_ACK: u8 = 0x18;
    packet(&mut out, true, SYN, cseq, 0, &[]);
    packet(&mut out, false, SYN | ACK, sseq, cseq + 1, &[]);
    cseq += 1;
    sseq += 1;
    packet(&mut out, true, ACK, cseq, sseq, &[]);
    for (to_server, data) in segments {
        if *to_server {
            packet(&mut out, true, PSH_ACK, cseq, sseq, data);
            cseq += data.len() as u32;
        } else {
            packet(&mut out, false, PSH_ACK, sseq, cseq, data);
            sseq += data.len() as u32;
        }
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn dissector_flags_rule_breaks_and_unknown_types() {
    let tshark = find_tool("tshark");
    let tmp = TempDir::new("wireshark-crafted");
    let (client, server) = (40_000u16, 9_000u16);
    let hello = Frame::Hello { client_id: [0xee; 16], label: "" }.to_vec();
    let zero_chunk = Frame::Chunk { digest: md5(b""), name: "../x", payload: b"" }.to_vec();
    // A DELETE whose name is not UTF-8 (0xff 0xfe).
    let mut bad_utf8 = vec![0x05, 0x00];
    bad_utf8.extend_from_slice(&[0; 16]);
    bad_utf8.extend_from_slice(&[2, 0, 0xff, 0xfe]);
    let st = |c: u16| Frame::Status(StatusCode(c)).to_vec();
    let keep_alive = st(0x8000);
    // [ext] The COPY offer, a COPY, and a COPY with a bad name on each side.
    let offer = Frame::Request { digest: ZERO_DIGEST, name: COPY_OFFER_NAME }.to_vec();
    let copy = Frame::Copy { digest: md5(b"x"), from: "a.txt", name: "b/c.txt" }.to_vec();
    let bad_copy = Frame::Copy { digest: ZERO_DIGEST, from: "../up", name: ".dropsync-metadata" }.to_vec();
    let name_len_at = 2 + 16 + 2 + "a.txt".len();
    let segments = vec![
        // A HELLO split inside its type field's neighbourhood: 3 bytes, then the rest.
        (true, hello[..3].to_vec()),
        (true, hello[3..].to_vec()),
        (false, st(0x0201)),
        (true, [zero_chunk, bad_utf8].concat()),
        (false, [st(0x0004), st(0x0100)].concat()),
        // One STATUS too many.
        (false, st(0x0001)),
        // A COPY in three segments: cut inside its from_len, then inside its
        // name_len (each time its length is not known yet).
        (true, [offer, copy[..19].to_vec()].concat()),
        (true, copy[19..name_len_at + 1].to_vec()),
        (true, [copy[name_len_at + 1..].to_vec(), bad_copy].concat()),
        (false, [st(0x0001), st(0x0001), st(0x0100)].concat()),
        // A keep-alive split 2 + 2.
        (true, keep_alive[..2].to_vec()),
        (true, keep_alive[2..].to_vec()),
        // A type this protocol lacks.
        (true, [&[0x09, 0x00][..], b"garbage!"].concat()),
    ];
    let capture = tmp.join("crafted.pcap");
    write_pcap(&capture, client, server, &segments);
    let ts = Tshark { bin: tshark, capture, dissector: dissector_path(), dir: tmp.path().to_path_buf(), disabled: vec![] };
    let prefs = vec![format!("dropsync.send_port:{server}"), "dropsync.receive_port:0".to_string()];

    let got = parse_pdml(&ts.run("crafted-pdml", &prefs, &["-T", "pdml", "-Y", "dropsync"]), [server, 0]);
    // Wireshark shows the bytes that are not UTF-8 as one or more U+FFFD,
    // depending on its version; this is the only field that varies.
    let shown = |d: &Dissected| -> String {
        if d.what.starts_with("DELETE \"\u{fffd}") {
            format!("DELETE <not UTF-8> {}", d.what.rsplit(' ').next().unwrap_or_default())
        } else {
            d.what.clone()
        }
    };
    let on = |to_server: bool| -> Vec<String> { got.iter().filter(|d| d.way == (client, to_server)).map(shown).collect() };
    assert_eq!(
        on(true),
        [
            format!("HELLO id={} label=\"\"", "ee".repeat(16)),
            format!("FILE_CHUNK \"../x\" size=0 md5={}", hex(&md5(b""))),
            format!("DELETE <not UTF-8> md5={}", "00".repeat(16)),
            format!("REQUEST \".dropsync-ext/copy\" md5={}", "00".repeat(16)),
            format!("COPY \"a.txt\" -> \"b/c.txt\" md5={}", hex(&md5(b"x"))),
            format!("COPY \"../up\" -> \".dropsync-metadata\" md5={}", "00".repeat(16)),
            "STATUS 0x8000".to_string(),
            "UNKNOWN TYPE 0x0009".to_string(),
        ]
    );
    let ok = "STATUS 0x0001";
    assert_eq!(on(false), ["STATUS 0x0201", "STATUS 0x0004", "STATUS 0x0100", ok, ok, ok, "STATUS 0x0100"]);
    let replies: Vec<String> =
        got.iter().filter(|d| !d.way.1).map(|d| d.reply_to.clone().unwrap_or_else(|| "-".into()).replace('\u{fffd}', "")).collect();
    let copies = [r#"COPY "a.txt" -> "b/c.txt""#, r#"COPY "../up" -> ".dropsync-metadata""#];
    assert_eq!(
        replies,
        [
            format!("HELLO (no label) {}", "ee".repeat(16)),
            "FILE_CHUNK ../x (0 bytes)".into(),
            "DELETE ".into(),
            "-".into(),
            "REQUEST .dropsync-ext/copy".into(),
            copies[0].into(),
            copies[1].into(),
        ]
    );

    // Exactly the unknown type is an error; each rule break is a warning.
    let fields = |tag: &str, filter: &str| -> String {
        ts.run(tag, &prefs, &["-Y", filter, "-T", "fields", "-e", info_column()]).trim().to_owned()
    };
    assert_eq!(fields("crafted-errors", "_ws.malformed or _ws.expert.severity >= error"), "Unknown type 0x0009");
    let chunk_and_delete = "FILE_CHUNK ../x (0 bytes), DELETE ";
    // The COPY offer's reserved name is not flagged; the bad COPY's are.
    let bad_names = format!("{chunk_and_delete}\n{}, {}", copies[0], copies[1]);
    for (expert, info) in [
        ("unmatched_status", "STATUS 0x0001 OK"),
        ("unknown_status", "STATUS 0x0201 OK | unknown 0x0200"),
        ("bad_size", chunk_and_delete),
        ("bad_name", &bad_names),
        ("bad_utf8", chunk_and_delete),
    ] {
        let got = fields(expert, &format!("dropsync.expert.{expert}")).replace('\u{fffd}', "");
        assert_eq!(got, info, "dropsync.expert.{expert}");
    }
    let bad_name = ["-Y", "dropsync.expert.bad_name", "-T", "fields", "-e", "_ws.expert.message"];
    let why = ts.run("crafted-bad-names", &prefs, &bad_name);
    for want in ["Bad source name: '..' component", "Bad name: reserved name"] {
        assert!(why.contains(want), "no {want:?} among the bad-name warnings:\n{why}");
    }
}
