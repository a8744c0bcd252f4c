//! Content is known by a strong hash, never by MD5 alone (PROTOCOL.md
//! section 6), shown with the published MD5 collision pair (Wang et al.,
//! 2004: two different 128-byte blocks with one MD5): at two paths each
//! keeps its own bytes, on the server and every client, across a restart;
//! uploaded over each other at one path, the second is a new version pushed
//! to everyone. And a store written before, which kept content by MD5, is
//! adopted on start.
#![allow(clippy::unwrap_used)]

use std::fs;

use dropsync_proto::metadata::{parse_document, EntryState};
use dropsync_proto::{md5, Frame, StatusCode, ZERO_DIGEST};
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

const COLLISION_A: &str = "d131dd02c5e6eec4693d9a0698aff95c2fcab58712467eab4004583eb8fb7f8955ad340609f4b30283e488832571415a085125e8f7cdc99fd91dbdf280373c5bd8823e3156348f5bae6dacd436c919c6dd53e2b487da03fd02396306d248cda0e99f33420f577ee8ce54b67080a80d1ec69821bcb6a8839396f9652b6ff72a70";
const COLLISION_B: &str = "d131dd02c5e6eec4693d9a0698aff95c2fcab50712467eab4004583eb8fb7f8955ad340609f4b30283e4888325f1415a085125e8f7cdc99fd91dbd7280373c5bd8823e3156348f5bae6dacd436c919c6dd53e23487da03fd02396306d248cda0e99f33420f577ee8ce54b67080280d1ec69821bcb6a8839396f965ab6ff72a70";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn pair() -> (Vec<u8>, Vec<u8>) {
    let (a, b) = (unhex(COLLISION_A), unhex(COLLISION_B));
    assert_ne!(a, b);
    assert_eq!(md5(&a), md5(&b), "the published pair collides");
    (a, b)
}

fn peer(s: &ServerProc, id: u8) -> RawPeer {
    let mut p = RawPeer::hello(s.send_port, s.recv_port, [id; 16], "peer");
    p.receive_metadata();
    p
}

/// Asks for `name` with REQUEST and returns what the server sends.
fn fetch(p: &mut RawPeer, name: &str) -> Vec<u8> {
    assert_eq!(p.request(&Frame::Request { digest: ZERO_DIGEST, name }), StatusCode::OK);
    let (got, data) = p.receive_one();
    assert_eq!(got, name);
    data.expect("a file")
}

#[test]
fn two_files_with_one_md5_keep_their_own_bytes_everywhere() {
    let (a, b) = pair();
    let tmp = TempDir::new("collide-two-paths");
    let mut s = ServerProc::start(&tmp.join("root"), &[]);
    let mut up = peer(&s, 1);
    let mut other = peer(&s, 2);
    assert_eq!(up.upload("a.bin", &a, 64), StatusCode::OK);
    assert_eq!(up.upload("b.bin", &b, 128), StatusCode::OK);
    assert_eq!(other.receive_n(2), vec![("a.bin".to_string(), Some(a.clone())), ("b.bin".to_string(), Some(b.clone()))]);
    // A client that connects later, and after a restart.
    for round in 0..2 {
        let mut late = peer(&s, 3 + round);
        assert_eq!(fetch(&mut late, "a.bin"), a, "round {round}");
        assert_eq!(fetch(&mut late, "b.bin"), b, "round {round}");
        drop(late);
        s.restart();
    }
    let blobs = fs::read_dir(tmp.join("root/blobs")).unwrap().flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap()).count();
    assert_eq!(blobs, 2, "one blob for each content");
}

#[test]
fn an_upload_over_content_with_the_same_md5_is_a_new_version() {
    let (a, b) = pair();
    let tmp = TempDir::new("collide-one-path");
    let s = ServerProc::start(&tmp.join("root"), &[]);
    let mut up = peer(&s, 1);
    let mut other = peer(&s, 2);
    assert_eq!(up.upload("f.bin", &a, 64), StatusCode::OK);
    assert_eq!(other.receive_one(), ("f.bin".to_string(), Some(a.clone())));
    // Same MD5, other bytes: not "identical", a new version, pushed.
    assert_eq!(up.upload("f.bin", &b, 64), StatusCode::OK);
    assert_eq!(other.receive_one(), ("f.bin".to_string(), Some(b.clone())));
    let mut late = RawPeer::hello(s.send_port, s.recv_port, [3; 16], "late");
    let doc = parse_document(&late.receive_metadata()).unwrap();
    let f = doc.entries.iter().find(|e| e.path == "f.bin").unwrap();
    assert_eq!((f.version, f.state, f.strong), (2, EntryState::File, None), "version 2; no strong digest on the wire");
    // The same bytes again is the identical upload: no new version.
    assert_eq!(up.upload("f.bin", &b, 64), StatusCode::OK);
    let doc = parse_document(&peer_metadata(&s, 4)).unwrap();
    assert_eq!(doc.entries.iter().find(|e| e.path == "f.bin").unwrap().version, 2);
}

fn peer_metadata(s: &ServerProc, id: u8) -> String {
    RawPeer::hello(s.send_port, s.recv_port, [id; 16], "observer").receive_metadata()
}

#[test]
fn a_store_that_kept_content_by_md5_is_adopted_on_start() {
    let tmp = TempDir::new("legacy-store");
    let root = tmp.join("root");
    // The layout before strong keys: blobs/xx/<md5 hex>, lines of six fields.
    let hex = dropsync_proto::digest::to_hex(&md5(b"hello"));
    fs::create_dir_all(root.join("blobs").join(&hex[..2])).unwrap();
    fs::write(root.join("blobs").join(&hex[..2]).join(&hex), b"hello").unwrap();
    fs::create_dir_all(root.join("meta")).unwrap();
    let lines = format!("dropsync-metadata 1\n# generation 1\n1\t{hex}\t5\t0\tF\thello.txt\n2\t{hex}\t5\t0\tF\tcopy.txt\n");
    fs::write(root.join("meta/metadata"), lines).unwrap();
    let s = ServerProc::start(&root, &[]);
    let mut p = peer(&s, 1);
    assert_eq!(fetch(&mut p, "hello.txt"), b"hello");
    assert_eq!(fetch(&mut p, "copy.txt"), b"hello");
    let snapshot = fs::read_to_string(root.join("meta/metadata")).unwrap();
    assert_eq!(snapshot.matches("\tsha256:").count(), 2, "{snapshot}");
    assert!(!root.join("blobs").join(&hex[..2]).join(&hex).exists(), "the MD5-named blob is gone");
}
