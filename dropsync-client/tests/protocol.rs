//! The client's side of the wire, byte for byte, against a scripted fake
//! server: HELLO pairing, keep-alives, dead peers, name checks, the 0x0080
//! rule for a path being uploaded, resends, give-ups and SIGTERM.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{FakeServer, FromClient};
use dropsync_proto::{md5, Frame, MessageType, StatusCode, ZERO_DIGEST};
use dropsync_testkit::{wait_until, write_file, ClientProc, TempDir, DEFAULT_DEADLINE};

const SECOND: Duration = Duration::from_secs(1);

fn start(fake: &FakeServer, dir: &TempDir, chunk: u32, extra: &[&str]) -> ClientProc {
    ClientProc::start_with_ports(fake.send_port, fake.recv_port, &dir.join("f"), chunk, extra)
}

#[test]
fn hello_carries_one_id_on_both_connections_and_keepalives_flow() {
    let dir = TempDir::new("proto-hello");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &["--label", "tester", "--keepalive-secs", "1"]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    assert_eq!(s.id, s.recv_hello_id, "same client id on both connections");
    assert_eq!(s.label, "tester");
    s.send_empty_metadata();
    // Nothing to upload: the next thing on the send connection is a keep-alive.
    let since = Instant::now();
    assert_eq!(s.next_from_client(true), FromClient::Status(StatusCode::KEEP_ALIVE));
    assert!(since.elapsed() < 3 * SECOND, "keep-alive after {:?}", since.elapsed());
    // And one on the receive connection.
    s.recv.set_read_timeout(Some(3 * SECOND)).unwrap();
    match s.recv_rx.read_msg().unwrap() {
        Some(dropsync_io::wire::Msg::Status(StatusCode::KEEP_ALIVE)) => {}
        other => panic!("expected a keep-alive, got {other:?}"),
    }
    // The id is kept across restarts.
    drop(client);
    let client = start(&fake, &dir, 100, &[]);
    let s2 = fake.accept(DEFAULT_DEADLINE).expect("client connects again");
    assert_eq!(s2.id, s.id);
    drop(client);
}

#[test]
fn a_silent_server_is_dropped_and_the_client_reconnects() {
    let dir = TempDir::new("proto-dead");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &["--dead-peer-secs", "1", "--keepalive-secs", "1"]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    let silent_since = Instant::now();
    // The fake server never sends anything again.
    let again = fake.accept(DEFAULT_DEADLINE).expect("client reconnects");
    assert!(silent_since.elapsed() >= SECOND, "dropped too early: {:?}", silent_since.elapsed());
    assert_eq!(again.id, s.id);
    assert!(client.log().contains("nothing received"), "{}", client.log());
}

#[test]
fn incoming_names_are_checked_and_deletes_of_absent_files_get_0x0020() {
    let dir = TempDir::new("proto-names");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    for bad in ["../evil", "/etc/evil", ".dropsync/metadata", "a//b", "x\\y"] {
        let payload = b"evil";
        let code = s.push(&Frame::Chunk { digest: md5(payload), name: bad, payload });
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(s.push(&Frame::Finished { digest: md5(payload), name: bad }), StatusCode::BAD_REQUEST);
    }
    assert!(!dir.join("evil").exists() && !std::path::Path::new("/etc/evil").exists());
    assert!(fs::read_to_string(dir.join("f/.dropsync/metadata")).unwrap().starts_with("dropsync-metadata 1\n"));
    // A chunk whose MD5 is wrong is answered 0x0002; the file still arrives.
    assert_eq!(s.push(&Frame::Chunk { digest: ZERO_DIGEST, name: "ok/file.txt", payload: b"good" }), StatusCode::RESEND_CHECKSUM);
    assert_eq!(s.push_file("ok/file.txt", b"good"), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/ok/file.txt")).unwrap(), b"good");
    // A wrong whole-file digest: 0x0008, nothing written.
    let code = s.push(&Frame::Chunk { digest: md5(b"abc"), name: "bad.txt", payload: b"abc" });
    assert_eq!(code, StatusCode::OK);
    assert_eq!(s.push(&Frame::Finished { digest: md5(b"abd"), name: "bad.txt" }), StatusCode::ABORT_CHECKSUM);
    assert!(!dir.join("f/bad.txt").exists());
    // ABORT drops a partial file.
    assert_eq!(s.push(&Frame::Chunk { digest: md5(b"part"), name: "part.txt", payload: b"part" }), StatusCode::OK);
    assert_eq!(s.push(&Frame::abort("part.txt")), StatusCode::OK);
    assert!(!dir.join("f/part.txt").exists());
    assert_eq!(s.push(&Frame::abort("never-opened.txt")), StatusCode::OK);
    // DELETE: absent → 0x0020; present → deleted.
    assert_eq!(s.push(&Frame::Delete { digest: ZERO_DIGEST, name: "missing.txt" }), StatusCode::NO_FILE);
    assert_eq!(s.push(&Frame::Delete { digest: md5(b"good"), name: "ok/file.txt" }), StatusCode::OK);
    assert!(!dir.join("f/ok").exists());
    // A path that cannot be written (a folder, or below a symlink that
    // leads out of the folder) gets 0x0080 and nothing is written.
    fs::create_dir_all(dir.join("f/adir")).unwrap();
    fs::create_dir_all(dir.join("outside")).unwrap();
    std::os::unix::fs::symlink(dir.join("outside"), dir.join("f/link")).unwrap();
    assert_eq!(s.push_file("adir", b"x"), StatusCode::IN_USE);
    assert_eq!(s.push_file("link/escaped.txt", b"x"), StatusCode::IN_USE);
    assert_eq!(s.push(&Frame::Delete { digest: ZERO_DIGEST, name: "link/escaped.txt" }), StatusCode::IN_USE);
    assert!(dir.join("f/adir").is_dir() && !dir.join("outside/escaped.txt").exists());
    // An empty file is a FINISHED alone.
    assert_eq!(s.push(&Frame::Finished { digest: md5(b""), name: "empty" }), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/empty")).unwrap(), b"");
    // None of this is uploaded back: the next message is a keep-alive at most.
    s.send.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    assert!(s.send_rx.read_msg().is_err(), "client sent something: {}", client.log());
    assert!(fs::read_dir(dir.join("f/.dropsync/tmp")).unwrap().next().is_none(), "no temp files left");
}

#[test]
fn an_incoming_transfer_of_a_path_being_uploaded_is_refused_with_0x0080() {
    let dir = TempDir::new("proto-inuse");
    write_file(&dir.join("f"), "up.txt", b"0123456789");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 4, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    // The client uploads up.txt (the server does not have it); hold the reply.
    let FromClient::Chunk { name, payload, .. } = s.next_from_client(false) else { panic!("expected a chunk") };
    assert_eq!((name.as_str(), payload.as_slice()), ("up.txt", &b"0123"[..]));
    // Meanwhile the server sends up.txt: refused, the upload in flight wins.
    let theirs = b"server version";
    assert_eq!(s.push(&Frame::Chunk { digest: md5(theirs), name: "up.txt", payload: theirs }), StatusCode::IN_USE);
    assert_eq!(s.push(&Frame::Delete { digest: ZERO_DIGEST, name: "up.txt" }), StatusCode::IN_USE);
    s.reply(StatusCode::OK);
    let (name, whole) = s.receive_upload_after(payload, 4);
    assert_eq!((name.as_str(), whole.as_slice()), ("up.txt", &b"0123456789"[..]));
    assert_eq!(fs::read(dir.join("f/up.txt")).unwrap(), b"0123456789");
    // Once the client has the reply to its FINISHED, the upload is over
    // and the same transfer is accepted.
    assert!(wait_until(DEFAULT_DEADLINE, || client.log().contains("uploaded up.txt")));
    assert_eq!(s.push_file("up.txt", theirs), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/up.txt")).unwrap(), theirs);
}

#[test]
fn resends_follow_0x0002_and_0x0004() {
    let dir = TempDir::new("proto-resend");
    write_file(&dir.join("f"), "r.bin", b"abcdefgh");
    let fake = FakeServer::new();
    let _client = start(&fake, &dir, 8, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    let first = s.next_from_client(false);
    s.reply(StatusCode::RESEND_CHECKSUM);
    assert_eq!(s.next_from_client(false), first, "the same chunk again");
    s.reply(StatusCode::RESEND_SIZE);
    let FromClient::Chunk { payload, .. } = s.next_from_client(false) else { panic!("expected a chunk") };
    assert_eq!(payload, b"abcd", "half the size at the same offset");
    s.reply(StatusCode::OK);
    let (_, whole) = s.receive_upload_after(payload, 4);
    assert_eq!(whole, b"abcdefgh");
}

#[test]
fn a_change_refused_as_locked_is_given_up_and_kept_when_the_server_version_arrives() {
    let dir = TempDir::new("proto-locked");
    write_file(&dir.join("f"), "doc.txt", b"local edit");
    let fake = FakeServer::new();
    let client = start(&fake, &dir, 100, &["--rescan-secs", "1", "--label", "me"]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    let FromClient::Chunk { name, .. } = s.next_from_client(false) else { panic!("expected a chunk") };
    assert_eq!(name, "doc.txt");
    s.reply(StatusCode::LOCKED);
    // Given up: not sent again, even across rescans (not before the
    // client looks at the path again, 5 s later, in case no version comes).
    s.send.set_read_timeout(Some(Duration::from_millis(1500))).unwrap();
    match s.send_rx.read_msg() {
        Err(e) if dropsync_io::wire::is_timeout_error(&e) => {}
        other => panic!("the refused change was sent again: {other:?}\n{}", client.log()),
    }
    s.send.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The winner arrives: the local edit is kept as a conflict copy, which
    // is uploaded as a new file.
    assert_eq!(s.push_file("doc.txt", b"the winner"), StatusCode::OK);
    assert_eq!(fs::read(dir.join("f/doc.txt")).unwrap(), b"the winner");
    let (name, data) = s.receive_upload(100);
    assert!(name.starts_with("doc (conflicted copy me ") && name.ends_with(").txt"), "{name}");
    assert_eq!(data, b"local edit");
    assert!(dir.join("f").join(&name).exists());
}

#[test]
fn sigterm_aborts_the_upload_in_progress_and_exits_zero() {
    let dir = TempDir::new("proto-term");
    write_file(&dir.join("f"), "slow.bin", &[7u8; 64]);
    let fake = FakeServer::new();
    let mut client = start(&fake, &dir, 16, &[]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    assert!(matches!(s.next_from_client(false), FromClient::Chunk { .. }));
    // SIGTERM while the chunk's reply is outstanding: the reply comes
    // first, then the ABORT.
    let pid = client.pid().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(wait_until(DEFAULT_DEADLINE, || client.log().contains("stopping")));
    s.reply(StatusCode::OK);
    assert_eq!(
        s.next_from_client(false),
        FromClient::Named { kind: MessageType::Abort, name: "slow.bin".into(), digest: ZERO_DIGEST }
    );
    s.reply(StatusCode::OK);
    let status = client.wait(DEFAULT_DEADLINE);
    assert!(status.is_some_and(|st| st.success()), "{status:?}\n{}", client.log());
    // Both connections were shut down.
    assert!(matches!(s.send_rx.read_msg(), Ok(None) | Err(_)));
    assert!(matches!(s.recv_rx.read_msg(), Ok(None) | Err(_)));
}

#[test]
fn a_file_that_changes_while_it_is_sent_is_aborted_and_sent_again() {
    let dir = TempDir::new("proto-changing");
    let f = dir.join("f");
    write_file(&f, "live.txt", b"first version");
    let fake = FakeServer::new();
    let _client = start(&fake, &dir, 4, &["--debounce-ms", "20"]);
    let mut s = fake.accept(DEFAULT_DEADLINE).expect("client connects");
    s.send_empty_metadata();
    assert!(matches!(s.next_from_client(false), FromClient::Chunk { .. }));
    // Changed while the first chunk's reply is outstanding.
    write_file(&f, "live.txt", b"second, longer version");
    s.reply(StatusCode::OK);
    assert_eq!(
        s.next_from_client(false),
        FromClient::Named { kind: MessageType::Abort, name: "live.txt".into(), digest: ZERO_DIGEST }
    );
    s.reply(StatusCode::OK);
    // Once quiet, the new content goes out whole.
    let (name, data) = s.receive_upload(4);
    assert_eq!((name.as_str(), data.as_slice()), ("live.txt", &b"second, longer version"[..]));
}
