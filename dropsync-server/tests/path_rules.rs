//! Names that cannot live beside the live files (issue 17), at the server:
//! it never holds both `p` and `p/q` (a new one of them gets 0x0080, try
//! again later: a swap's deletes clear the way), and refuses a case twin of
//! a live file with 0x0100 unless started with `--allow-case-twins`.
#![allow(clippy::unwrap_used)]

use dropsync_proto::{md5, Frame, StatusCode};
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

fn peer(s: &ServerProc, id: u8) -> RawPeer {
    let mut p = RawPeer::hello(s.send_port, s.recv_port, [id; 16], "peer");
    p.receive_metadata();
    p
}

#[test]
fn a_file_and_a_folder_of_one_name_never_live_together() {
    let tmp = TempDir::new("path-rules");
    let s = ServerProc::start(&tmp.join("root"), &[]);
    let mut p = peer(&s, 1);
    assert_eq!(p.upload("d/f1.txt", b"one", 64), StatusCode::OK);
    assert_eq!(p.upload("e", b"a file", 64), StatusCode::OK);
    assert_eq!(p.upload("d", b"file over a folder", 64), StatusCode::IN_USE);
    assert_eq!(p.upload("e/x", b"under a file", 64), StatusCode::IN_USE);
    assert_eq!(p.upload("e/x/y", b"deeper", 64), StatusCode::IN_USE);
    // The swap done right: the deletes clear the way.
    assert_eq!(p.request(&Frame::Delete { digest: md5(b"one"), name: "d/f1.txt" }), StatusCode::OK);
    assert_eq!(p.upload("d", b"file over a folder", 64), StatusCode::OK);
    assert_eq!(p.request(&Frame::Delete { digest: md5(b"a file"), name: "e" }), StatusCode::OK);
    assert_eq!(p.upload("e/x", b"under what was a file", 64), StatusCode::OK);
    let meta = RawPeer::hello(s.send_port, s.recv_port, [2; 16], "reader").receive_metadata();
    let live: Vec<&str> = meta.lines().filter(|l| l.contains("\tF\t")).filter_map(|l| l.rsplit('\t').next()).collect();
    assert_eq!(live, ["d", "e/x"], "{meta}");
}

#[test]
fn case_twins_are_refused_unless_allowed() {
    let tmp = TempDir::new("path-rules-case");
    let s = ServerProc::start(&tmp.join("root"), &[]);
    let mut p = peer(&s, 1);
    assert_eq!(p.upload("Notes/ReadMe.txt", b"one", 64), StatusCode::OK);
    assert_eq!(p.upload("notes/README.TXT", b"twin", 64), StatusCode::BAD_REQUEST);
    assert_eq!(p.upload("Notes/ReadMe.txt", b"an edit", 64), StatusCode::OK, "the file itself is no twin");
    let open = ServerProc::start(&tmp.join("root2"), &["--allow-case-twins"]);
    let mut q = peer(&open, 1);
    assert_eq!(q.upload("Notes/ReadMe.txt", b"one", 64), StatusCode::OK);
    assert_eq!(q.upload("notes/README.TXT", b"twin", 64), StatusCode::OK);
}
