//! [ext] Streaming deliveries, on the wire (docs/PROTOCOL.md, "Streaming
//! deliveries"): a large upload reaches the other clients while it
//! arrives; their FINISHED goes out only after its commit, with the
//! version it made; an upload that fails ends them with ABORT; one that
//! stalls is given up and delivered as usual once committed; none of it
//! with `--no-streaming`.
use std::io::Write;
use std::time::Duration;

use dropsync_io::wire::Msg;
use dropsync_proto::{md5, Digest, Frame, MessageType, StatusCode};
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

const MIB: usize = 1 << 20;

/// What a peer's receive connection got (each message answered OK).
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Chunk(String, usize),
    Finished(String, Digest),
    Abort(String),
}

/// The next transfer message to `peer` (keep-alives skipped), answered OK;
/// a chunk's payload, checked against its digest, is appended to `data`.
fn next(peer: &mut RawPeer, data: &mut Vec<u8>) -> Got {
    loop {
        let msg = peer.recv_rx.read_msg().expect("a message").expect("the connection open");
        let got = match msg {
            Msg::Status(StatusCode::KEEP_ALIVE) => continue,
            Msg::Chunk { digest, len, name } => {
                let payload = peer.recv_rx.read_payload(len).expect("its payload");
                assert_eq!(md5(payload), digest, "chunk digest");
                data.extend_from_slice(payload);
                Got::Chunk(name, len as usize)
            }
            Msg::Named { kind: MessageType::Finished, digest, name } => Got::Finished(name, digest),
            Msg::Named { kind: MessageType::Abort, name, .. } => Got::Abort(name),
            other => panic!("unexpected {other:?}"),
        };
        peer.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).expect("reply");
        return got;
    }
}

/// `n` bytes that differ from chunk to chunk.
fn content(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i / 4093 + i % 251) as u8).collect()
}

/// Sends the chunks of `data[from..to]` in pieces of `chunk`, each answered OK.
fn send_chunks(a: &mut RawPeer, name: &str, data: &[u8], chunk: usize) {
    for piece in data.chunks(chunk) {
        let st = a.request(&Frame::Chunk { digest: md5(piece), name, payload: piece });
        assert_eq!(st, StatusCode::OK);
    }
}

/// A server (with `extra` flags) and two HELLO clients past their META-DATA.
fn server_a_b(tag: &str, extra: &[&str]) -> (TempDir, ServerProc, RawPeer, RawPeer) {
    let tmp = TempDir::new(tag);
    let server = ServerProc::start(&tmp.join("root"), extra);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    let mut b = RawPeer::hello(server.send_port, server.recv_port, [2; 16], "b");
    a.receive_metadata();
    b.receive_metadata();
    (tmp, server, a, b)
}

#[test]
fn a_large_upload_reaches_another_client_while_it_arrives_and_finishes_after_its_commit() {
    streams_while_it_arrives("stream-commit", &[]);
}

/// The same with a dedicated sender per client (the offer ends its wait on
/// the queue).
#[test]
fn a_dedicated_sender_streams_too() {
    streams_while_it_arrives("stream-dedicated", &["--workers", "0"]);
}

fn streams_while_it_arrives(tag: &str, extra: &[&str]) {
    let (_tmp, _server, mut a, mut b) = server_a_b(tag, extra);
    let file = content(10 * MIB + 12_345);
    // Nine of A's chunks: past the 8 MiB after which an upload is offered.
    send_chunks(&mut a, "big", &file[..9 * MIB], MIB);
    // B is sent those nine (the server's chunks are 1 MiB too) before A
    // has even finished...
    let mut got = Vec::new();
    for _ in 0..9 {
        assert_eq!(next(&mut b, &mut got), Got::Chunk("big".into(), MIB));
    }
    assert_eq!(got, file[..9 * MIB]);
    // ...and nothing more until more arrives: no short chunk, no FINISHED.
    b.expect_no_transfer(Duration::from_millis(500));
    send_chunks(&mut a, "big", &file[9 * MIB..], MIB);
    assert_eq!(a.request(&Frame::Finished { digest: md5(&file), name: "big" }), StatusCode::OK);
    assert_eq!(next(&mut b, &mut got), Got::Chunk("big".into(), MIB));
    assert_eq!(next(&mut b, &mut got), Got::Chunk("big".into(), 12_345));
    assert_eq!(next(&mut b, &mut got), Got::Finished("big".into(), md5(&file)));
    assert!(got == file, "B received the file whole");
    // The commit queued "big" for B too: it is skipped, B has it.
    b.expect_no_transfer(Duration::from_secs(1));
    // B saw that version (the stale-change rule): its change of the file
    // overwrites it without a conflict copy, and A gets just that change.
    assert_eq!(b.upload("big", b"b's version", 1024), StatusCode::OK);
    assert_eq!(a.receive_one(), ("big".to_owned(), Some(b"b's version".to_vec())));
    a.expect_no_transfer(Duration::from_secs(1));
}

#[test]
fn an_upload_that_fails_ends_its_streamed_deliveries_with_abort() {
    let (_tmp, server, mut a, mut b) = server_a_b("stream-abort", &[]);
    let file = content(9 * MIB);
    send_chunks(&mut a, "big", &file, MIB);
    let mut got = Vec::new();
    assert_eq!(next(&mut b, &mut got), Got::Chunk("big".into(), MIB));
    assert_eq!(a.request(&Frame::abort("big")), StatusCode::OK);
    // The chunks already written may still come; then the ABORT.
    let end = loop {
        match next(&mut b, &mut got) {
            Got::Chunk(..) => continue,
            other => break other,
        }
    };
    assert_eq!(end, Got::Abort("big".into()));
    b.expect_no_transfer(Duration::from_secs(1));
    // Nothing was committed.
    let mut c = RawPeer::hello(server.send_port, server.recv_port, [3; 16], "c");
    let listing = c.receive_metadata();
    assert!(!listing.contains("\tbig"), "{listing}");
}

#[test]
fn a_stalled_upload_is_given_up_then_delivered_once_committed() {
    let (_tmp, _server, mut a, mut b) = server_a_b("stream-stall", &[]);
    // A's chunks (768 KiB) are not the server's (1 MiB): it hashes its own.
    let chunk = 768 * 1024;
    let file = content(12 * chunk + 7);
    send_chunks(&mut a, "big", &file[..11 * chunk], chunk);
    let mut got = Vec::new();
    let end = loop {
        match next(&mut b, &mut got) {
            Got::Chunk(name, len) => assert_eq!((name.as_str(), len), ("big", MIB)),
            other => break other,
        }
    };
    // A went quiet: B's delivery gave up rather than wait on it.
    assert_eq!(end, Got::Abort("big".into()));
    assert_eq!(got, file[..got.len()]);
    send_chunks(&mut a, "big", &file[11 * chunk..], chunk);
    assert_eq!(a.request(&Frame::Finished { digest: md5(&file), name: "big" }), StatusCode::OK);
    let (name, data) = b.receive_one();
    assert_eq!(name, "big");
    assert!(data.as_deref() == Some(&file[..]), "delivered whole once committed");
}

#[test]
fn without_streaming_nothing_goes_out_before_the_commit() {
    let (_tmp, _server, mut a, mut b) = server_a_b("stream-off", &["--no-streaming"]);
    let file = content(9 * MIB + 1);
    send_chunks(&mut a, "big", &file[..9 * MIB], MIB);
    b.expect_no_transfer(Duration::from_millis(500));
    send_chunks(&mut a, "big", &file[9 * MIB..], MIB);
    assert_eq!(a.request(&Frame::Finished { digest: md5(&file), name: "big" }), StatusCode::OK);
    let (name, data) = b.receive_one();
    assert_eq!(name, "big");
    assert!(data.as_deref() == Some(&file[..]));
}

/// An uploader that never stops for 2 s in one go, only trickles (a chunk
/// every 1.2 s), keeps the delivery following it waiting at most 2 s in all
/// once another path waits for that client: B gets the other path while A
/// is still uploading, then A's file once committed.
#[test]
fn a_trickling_upload_holds_back_the_clients_other_paths_only_a_moment() {
    let (_tmp, server, mut a, mut b) = server_a_b("stream-trickle", &[]);
    let file = content(17 * MIB);
    send_chunks(&mut a, "big", &file[..9 * MIB], MIB);
    let mut got = Vec::new();
    for _ in 0..9 {
        assert_eq!(next(&mut b, &mut got), Got::Chunk("big".into(), MIB));
    }
    let a_done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let uploader = s.spawn(|| {
            // The slow peer: one chunk every 1.2 s (its pace, not a wait
            // for anything), then FINISHED.
            for piece in file[9 * MIB..].chunks(MIB) {
                std::thread::sleep(Duration::from_millis(1200));
                assert_eq!(a.request(&Frame::Chunk { digest: md5(piece), name: "big", payload: piece }), StatusCode::OK);
            }
            assert_eq!(a.request(&Frame::Finished { digest: md5(&file), name: "big" }), StatusCode::OK);
            a_done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let mut c = RawPeer::hello(server.send_port, server.recv_port, [3; 16], "c");
        c.receive_metadata();
        assert_eq!(c.upload("small", b"small", 64), StatusCode::OK);
        // B's delivery of "big" gives up (it may send the chunks A wrote
        // meanwhile first), and "small" follows, while A still uploads.
        let end = loop {
            match next(&mut b, &mut got) {
                Got::Chunk(name, _) if name == "big" => continue,
                other => break other,
            }
        };
        assert_eq!(end, Got::Abort("big".into()));
        assert_eq!(b.receive_one(), ("small".to_owned(), Some(b"small".to_vec())));
        assert!(!a_done.load(std::sync::atomic::Ordering::SeqCst), "B got its other path only after A's whole upload");
        uploader.join().expect("the uploader");
    });
    let (name, data) = b.receive_one();
    assert_eq!(name, "big");
    assert!(data.as_deref() == Some(&file[..]), "delivered whole once committed");
}
