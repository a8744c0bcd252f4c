//! Secure mode (issue 16; docs/PROTOCOL.md, "Secure mode"), with the real
//! binaries: once a client is enrolled, an unenrolled key, a revoked one,
//! a plaintext peer, a TLS peer without a key and a peer replaying another
//! client's id each get no byte of any file and no file name, and change
//! nothing; a read-only client receives everything and changes nothing;
//! enrolment and revocation work end to end, and a client pinned to
//! another server's key does not talk to this one.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use dropsync_io::tls::{Fingerprint, Identity, Pin};
use dropsync_proto::Frame;
use dropsync_testkit::{
    bin_path, http_get, tree, wait_for, wait_until, write_file, ClientProc, RawPeer, ServerProc, TempDir,
    DEFAULT_DEADLINE,
};

/// Runs `server ARGS...` (a command, not the server) and returns what it printed.
fn server_cmd(args: &[&str]) -> String {
    let out = Command::new(bin_path("server")).args(args).output().unwrap();
    assert!(out.status.success(), "server {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn client_fingerprint(folder: &std::path::Path) -> String {
    let out = Command::new(bin_path("client")).arg("fingerprint").arg(folder).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// A server in secure mode with two enrolled read-write clients, `a` and
/// `b`, in sync on a few files whose names and bytes no outsider may see.
struct Setup {
    tmp: TempDir,
    server: ServerProc,
    fingerprint: String,
    a: ClientProc,
    b: ClientProc,
    /// An enrolled key the test itself holds, to read the server's state.
    observer: Identity,
}

const SECRET_NAME: &str = "secret-plans.txt";
const SECRET_BYTES: &[u8] = b"the launch code is 0000";

impl Setup {
    fn root(&self) -> String {
        self.tmp.join("root").to_str().unwrap().to_owned()
    }

    fn new(extra_b: &[&str]) -> Self {
        let tmp = TempDir::new("secure");
        let root = tmp.join("root");
        let root_s = root.to_str().unwrap();
        let fingerprint = server_cmd(&["fingerprint", "--root", root_s]);
        for (name, ro) in [("a", false), ("b", extra_b.contains(&"ro"))] {
            let fp = client_fingerprint(&tmp.join(name));
            let mut args = vec!["enroll", "--root", root_s, "--label", name];
            if ro {
                args.push("--read-only");
            }
            args.push(&fp);
            server_cmd(&args);
        }
        let observer = Identity::create().unwrap();
        server_cmd(&["enroll", "--root", root_s, "--label", "observer", &observer.fingerprint.to_string()]);
        let server = ServerProc::start(&root, &["--http", "127.0.0.1:0"]);
        write_file(&tmp.join("a"), SECRET_NAME, SECRET_BYTES);
        write_file(&tmp.join("a"), "dir/other.bin", &[7u8; 300_000]);
        let pin = ["--server-fingerprint", fingerprint.as_str()];
        let a = ClientProc::start(&server, &tmp.join("a"), 65536, &pin);
        let b = ClientProc::start(&server, &tmp.join("b"), 65536, &pin);
        let s = Self { tmp, server, fingerprint, a, b, observer };
        s.wait_same("the enrolled clients to sync");
        s
    }

    fn wait_same(&self, what: &str) {
        let ok = wait_until(DEFAULT_DEADLINE, || {
            let (a, b) = (tree(&self.tmp.join("a")), tree(&self.tmp.join("b")));
            a == b && a.contains_key(SECRET_NAME)
        });
        assert!(ok, "waiting for {what}; a: {}\nb: {}\nserver: {}", self.a.log(), self.b.log(), self.server.log());
    }

    /// The value of one series on /metrics (0 when absent).
    fn metric(&self, series: &str) -> f64 {
        let (status, body) = http_get(self.server.http_port.unwrap(), "/metrics");
        assert_eq!(status, 200);
        body.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
    }

    fn pin(&self) -> Pin {
        Pin::Known(Fingerprint::parse(&self.fingerprint).unwrap())
    }

    /// The server's META-DATA, as an enrolled peer reads it: the state a
    /// refused peer must not have changed.
    fn listing(&self) -> String {
        let id = self.observer.fingerprint.client_id();
        let mut p = RawPeer::try_tls_hello(
            self.server.send_port,
            self.server.recv_port,
            Some(&self.observer),
            self.pin(),
            id,
            "observer",
        )
        .unwrap();
        p.receive_metadata()
    }
}

/// Reads everything a plain connection gives until it closes; panics if it
/// stays open past `limit`.
fn read_until_closed(mut s: TcpStream, limit: Duration) -> Vec<u8> {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return got,
        }
        assert!(start.elapsed() < limit, "the server kept a refused connection open for {limit:?}");
    }
}

/// No byte of any file and no file name in what a refused peer read.
fn nothing_leaked(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    assert!(!text.contains(SECRET_NAME) && !text.contains("other.bin"), "a file name leaked");
    assert!(!bytes.windows(SECRET_BYTES.len()).any(|w| w == SECRET_BYTES), "file bytes leaked");
}

#[test]
fn plaintext_peers_are_closed_having_seen_nothing_and_changing_nothing() {
    let s = Setup::new(&[]);
    let before = s.listing();
    let a_id = {
        let meta = std::fs::read_to_string(s.tmp.join("a/.dropsync/metadata")).unwrap_or_default();
        meta.lines().find_map(|l| l.strip_prefix("# client-id ")).map(str::to_owned)
    };
    // A peer that says HELLO (with client a's id, when known), then tries to
    // delete, upload and request.
    let mut id = [0u8; 16];
    if let Some(hex) = a_id {
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
    }
    let mut wire = Frame::Hello { client_id: id, label: "intruder" }.to_vec();
    Frame::Delete { digest: [0; 16], name: SECRET_NAME }.encode(&mut wire);
    Frame::Request { digest: [0; 16], name: SECRET_NAME }.encode(&mut wire);
    let talker = TcpStream::connect(("127.0.0.1", s.server.send_port)).unwrap();
    let listener = TcpStream::connect(("127.0.0.1", s.server.recv_port)).unwrap();
    (&talker).write_all(&wire).unwrap();
    let _ = (&listener).write_all(&Frame::Hello { client_id: id, label: "intruder" }.to_vec());
    // And one that says nothing at all (legacy pairing would have served it).
    let silent = TcpStream::connect(("127.0.0.1", s.server.recv_port)).unwrap();
    for conn in [talker, listener, silent] {
        let got = read_until_closed(conn, Duration::from_secs(5));
        assert!(got.is_empty(), "a refused plaintext peer read {} byte(s)", got.len());
    }
    assert_eq!(s.listing(), before, "nothing changed");
    // Client a was not thrown off by the replayed id: its changes still go out.
    write_file(&s.tmp.join("a"), "after.txt", b"still here");
    assert!(wait_until(DEFAULT_DEADLINE, || s.tmp.join("b/after.txt").exists()), "a still syncs:\n{}", s.server.log());
    assert!(!s.server.log().contains("replaced by a new session"), "{}", s.server.log());
    assert!(s.server.log().contains("plaintext connection"), "{}", s.server.log());
    assert_eq!(s.metric("dropsync_connections_not_admitted_total{reason=\"plaintext\"}"), 3.0);
    assert!(s.metric("dropsync_sessions_connected{kind=\"secure\"}") >= 2.0);
    assert_eq!(s.metric("dropsync_sessions_connected{kind=\"hello\"}"), 0.0);
    assert_eq!(s.metric("dropsync_clients_enrolled"), 3.0);
    assert_eq!(s.metric("dropsync_secure_mode"), 1.0);
}

#[test]
fn unenrolled_keys_keyless_tls_and_replayed_ids_get_nothing() {
    let s = Setup::new(&[]);
    let before = s.listing();
    let stranger = Identity::create().unwrap();
    // The stranger claims client a's key-derived id: pairing goes by the key
    // TLS proved, and this key is not enrolled.
    let claimed = Fingerprint::parse(&client_fingerprint(&s.tmp.join("a"))).unwrap().client_id();
    for identity in [Some(&stranger), None] {
        let tried = RawPeer::try_tls_hello(s.server.send_port, s.server.recv_port, identity, s.pin(), claimed, "x");
        let Ok(mut p) = tried else { continue };
        // TLS 1.3 lets the client finish its handshake first: whatever it
        // then sends is answered by the refusal, never by data.
        p.send_frame(&Frame::Delete { digest: [0; 16], name: SECRET_NAME });
        let mut got = Vec::new();
        let _ = (&p.recv).read_to_end(&mut got);
        nothing_leaked(&got);
        panic!("an unadmitted TLS peer got HELLO answered");
    }
    assert_eq!(s.listing(), before, "nothing changed");
    assert!(s.server.log().contains("client key not enrolled"), "{}", s.server.log());
    assert!(s.server.log().contains("TLS without a client key"), "{}", s.server.log());
    assert_eq!(s.metric("dropsync_connections_not_admitted_total{reason=\"not_enrolled\"}"), 2.0, "both connections");
    assert_eq!(s.metric("dropsync_connections_not_admitted_total{reason=\"no_key\"}"), 2.0, "both connections");
    write_file(&s.tmp.join("a"), "after.txt", b"still here");
    assert!(wait_until(DEFAULT_DEADLINE, || s.tmp.join("b/after.txt").exists()), "a still syncs");
}

#[test]
fn a_revoked_client_is_closed_within_a_second_and_gets_nothing_after() {
    let s = Setup::new(&[]);
    let root = s.root();
    let started = Instant::now();
    let out = server_cmd(&["revoke", "--root", &root, "b"]);
    assert!(out.contains("revoked"), "{out}");
    let closed = wait_for(DEFAULT_DEADLINE, "b's session to close", || {
        s.server.log().contains("no longer admitted: client key not enrolled").then(|| started.elapsed())
    });
    assert!(closed <= Duration::from_secs(1), "revoked client's session closed after {closed:?}");
    write_file(&s.tmp.join("a"), "new-after-revoke.txt", b"not for b");
    write_file(&s.tmp.join("b"), "from-b.txt", b"b was revoked");
    // a's new file reaches the server; b's never does, and b gets nothing.
    wait_for(DEFAULT_DEADLINE, "a's file on the server", || {
        let out = Command::new(bin_path("server"))
            .args(["history", "--root", &root, "new-after-revoke.txt"])
            .output()
            .ok()?;
        out.status.success().then_some(())
    });
    assert!(wait_until(DEFAULT_DEADLINE, || s.b.log().contains("did not admit this client")), "{}", s.b.log());
    assert!(!s.tmp.join("b/new-after-revoke.txt").exists(), "a revoked client received a file");
    let hist = Command::new(bin_path("server")).args(["history", "--root", &root, "from-b.txt"]).output().unwrap();
    assert!(!hist.status.success(), "a revoked client's file reached the server");
    assert!(!s.tmp.join("a/from-b.txt").exists());
}

#[test]
fn a_read_only_client_receives_everything_and_changes_nothing() {
    let s = Setup::new(&["ro"]);
    // b is read-only: it got everything (Setup waited for it). Its own
    // new file, its edit and its delete are refused and kept locally.
    write_file(&s.tmp.join("b"), "from-reader.txt", b"should stay here");
    write_file(&s.tmp.join("b"), SECRET_NAME, b"edited by the reader");
    std::fs::remove_file(s.tmp.join("b/dir/other.bin")).unwrap();
    let refused = wait_until(DEFAULT_DEADLINE, || s.server.log().matches("read-only client").count() >= 1);
    assert!(refused, "{}", s.server.log());
    // Settled: the writer still has every file as it was, and gets nothing.
    write_file(&s.tmp.join("a"), "marker.txt", b"sync barrier");
    assert!(wait_until(DEFAULT_DEADLINE, || s.tmp.join("b/marker.txt").exists()), "the reader still receives");
    let a = tree(&s.tmp.join("a"));
    assert_eq!(a.get(SECRET_NAME).map(Vec::as_slice), Some(SECRET_BYTES));
    assert!(a.contains_key("dir/other.bin") && !a.contains_key("from-reader.txt"), "{:?}", a.keys());
    assert_eq!(std::fs::read(s.tmp.join("b/from-reader.txt")).unwrap(), b"should stay here", "kept locally");
    // A new version from the writer reaches the reader too.
    write_file(&s.tmp.join("a"), "dir/other.bin", &[9u8; 1000]);
    assert!(
        wait_until(DEFAULT_DEADLINE, || std::fs::read(s.tmp.join("b/dir/other.bin")).ok() == Some(vec![9u8; 1000])),
        "{}",
        s.b.log()
    );
}

#[test]
fn an_unenrolled_client_says_how_to_enrol_and_syncs_once_enrolled() {
    let s = Setup::new(&[]);
    let root = s.root();
    let c_dir = s.tmp.join("c");
    let fp = client_fingerprint(&c_dir);
    let c = ClientProc::start(&s.server, &c_dir, 65536, &["--server-fingerprint", &s.fingerprint]);
    let advice = format!("server enroll {fp}");
    assert!(wait_until(DEFAULT_DEADLINE, || c.log().contains(&advice)), "{}", c.log());
    assert!(!c_dir.join(SECRET_NAME).exists());
    server_cmd(&["enroll", "--root", &root, "--label", "c", &fp]);
    let ok =
        wait_until(DEFAULT_DEADLINE, || std::fs::read(c_dir.join(SECRET_NAME)).ok().as_deref() == Some(SECRET_BYTES));
    assert!(ok, "enrolled client never synced:\n{}", c.log());
    let listed = server_cmd(&["clients", "--root", &root]);
    assert!(listed.contains(&format!("{fp}  rw  c")) && listed.lines().count() == 4, "{listed}");
}

#[test]
fn a_client_pinned_to_another_key_does_not_talk_to_this_server() {
    let s = Setup::new(&[]);
    let other = Identity::create().unwrap().fingerprint.to_string();
    let d_dir = s.tmp.join("d");
    write_file(&d_dir, "d-only.txt", b"must not leave");
    let d = ClientProc::start(&s.server, &d_dir, 65536, &["--server-fingerprint", &other]);
    let said = wait_until(DEFAULT_DEADLINE, || d.log().contains(&format!("not the pinned {other}")));
    assert!(said, "{}", d.log());
    assert!(!d_dir.join(SECRET_NAME).exists());
    assert!(!s.tmp.join("a/d-only.txt").exists());
}

#[test]
fn first_use_pins_the_server_and_open_mode_serves_tls_and_plain_alike() {
    // Nobody enrolled: the assignment's open protocol, over TLS or not.
    let tmp = TempDir::new("secure-open");
    let server = ServerProc::start(&tmp.join("root"), &[]);
    write_file(&tmp.join("a"), "x.txt", b"open mode");
    let a = ClientProc::start(&server, &tmp.join("a"), 65536, &["--trust-first-use"]);
    let b = ClientProc::start(&server, &tmp.join("b"), 65536, &[]);
    assert!(wait_until(DEFAULT_DEADLINE, || tmp.join("b/x.txt").exists()), "{}\n{}", a.log(), b.log());
    let pinned = std::fs::read_to_string(tmp.join("a/.dropsync/server-fingerprint")).unwrap();
    let fp = server_cmd(&["fingerprint", "--root", tmp.join("root").to_str().unwrap()]);
    assert_eq!(pinned.trim(), fp);
    assert!(
        server.log().contains("127.0.0.1") && !server.log().contains("open mode: nobody is enrolled"),
        "bound to loopback only: no open-mode warning"
    );
    // --require-auth with nobody enrolled: even TLS clients stay out.
    let locked = ServerProc::start(&tmp.join("root2"), &["--require-auth"]);
    let mut p = TcpStream::connect(("127.0.0.1", locked.send_port)).unwrap();
    p.write_all(&Frame::Hello { client_id: [1; 16], label: "x" }.to_vec()).unwrap();
    assert!(read_until_closed(p, Duration::from_secs(5)).is_empty());
}
