//! The server driven byte for byte by scripted raw peers (no client):
//! every rule of PROTOCOL.md sections 1, 4, 6 and 8 the issue lists.

use std::time::{Duration, Instant};

use dropsync_proto::metadata::{parse_document, EntryState};
use dropsync_proto::{md5, Frame, StatusCode, ZERO_DIGEST};
use dropsync_testkit::{wait_until, RawPeer, ServerProc, TempDir, DEFAULT_DEADLINE};

fn start(tmp: &TempDir, extra: &[&str]) -> ServerProc {
    ServerProc::start(&tmp.join("root"), extra)
}

fn peer(s: &ServerProc, id: u8, label: &str) -> RawPeer {
    let mut p = RawPeer::hello(s.send_port, s.recv_port, [id; 16], label);
    p.receive_metadata();
    p
}

fn fan_out_to_two_others(workers: &str) {
    let tmp = TempDir::new("fanout");
    let s = start(&tmp, &["--workers", workers]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    let mut c = peer(&s, 3, "c");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(a.upload("dir/sub/f.bin", &data, 8192), StatusCode::OK);
    for p in [&mut b, &mut c] {
        let (name, got) = p.receive_one();
        assert_eq!(name, "dir/sub/f.bin");
        assert!(got.as_deref() == Some(&data[..]), "content differs");
    }
    a.expect_no_transfer(Duration::from_millis(300));
    // A DELETE fans out too.
    assert_eq!(a.request(&Frame::Delete { digest: md5(&data), name: "dir/sub/f.bin" }), StatusCode::OK);
    assert_eq!(b.receive_one(), ("dir/sub/f.bin".to_string(), None));
    assert_eq!(c.receive_one(), ("dir/sub/f.bin".to_string(), None));
}

#[test]
fn upload_fans_out_with_worker_pool() {
    fan_out_to_two_others("4");
}

#[test]
fn upload_fans_out_with_dedicated_senders() {
    fan_out_to_two_others("0");
}

#[test]
fn metadata_on_connect_lists_files_and_tombstones() {
    let tmp = TempDir::new("meta");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    assert_eq!(a.upload("keep.txt", b"kept", 100), StatusCode::OK);
    assert_eq!(a.upload("gone.txt", b"gone", 100), StatusCode::OK);
    assert_eq!(a.request(&Frame::Delete { digest: md5(b"gone"), name: "gone.txt" }), StatusCode::OK);
    let mut b = RawPeer::hello(s.send_port, s.recv_port, [2; 16], "b");
    let doc = parse_document(&b.receive_metadata()).unwrap();
    let keep = doc.entries.iter().find(|e| e.path == "keep.txt").unwrap();
    let gone = doc.entries.iter().find(|e| e.path == "gone.txt").unwrap();
    assert_eq!((keep.state, keep.md5, keep.size, keep.version), (EntryState::File, md5(b"kept"), 4, 1));
    assert_eq!((gone.state, gone.version), (EntryState::Deleted, 3));
}

#[test]
fn locked_file_refuses_second_upload_and_delete() {
    let tmp = TempDir::new("lock");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    assert_eq!(b.upload("f", b"old", 10), StatusCode::OK);
    assert_eq!(a.receive_one().0, "f");
    // A opens a transfer of f and holds it.
    assert_eq!(a.request(&Frame::Chunk { digest: md5(b"new"), name: "f", payload: b"new" }), StatusCode::OK);
    assert_eq!(b.request(&Frame::Chunk { digest: md5(b"x"), name: "f", payload: b"x" }), StatusCode::LOCKED);
    assert_eq!(b.request(&Frame::Finished { digest: md5(b""), name: "f" }), StatusCode::LOCKED);
    assert_eq!(b.request(&Frame::Delete { digest: md5(b"old"), name: "f" }), StatusCode::LOCKED);
    // REQUEST of a file being written: 0x0080.
    assert_eq!(b.request(&Frame::Request { digest: md5(b"old"), name: "f" }), StatusCode::IN_USE);
    // A finishes; the lock is free again and B gets A's version.
    assert_eq!(a.request(&Frame::Finished { digest: md5(b"new"), name: "f" }), StatusCode::OK);
    assert_eq!(b.receive_one(), ("f".to_string(), Some(b"new".to_vec())));
    assert_eq!(b.request(&Frame::Delete { digest: md5(b"new"), name: "f" }), StatusCode::OK);
}

#[test]
fn delete_and_request_of_unknown_files() {
    let tmp = TempDir::new("unknown");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    assert_eq!(a.request(&Frame::Delete { digest: ZERO_DIGEST, name: "nope" }), StatusCode::NO_FILE);
    assert_eq!(a.request(&Frame::Request { digest: ZERO_DIGEST, name: "nope" }), StatusCode::NO_FILE);
    assert_eq!(a.upload("f", b"1", 1), StatusCode::OK);
    assert_eq!(a.request(&Frame::Delete { digest: md5(b"1"), name: "f" }), StatusCode::OK);
    // Already a tombstone.
    assert_eq!(a.request(&Frame::Delete { digest: ZERO_DIGEST, name: "f" }), StatusCode::NO_FILE);
    // An explicit REQUEST is always served, even for one's own upload.
    assert_eq!(a.upload("g", b"mine", 2), StatusCode::OK);
    assert_eq!(a.request(&Frame::Request { digest: md5(b"mine"), name: "g" }), StatusCode::OK);
    assert_eq!(a.receive_one(), ("g".to_string(), Some(b"mine".to_vec())));
    // REQUEST of a tombstone is served as a DELETE.
    assert_eq!(a.request(&Frame::Request { digest: ZERO_DIGEST, name: "f" }), StatusCode::OK);
    assert_eq!(a.receive_one(), ("f".to_string(), None));
}

#[test]
fn three_bad_checksums_then_abort() {
    let tmp = TempDir::new("cksum");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let bad = Frame::Chunk { digest: md5(b"something else"), name: "f", payload: b"data" };
    assert_eq!(a.request(&bad), StatusCode::RESEND_CHECKSUM);
    assert_eq!(a.request(&bad), StatusCode::RESEND_CHECKSUM);
    assert_eq!(a.request(&bad), StatusCode::ABORT_CHECKSUM);
    // The transfer is over and its lock released: a fresh upload works.
    assert_eq!(a.upload("f", b"data", 2), StatusCode::OK);
}

#[test]
fn resend_after_one_bad_checksum_succeeds() {
    let tmp = TempDir::new("resend");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    let bad = Frame::Chunk { digest: md5(b"xx"), name: "f", payload: b"ab" };
    assert_eq!(a.request(&bad), StatusCode::RESEND_CHECKSUM);
    assert_eq!(a.request(&Frame::Chunk { digest: md5(b"ab"), name: "f", payload: b"ab" }), StatusCode::OK);
    assert_eq!(a.request(&Frame::Finished { digest: md5(b"ab"), name: "f" }), StatusCode::OK);
    assert_eq!(b.receive_one(), ("f".to_string(), Some(b"ab".to_vec())));
}

#[test]
fn three_invalid_sizes_then_abort_without_buffering() {
    let tmp = TempDir::new("size");
    let s = start(&tmp, &["--max-chunk", "1024"]);
    let mut a = peer(&s, 1, "a");
    let big = vec![1u8; 5000];
    let oversized = Frame::Chunk { digest: md5(&big), name: "f", payload: &big };
    let empty = Frame::Chunk { digest: md5(b""), name: "f", payload: b"" };
    assert_eq!(a.request(&oversized), StatusCode::RESEND_SIZE);
    assert_eq!(a.request(&empty), StatusCode::RESEND_SIZE);
    assert_eq!(a.request(&oversized), StatusCode::ABORT_SIZE);
    // The stream stayed in sync: the next frames parse normally.
    assert_eq!(a.upload("f", &big, 1024), StatusCode::OK);
}

#[test]
fn bad_names_get_0x0100_and_nothing_is_written() {
    let tmp = TempDir::new("names");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    // A component over 255 bytes: no client could write it (section 3).
    let long_component = format!("dir/{}.txt", "x".repeat(252));
    for name in ["../x", "/etc/passwd", "a/../../b", "a//b", ".dropsync/metadata", ".dropsync-metadata", "a\\b", "", &long_component] {
        assert_eq!(
            a.request(&Frame::Chunk { digest: md5(b"x"), name, payload: b"x" }),
            StatusCode::BAD_REQUEST,
            "{name:?}"
        );
        assert_eq!(a.request(&Frame::Delete { digest: ZERO_DIGEST, name }), StatusCode::BAD_REQUEST, "{name:?}");
    }
    // A name that is not UTF-8 (codec-level rejection) is skipped whole.
    let mut raw = vec![0x05, 0x00];
    raw.extend_from_slice(&[0; 16]);
    raw.extend_from_slice(&[2, 0, 0xff, 0xfe]);
    use std::io::Write;
    a.send.write_all(&raw).unwrap();
    assert_eq!(a.send_status(), StatusCode::BAD_REQUEST);
    assert!(!tmp.join("x").exists() && !tmp.join("root/x").exists());
    assert_eq!(a.upload("ok", b"still works", 3), StatusCode::OK);
}

#[test]
fn finished_with_wrong_digest_is_discarded() {
    let tmp = TempDir::new("wrongmd5");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    assert_eq!(a.upload("f", b"v1", 2), StatusCode::OK);
    assert_eq!(a.request(&Frame::Chunk { digest: md5(b"v2"), name: "f", payload: b"v2" }), StatusCode::OK);
    assert_eq!(a.request(&Frame::Finished { digest: md5(b"not v2"), name: "f" }), StatusCode::ABORT_CHECKSUM);
    // Still version 1.
    let mut b = RawPeer::hello(s.send_port, s.recv_port, [2; 16], "b");
    let doc = parse_document(&b.receive_metadata()).unwrap();
    assert_eq!(doc.entries[0].md5, md5(b"v1"));
}

#[test]
fn abort_mid_transfer_keeps_old_version() {
    let tmp = TempDir::new("abort");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    assert_eq!(a.upload("f", b"old version", 4), StatusCode::OK);
    assert_eq!(a.request(&Frame::Chunk { digest: md5(b"new"), name: "f", payload: b"new" }), StatusCode::OK);
    assert_eq!(a.request(&Frame::abort("f")), StatusCode::OK);
    // An ABORT naming nothing open is OK and changes nothing.
    assert_eq!(a.request(&Frame::abort("other")), StatusCode::OK);
    let mut b = peer(&s, 2, "b");
    assert_eq!(b.request(&Frame::Request { digest: ZERO_DIGEST, name: "f" }), StatusCode::OK);
    assert_eq!(b.receive_one(), ("f".to_string(), Some(b"old version".to_vec())));
    // The lock was released by the ABORT.
    assert_eq!(b.upload("f", b"b's", 3), StatusCode::OK);
}

#[test]
fn empty_file_is_a_finished_without_chunks() {
    let tmp = TempDir::new("empty");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    assert_eq!(a.request(&Frame::Finished { digest: md5(b""), name: "empty" }), StatusCode::OK);
    assert_eq!(b.receive_one(), ("empty".to_string(), Some(vec![])));
}

#[test]
fn identical_upload_changes_nothing() {
    let tmp = TempDir::new("identical");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    assert_eq!(a.upload("f", b"same", 4), StatusCode::OK);
    assert_eq!(b.receive_one().0, "f");
    assert_eq!(b.upload("f", b"same", 4), StatusCode::OK);
    a.expect_no_transfer(Duration::from_millis(300));
    let mut c = RawPeer::hello(s.send_port, s.recv_port, [3; 16], "c");
    let doc = parse_document(&c.receive_metadata()).unwrap();
    assert_eq!(doc.entries.len(), 1);
    assert_eq!(doc.entries[0].version, 1);
}

#[test]
fn stale_upload_keeps_overwritten_version_as_conflict_copy() {
    let tmp = TempDir::new("stale");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "alice");
    let mut b = peer(&s, 2, "bob");
    // B commits F. A starts its own upload of F before B's version reaches
    // it, so A refuses the delivery with 0x0080 (section 7) and never sees it.
    assert_eq!(b.upload("notes.txt", b"bob's text", 4), StatusCode::OK);
    let alice = b"alice's text";
    assert_eq!(a.request(&Frame::Chunk { digest: md5(alice), name: "notes.txt", payload: alice }), StatusCode::OK);
    assert_eq!(a.answer_next(StatusCode::IN_USE), "notes.txt");
    assert_eq!(a.request(&Frame::Finished { digest: md5(alice), name: "notes.txt" }), StatusCode::OK);
    // B (who wrote the overwritten version) gets the conflict copy and A's F.
    let mut got = [b.receive_one(), b.receive_one()];
    got.sort_by_key(|(name, _)| name != "notes.txt");
    let (copy_name, copy) = &got[1];
    assert_eq!(got[0], ("notes.txt".to_string(), Some(b"alice's text".to_vec())));
    assert!(copy_name.starts_with("notes (conflicted copy bob ") && copy_name.ends_with(").txt"), "{copy_name}");
    assert_eq!(copy.as_deref(), Some(&b"bob's text"[..]));
    // A new peer sees both in META-DATA.
    let mut c = RawPeer::hello(s.send_port, s.recv_port, [3; 16], "c");
    let doc = parse_document(&c.receive_metadata()).unwrap();
    let by = |p: &str| doc.entries.iter().find(|e| e.path == p).map(|e| e.md5);
    assert_eq!(by("notes.txt"), Some(md5(b"alice's text")));
    assert_eq!(by(copy_name), Some(md5(b"bob's text")));
}

#[test]
fn no_conflict_copies_flag_gives_plain_overwrite() {
    let tmp = TempDir::new("plain");
    let s = start(&tmp, &["--no-conflict-copies"]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    assert_eq!(b.upload("f", b"b", 1), StatusCode::OK);
    assert_eq!(a.upload("f", b"a", 1), StatusCode::OK);
    assert_eq!(b.receive_one(), ("f".to_string(), Some(b"a".to_vec())));
    b.expect_no_transfer(Duration::from_millis(300));
}

#[test]
fn peer_killed_mid_upload_releases_its_lock() {
    let tmp = TempDir::new("killed");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    assert_eq!(a.request(&Frame::Chunk { digest: md5(b"part"), name: "f", payload: b"part" }), StatusCode::OK);
    assert_eq!(b.request(&Frame::Chunk { digest: md5(b"x"), name: "f", payload: b"x" }), StatusCode::LOCKED);
    drop(a);
    let ok = wait_until(DEFAULT_DEADLINE, || b.upload("f", b"b wins", 3) == StatusCode::OK);
    assert!(ok, "lock never released; log:\n{}", s.log());
    assert!(std::fs::read_dir(tmp.join("root/tmp")).unwrap().next().is_none(), "partial file left behind");
}

#[test]
fn sigkill_and_restart_keeps_every_acknowledged_file() {
    let tmp = TempDir::new("crash");
    let mut s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let files: Vec<(String, Vec<u8>)> =
        (0..20).map(|i| (format!("d{}/f{i}", i % 3), format!("content {i}").repeat(i + 1).into_bytes())).collect();
    for (name, data) in &files {
        assert_eq!(a.upload(name, data, 7), StatusCode::OK);
    }
    assert_eq!(a.request(&Frame::Delete { digest: ZERO_DIGEST, name: "d0/f0" }), StatusCode::OK);
    // An unacknowledged partial upload at the moment of the crash.
    assert_eq!(a.request(&Frame::Chunk { digest: md5(b"partial"), name: "d1/f1", payload: b"partial" }), StatusCode::OK);
    drop(a);
    s.restart();
    let mut b = RawPeer::hello(s.send_port, s.recv_port, [2; 16], "b");
    let doc = parse_document(&b.receive_metadata()).unwrap();
    assert_eq!(doc.entries.len(), 20);
    for (name, data) in &files[1..] {
        assert_eq!(b.request(&Frame::Request { digest: ZERO_DIGEST, name }), StatusCode::OK);
        assert_eq!(b.receive_one(), (name.clone(), Some(data.clone())));
    }
    let d0 = doc.entries.iter().find(|e| e.path == "d0/f0").unwrap();
    assert_eq!(d0.state, EntryState::Deleted);
    assert!(std::fs::read_dir(tmp.join("root/tmp")).unwrap().next().is_none(), "temp files left after restart");
    // The version counter continues after the restart.
    assert_eq!(b.upload("after", b"restart", 3), StatusCode::OK);
    let mut c = RawPeer::hello(s.send_port, s.recv_port, [3; 16], "c");
    let doc = parse_document(&c.receive_metadata()).unwrap();
    assert_eq!(doc.entries.iter().find(|e| e.path == "after").unwrap().version, 22);
}

#[test]
fn legacy_peers_pair_by_address_without_hello() {
    let tmp = TempDir::new("legacy");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    assert_eq!(a.upload("f", b"for legacy", 4), StatusCode::OK);
    let started = Instant::now();
    let mut legacy = RawPeer::connect_raw(s.send_port, s.recv_port);
    let text = legacy.receive_metadata();
    let doc = parse_document(&text).unwrap();
    assert_eq!(doc.entries.len(), 1);
    assert!(!text.contains("# ext"), "a legacy peer gets the contract's META-DATA alone: {text:?}");
    assert!(started.elapsed() >= Duration::from_millis(900), "paired before the 1 s HELLO window");
    assert_eq!(legacy.upload("from-legacy", b"hi", 1), StatusCode::OK);
    assert_eq!(a.receive_one(), ("from-legacy".to_string(), Some(b"hi".to_vec())));
}

#[test]
fn legacy_first_message_is_not_lost() {
    let tmp = TempDir::new("legacy-first");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut legacy = RawPeer::connect_raw(s.send_port, s.recv_port);
    // First message is an upload, not HELLO.
    assert_eq!(legacy.upload("first", b"message", 3), StatusCode::OK);
    legacy.receive_metadata();
    assert_eq!(a.receive_one(), ("first".to_string(), Some(b"message".to_vec())));
}

#[test]
fn reconnecting_client_id_replaces_its_old_session() {
    let tmp = TempDir::new("replace");
    let s = start(&tmp, &[]);
    let mut old = peer(&s, 7, "laptop");
    let mut new = peer(&s, 7, "laptop");
    assert!(old.send_closed_by_server(), "old session not shut down");
    assert_eq!(new.upload("f", b"x", 1), StatusCode::OK);
}

#[test]
fn unknown_type_closes_only_that_session() {
    let tmp = TempDir::new("garbage");
    let s = start(&tmp, &[]);
    let mut bad = peer(&s, 1, "bad");
    let mut good = peer(&s, 2, "good");
    use std::io::Write;
    bad.send.write_all(&[0x99, 0x00, 1, 2, 3]).unwrap();
    assert!(bad.send_closed_by_server());
    assert_eq!(good.upload("still", b"fine", 2), StatusCode::OK);
}

#[test]
fn two_hundred_peers_all_receive_one_upload() {
    let tmp = TempDir::new("200");
    let s = start(&tmp, &[]);
    let started = Instant::now();
    let mut peers: Vec<RawPeer> = (0..200u8).map(|i| RawPeer::hello(s.send_port, s.recv_port, [i; 16], "p")).collect();
    for p in &mut peers {
        p.receive_metadata();
    }
    let connected = started.elapsed();
    let data = vec![42u8; 64 * 1024];
    let t = Instant::now();
    assert_eq!(peers[0].upload("shared.bin", &data, 16 * 1024), StatusCode::OK);
    // Real clients read all the time: every peer reads on its own thread.
    std::thread::scope(|scope| {
        for p in &mut peers[1..] {
            let data = &data;
            scope.spawn(move || assert_eq!(p.receive_one(), ("shared.bin".to_string(), Some(data.clone()))));
        }
    });
    let fanout = t.elapsed();
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap_or_default();
    let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
    eprintln!("200 peers: connect {connected:?}, fan-out to 199 {fanout:?}, server {} {}", field("VmHWM"), field("Threads"));
}

#[test]
fn server_interleaves_transfers_to_one_client() {
    let tmp = TempDir::new("interleave");
    let s = start(&tmp, &["--parallel", "4", "--chunk-size", "1024"]);
    let mut a = peer(&s, 1, "a");
    let files: Vec<(String, Vec<u8>)> = (0..6).map(|i| (format!("f{i}"), vec![i as u8; 5000 + i * 100])).collect();
    for (name, data) in &files {
        assert_eq!(a.upload(name, data, 4096), StatusCode::OK);
    }
    // B connects later: all six arrive by REQUEST, interleaved on the wire.
    let mut b = peer(&s, 2, "b");
    use std::io::Write;
    let mut burst = Vec::new();
    for (name, _) in &files {
        Frame::Request { digest: ZERO_DIGEST, name }.encode(&mut burst);
    }
    b.send.write_all(&burst).unwrap();
    for _ in &files {
        assert_eq!(b.send_status(), StatusCode::OK);
    }
    // Read the raw stream: chunks of different files must alternate. A file
    // may come twice (b can pair between a's last reply and its fan-out,
    // and a REQUEST is always served): each transfer is assembled apart.
    let mut order = Vec::new();
    let mut partial: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut got: std::collections::HashMap<String, Vec<u8>> = Default::default();
    while got.len() < files.len() {
        match b.recv_rx.read_msg().unwrap().unwrap() {
            dropsync_io::wire::Msg::Chunk { name, len, .. } => {
                let p = b.recv_rx.read_payload(len).unwrap().to_vec();
                partial.entry(name.clone()).or_default().extend(p);
                order.push(name);
                b.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
            }
            dropsync_io::wire::Msg::Named { name, .. } => {
                got.insert(name.clone(), partial.remove(&name).unwrap_or_default());
                b.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    let switches = order.windows(2).filter(|w| w[0] != w[1]).count();
    assert!(switches > files.len(), "chunks did not interleave: {order:?}");
    for (name, data) in &files {
        assert_eq!(&got[name], data);
    }
}

/// A content uploaded in chunks of the server's size goes out with the
/// chunk digests kept from its upload (not hashed again); one uploaded in
/// another size is hashed as it goes. Either way every chunk's digest is
/// its payload's MD5, and the file arrives whole.
#[test]
fn deliveries_send_each_chunk_with_its_own_digest_whatever_the_upload_chunk_size() {
    let tmp = TempDir::new("chunkdigests");
    let s = start(&tmp, &["--chunk-size", "1024"]);
    let mut a = peer(&s, 1, "a");
    let data = |seed: u32| -> Vec<u8> {
        (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> (seed % 24)) as u8).collect()
    };
    let files = [("same-size", data(3), 1024), ("other-size", data(7), 1000), ("one-chunk", data(11), 8192)];
    for (name, bytes, chunk) in &files {
        assert_eq!(a.upload(name, bytes, *chunk), StatusCode::OK, "{name}");
    }
    let mut b = peer(&s, 2, "b");
    use std::io::Write;
    let content = |n: &str| files.iter().find(|(f, _, _)| *f == n).map(|(_, bytes, _)| bytes.clone()).unwrap();
    // The last upload may reach b as well, fanned out, when b pairs between
    // its reply and its fan-out: each transfer is checked on its own.
    let mut partial: std::collections::HashMap<String, Vec<u8>> = Default::default();
    for (name, _, _) in &files {
        b.send.write_all(&Frame::Request { digest: ZERO_DIGEST, name }.to_vec()).unwrap();
        assert_eq!(b.send_status(), StatusCode::OK);
        loop {
            match b.recv_rx.read_msg().unwrap().unwrap() {
                dropsync_io::wire::Msg::Chunk { digest, name: n, len } => {
                    let payload = b.recv_rx.read_payload(len).unwrap().to_vec();
                    let got = partial.entry(n.clone()).or_default();
                    assert_eq!(payload.len(), 1024.min(content(&n).len() - got.len()), "{n}: the server's chunk size");
                    assert_eq!(digest, md5(&payload), "{n}: chunk at {}", got.len());
                    got.extend(payload);
                    b.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
                }
                dropsync_io::wire::Msg::Named { digest, name: n, .. } => {
                    assert_eq!(digest, md5(&content(&n)), "{n}");
                    assert_eq!(partial.remove(&n).unwrap_or_default(), content(&n), "{n}");
                    b.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
                    if n == *name {
                        break;
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn wrong_connection_messages_are_answered_not_fatal() {
    let tmp = TempDir::new("wrongconn");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    use std::io::Write;
    // A REQUEST and a chunk on the receive connection: 0x0100 each.
    a.recv.write_all(&Frame::Request { digest: ZERO_DIGEST, name: "f1" }.to_vec()).unwrap();
    a.recv.write_all(&Frame::Chunk { digest: md5(b"x"), name: "f2", payload: b"x" }.to_vec()).unwrap();
    for _ in 0..2 {
        match a.recv_rx.read_msg().unwrap() {
            Some(dropsync_io::wire::Msg::Status(c)) => assert_eq!(c, StatusCode::BAD_REQUEST),
            other => panic!("{other:?}"),
        }
    }
    // A repeated HELLO on the send connection: OK, nothing else.
    assert_eq!(a.request(&Frame::Hello { client_id: [1; 16], label: "a" }), StatusCode::OK);
    assert_eq!(a.upload("still", b"works", 5), StatusCode::OK);
}

/// [ext] parallel transfers: one burst of interleaved messages of several
/// uploads, with mixed outcomes, answered in order, each transfer unaffected
/// by the others.
#[test]
fn interleaved_uploads_in_one_burst_get_replies_in_order() {
    let tmp = TempDir::new("burst");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    let mut c = peer(&s, 3, "c");
    // B holds the lock on "held".
    assert_eq!(b.request(&Frame::Chunk { digest: md5(b"b"), name: "held", payload: b"b" }), StatusCode::OK);
    let (p1, p2) = (b"one-a".as_slice(), b"one-b".as_slice());
    let bad = Frame::Chunk { digest: md5(b"wrong"), name: "two", payload: b"two" };
    let burst: Vec<Frame<'_>> = vec![
        Frame::Chunk { digest: md5(p1), name: "one", payload: p1 },
        bad,
        Frame::Chunk { digest: md5(b"x"), name: "held", payload: b"x" },
        Frame::Chunk { digest: md5(b"three"), name: "three", payload: b"three" },
        Frame::Chunk { digest: md5(p2), name: "one", payload: p2 },
        Frame::Chunk { digest: md5(b"two"), name: "two", payload: b"two" },
        Frame::abort("three"),
        Frame::Finished { digest: md5(b"one-aone-b"), name: "one" },
        Frame::Finished { digest: md5(b"two"), name: "two" },
    ];
    let mut bytes = Vec::new();
    for f in &burst {
        f.encode(&mut bytes);
    }
    use std::io::Write;
    a.send.write_all(&bytes).unwrap();
    let replies: Vec<StatusCode> = burst.iter().map(|_| a.send_status()).collect();
    use StatusCode as S;
    assert_eq!(
        replies,
        [S::OK, S::RESEND_CHECKSUM, S::LOCKED, S::OK, S::OK, S::OK, S::OK, S::OK, S::OK]
    );
    // C sees exactly the two committed files, with their whole contents.
    assert_eq!(
        c.receive_n(2),
        vec![("one".to_string(), Some(b"one-aone-b".to_vec())), ("two".to_string(), Some(b"two".to_vec()))]
    );
    c.expect_no_transfer(Duration::from_millis(300));
    // B's transfer of "held" was not disturbed.
    assert_eq!(b.request(&Frame::Finished { digest: md5(b"b"), name: "held" }), StatusCode::OK);
}

/// Large chunks are written and hashed on a sink thread: the same rules hold.
#[test]
fn large_chunk_uploads_through_the_sink_thread() {
    let tmp = TempDir::new("sink");
    let s = start(&tmp, &[]);
    let mut a = peer(&s, 1, "a");
    let mut b = peer(&s, 2, "b");
    let data: Vec<u8> = (0..3 * 1024 * 1024 + 17u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
    let chunk = 1024 * 1024;
    // A bad checksum in the middle is resent; the whole file commits.
    for (i, piece) in data.chunks(chunk).enumerate() {
        if i == 1 {
            let bad = Frame::Chunk { digest: md5(b"nope"), name: "big", payload: piece };
            assert_eq!(a.request(&bad), StatusCode::RESEND_CHECKSUM);
        }
        assert_eq!(a.request(&Frame::Chunk { digest: md5(piece), name: "big", payload: piece }), StatusCode::OK);
    }
    assert_eq!(a.request(&Frame::Finished { digest: md5(&data), name: "big" }), StatusCode::OK);
    assert_eq!(b.receive_one(), ("big".to_string(), Some(data.clone())));
    // A wrong whole-file digest is caught with the hash done on the thread.
    for piece in data.chunks(chunk) {
        assert_eq!(a.request(&Frame::Chunk { digest: md5(piece), name: "big2", payload: piece }), StatusCode::OK);
    }
    assert_eq!(a.request(&Frame::Finished { digest: md5(b"other"), name: "big2" }), StatusCode::ABORT_CHECKSUM);
    // An ABORT mid-way drops the thread's temp file.
    let first = &data[..chunk];
    assert_eq!(a.request(&Frame::Chunk { digest: md5(first), name: "big3", payload: first }), StatusCode::OK);
    assert_eq!(a.request(&Frame::abort("big3")), StatusCode::OK);
    assert!(
        wait_until(DEFAULT_DEADLINE, || std::fs::read_dir(tmp.join("root/tmp")).unwrap().next().is_none()),
        "temp files left"
    );
}
