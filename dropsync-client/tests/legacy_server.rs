//! The client against servers written from ASSIGNMENT.md alone, played by
//! a scripted fake server (PROTOCOL.md sections 1, 4 and 9): HELLO refused,
//! no META-DATA ever, FINISHED without a whole-file digest, a transfer
//! refused with 0x0080, and an incoming transfer that falls idle.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{FakeServer, FakeSession, FromClient};
use dropsync_io::wire::Msg;
use dropsync_proto::{md5, Frame, MessageType, StatusCode, ZERO_DIGEST};
use dropsync_testkit::{wait_until, write_file, ClientProc, TempDir, DEFAULT_DEADLINE};

/// The client waits this long for META-DATA before it goes on without.
const METADATA_WAIT: Duration = Duration::from_secs(5);

fn start(fake: &FakeServer, dir: &TempDir, chunk: u32, extra: &[&str]) -> ClientProc {
    ClientProc::start_with_ports(fake.send_port, fake.recv_port, &dir.join("f"), chunk, extra)
}

/// Takes the client's HELLO on both connections and refuses it as a
/// server that knows no HELLO would: `answer` is sent on each (`None`:
/// the connections are closed without a word). Returns the client's
/// next pair of connections, which must carry no HELLO.
fn refuse_hello(fake: &FakeServer, answer: Option<StatusCode>) -> FakeSession {
    // A close counts as a refusal only the second time in a row (a server
    // that is restarting closes connections too); a code at once.
    let tries = if answer.is_some() { 1 } else { 2 };
    for _ in 0..tries {
        let (mut send, mut recv) = fake.accept_raw(DEFAULT_DEADLINE).expect("client connects");
        let mut first = FakeSession::legacy(send.try_clone().unwrap(), recv.try_clone().unwrap());
        assert!(matches!(first.send_rx.read_msg().unwrap(), Some(Msg::Hello { .. })));
        assert!(matches!(first.recv_rx.read_msg().unwrap(), Some(Msg::Hello { .. })));
        if let Some(code) = answer {
            send.write_all(&Frame::Status(code).to_vec()).unwrap();
            recv.write_all(&Frame::Status(code).to_vec()).unwrap();
        }
        drop((first, send, recv));
    }
    let (send, recv) = fake.accept_raw(DEFAULT_DEADLINE).expect("client connects again");
    FakeSession::legacy(send, recv)
}

#[test]
fn one_closed_hello_is_tried_again_before_the_client_goes_legacy() {
    // As a server that is restarting does: the first HELLO meets a close.
    let dir = TempDir::new("legacy-retry");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &[]);
    let (send, recv) = fake.accept_raw(DEFAULT_DEADLINE).expect("client connects");
    let mut first = FakeSession::legacy(send.try_clone().unwrap(), recv.try_clone().unwrap());
    assert!(matches!(first.send_rx.read_msg().unwrap(), Some(Msg::Hello { .. })));
    drop((first, send, recv));
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("HELLO again, answered OK this time");
    s.send_empty_metadata();
    write_file(&dir.join("f"), "x.txt", b"with HELLO");
    let (name, _) = s.receive_upload(100);
    assert_eq!(name, "x.txt");
    assert!(!client.log().contains("legacy peer"), "{}", client.log());
}

/// A session where HELLO is refused and no META-DATA is ever sent: the
/// client uploads files present before and written after it connected,
/// with no HELLO on the new connections and no REQUEST.
fn legacy_session_without_metadata(answer: Option<StatusCode>) {
    let dir = TempDir::new("legacy-refused");
    write_file(&dir.join("f"), "before.txt", b"was here first");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &[]);
    let mut s = refuse_hello(&fake, answer);
    let connected = Instant::now();
    // The first message on the new send connection is the upload itself.
    let (name, data) = s.receive_upload(100);
    assert_eq!((name.as_str(), data.as_slice()), ("before.txt", &b"was here first"[..]));
    assert!(connected.elapsed() >= METADATA_WAIT - Duration::from_millis(500), "went on before the META-DATA wait");
    write_file(&dir.join("f"), "after.txt", b"written while connected");
    let (name, data) = s.receive_upload(100);
    assert_eq!((name.as_str(), data.as_slice()), ("after.txt", &b"written while connected"[..]));
    let log = client.log();
    assert!(log.contains("refused HELLO"), "{log}");
    assert!(log.contains("no META-DATA from the server"), "{log}");
    assert_eq!(log.matches("no META-DATA from the server").count(), 1, "one clear line: {log}");
}

#[test]
fn a_hello_answered_by_closing_makes_the_client_a_legacy_peer() {
    legacy_session_without_metadata(None);
}

#[test]
fn a_hello_answered_with_another_code_makes_the_client_a_legacy_peer() {
    legacy_session_without_metadata(Some(StatusCode::BAD_REQUEST));
}

#[test]
fn once_against_a_server_without_metadata_pushes_and_exits_zero() {
    let dir = TempDir::new("legacy-once");
    write_file(&dir.join("f"), "a.txt", b"aaa");
    write_file(&dir.join("f"), "sub/b.txt", b"bbb");
    let fake = FakeServer::new();
    let mut client = start(&fake, &dir, 100, &["--once"]);
    // HELLO is answered OK here; the server just never sends META-DATA.
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    let got = receive_uploads(&mut s, 2);
    assert_eq!(got, [("a.txt".to_string(), b"aaa".to_vec()), ("sub/b.txt".to_string(), b"bbb".to_vec())]);
    let status = client.wait(DEFAULT_DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "--once ended with {status:?}\n{}", client.log());
    assert!(client.log().contains("the server's state was unknown"), "{}", client.log());
}

/// Receives `n` whole uploads, which the client may interleave, answering
/// OK to everything; returns them sorted by name.
fn receive_uploads(s: &mut FakeSession, n: usize) -> Vec<(String, Vec<u8>)> {
    let mut partial: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut done = Vec::new();
    while done.len() < n {
        match s.next_from_client(false) {
            FromClient::Chunk { name, digest, payload } => {
                assert_eq!(md5(&payload), digest);
                partial.entry(name).or_default().extend_from_slice(&payload);
            }
            FromClient::Named { kind: MessageType::Finished, name, digest } => {
                let data = partial.remove(&name).unwrap_or_default();
                assert_eq!(md5(&data), digest, "whole-file digest of {name}");
                done.push((name, data));
            }
            other => panic!("expected an upload, got {other:?}"),
        }
        s.reply(StatusCode::OK);
    }
    done.sort();
    done
}

#[test]
fn metadata_that_comes_late_is_reconciled_with() {
    let dir = TempDir::new("legacy-late-meta");
    write_file(&dir.join("f"), "mine.txt", b"mine");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    let (name, _) = s.receive_upload(100);
    assert_eq!(name, "mine.txt");
    // Now the META-DATA, listing a file the client lacks: it asks for it.
    let theirs = md5(b"theirs");
    let text = format!("dropsync-metadata 1\n1\t{}\t6\t0\tF\ttheirs.txt\n", dropsync_proto::digest::to_hex(&theirs));
    s.send_metadata(&text);
    match s.next_from_client(false) {
        FromClient::Named { kind: MessageType::Request, name, .. } => assert_eq!(name, "theirs.txt"),
        other => panic!("expected a REQUEST, got {other:?}\n{}", client.log()),
    }
    assert!(client.log().contains("META-DATA came late"), "{}", client.log());
}

#[test]
fn finished_with_a_zero_digest_is_accepted_from_the_server() {
    let dir = TempDir::new("legacy-zero-digest");
    let fake = FakeServer::new();
    let _client = start(&fake, &dir, 100, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    for piece in [&b"no whole-file "[..], b"digest given"] {
        assert_eq!(s.push(&Frame::Chunk { digest: md5(piece), name: "z.txt", payload: piece }), StatusCode::OK);
    }
    assert_eq!(s.push(&Frame::Finished { digest: ZERO_DIGEST, name: "z.txt" }), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/z.txt")).unwrap(), b"no whole-file digest given");
    assert_eq!(s.push(&Frame::Finished { digest: ZERO_DIGEST, name: "empty" }), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/empty")).unwrap(), b"");
}

#[test]
fn an_upload_refused_with_0x0080_is_tried_again_later() {
    let dir = TempDir::new("legacy-in-use");
    write_file(&dir.join("f"), "busy.txt", b"try me again");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    let mut refused_at = Vec::new();
    for _ in 0..2 {
        let FromClient::Chunk { name, .. } = s.next_from_client(false) else { panic!("expected a chunk") };
        assert_eq!(name, "busy.txt");
        s.reply(StatusCode::IN_USE);
        refused_at.push(Instant::now());
    }
    let (name, data) = s.receive_upload(100);
    assert_eq!((name.as_str(), data.as_slice()), ("busy.txt", &b"try me again"[..]));
    let gap = refused_at[1] - refused_at[0];
    assert!(gap >= Duration::from_millis(400), "tried again after {gap:?}: no backoff");
    assert!(wait_until(DEFAULT_DEADLINE, || client.log().contains("uploaded busy.txt")), "{}", client.log());
}

#[test]
fn an_incoming_transfer_idle_past_the_limit_is_aborted_while_keepalives_flow() {
    let dir = TempDir::new("legacy-idle-in");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &["--dead-peer-secs", "2", "--keepalive-secs", "1"]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    assert_eq!(s.push(&Frame::Chunk { digest: md5(b"half"), name: "g.txt", payload: b"half" }), StatusCode::OK);
    // Keep-alives keep the connections up; the transfer itself is silent.
    let tmp = dir.join("f/.dropsync/tmp");
    let aborted = wait_until(DEFAULT_DEADLINE, || {
        s.recv.write_all(&Frame::Status(StatusCode::KEEP_ALIVE).to_vec()).unwrap();
        s.send.write_all(&Frame::Status(StatusCode::KEEP_ALIVE).to_vec()).unwrap();
        fs::read_dir(&tmp).unwrap().next().is_none()
    });
    assert!(aborted, "the partial file stayed: {}", client.log());
    assert!(client.log().contains("incoming g.txt aborted"), "{}", client.log());
    // Its next message is refused, which ends it; nothing was written.
    assert_eq!(s.push(&Frame::Chunk { digest: md5(b" more"), name: "g.txt", payload: b" more" }), StatusCode::IN_USE);
    assert!(!dir.join("f/g.txt").exists());
    // The session is alive: a new transfer of the same path succeeds.
    assert_eq!(s.push_file("g.txt", b"whole"), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/g.txt")).unwrap(), b"whole");
}

#[test]
fn a_legacy_session_is_not_dropped_for_silence() {
    let dir = TempDir::new("legacy-silent");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &["--dead-peer-secs", "1", "--keepalive-secs", "1"]);
    let mut s = refuse_hello(&fake, None);
    s.send_empty_metadata();
    // The legacy server says nothing for three dead-peer times; the client
    // stays connected (no reconnect) and still uploads what appears.
    std::thread::sleep(Duration::from_secs(3));
    write_file(&dir.join("f"), "late.txt", b"still here");
    let (name, data) = s.receive_upload(100);
    assert_eq!((name.as_str(), data.as_slice()), ("late.txt", &b"still here"[..]));
    assert!(fake.accept_raw(Duration::from_millis(300)).is_none(), "the client reconnected: {}", client.log());
    assert!(!client.log().contains("nothing received"), "{}", client.log());
}
