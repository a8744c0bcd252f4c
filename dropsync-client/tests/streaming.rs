//! [ext] Streaming deliveries received by the real client (docs/PROTOCOL.md,
//! "Streaming deliveries"): the file arrives while its upload does, into a
//! temp file, and is installed only at its FINISHED, after the upload's
//! commit; a streamed file whose upload is aborted never appears, and its
//! temp file goes.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::Net;
use dropsync_proto::{md5, Frame, StatusCode};
use dropsync_testkit::{wait_until, RawPeer, DEFAULT_DEADLINE};

const MIB: usize = 1 << 20;

/// Bytes in the client's incoming temp files (`.dropsync/tmp/in-*`).
fn incoming_bytes(folder: &Path) -> u64 {
    let Ok(dir) = fs::read_dir(folder.join(".dropsync/tmp")) else { return 0 };
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("in-"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

fn send_chunks(a: &mut RawPeer, name: &str, data: &[u8]) {
    for piece in data.chunks(MIB) {
        assert_eq!(a.request(&Frame::Chunk { digest: md5(piece), name, payload: piece }), StatusCode::OK);
    }
}

#[test]
fn a_streamed_file_is_installed_at_its_finished_and_an_aborted_one_never() {
    let net = Net::new("stream-client");
    let b = net.folder("b");
    let cb = net.client("b", &[]);
    assert!(wait_until(DEFAULT_DEADLINE, || cb.log().contains("reconciled")), "{}", cb.log());
    let mut a = RawPeer::hello(net.server.send_port, net.server.recv_port, [7; 16], "a");
    a.receive_metadata();

    let file: Vec<u8> = (0..10 * MIB + 5).map(|i| (i % 251) as u8).collect();
    send_chunks(&mut a, "big", &file[..9 * MIB]);
    // B receives it while A has not finished: into a temp file, nothing in
    // its folder yet.
    assert!(wait_until(DEFAULT_DEADLINE, || incoming_bytes(&b) >= 8 * MIB as u64), "{}", cb.log());
    assert!(!b.join("big").exists());
    send_chunks(&mut a, "big", &file[9 * MIB..]);
    assert_eq!(a.request(&Frame::Finished { digest: md5(&file), name: "big" }), StatusCode::OK);
    assert!(wait_until(DEFAULT_DEADLINE, || fs::read(b.join("big")).is_ok_and(|d| d == file)), "{}", cb.log());

    // An upload aborted while B receives it: B drops what it got.
    send_chunks(&mut a, "gone", &file[..9 * MIB]);
    assert!(wait_until(DEFAULT_DEADLINE, || incoming_bytes(&b) >= 8 * MIB as u64), "{}", cb.log());
    assert_eq!(a.request(&Frame::abort("gone")), StatusCode::OK);
    assert!(wait_until(DEFAULT_DEADLINE, || incoming_bytes(&b) == 0), "{}", cb.log());
    assert!(!b.join("gone").exists(), "{}", cb.log());
    // Nothing else of it comes: B's folder holds the one file.
    let names: Vec<String> =
        fs::read_dir(&b).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    let mut names: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != ".dropsync").collect();
    names.sort_unstable();
    assert_eq!(names, ["big"]);
}
