//! [ext] META-DATA since a version, on the wire (docs/PROTOCOL.md, "META-DATA
//! since a version"): a client id that acknowledged a listing is sent only
//! the lines since; a wrong acknowledgement changes nothing; "/more" sends
//! what changed but for what the session received; "every path" forgets the
//! acknowledgement; a legacy session never sees any of it.
use dropsync_proto::index::{ack_name, more_name, parse_listing, Listing, INDEX_NAME};
use dropsync_proto::{Frame, StatusCode, ZERO_DIGEST};
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

/// The listing line of a META-DATA text, and its path lines.
fn read(text: &str) -> (Listing, Vec<String>) {
    let listing = text.lines().find_map(parse_listing).expect("a listing line").expect("that parses");
    let paths = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains('\t'))
        .map(|l| l.rsplit('\t').next().unwrap_or_default().to_owned())
        .collect();
    (listing, paths)
}

fn request(peer: &mut RawPeer, name: &str) -> StatusCode {
    peer.request(&Frame::Request { digest: ZERO_DIGEST, name })
}

/// A server on an empty root, and client "a" paired with it: its listing.
fn server_and_a(tag: &str) -> (TempDir, ServerProc, RawPeer, Listing) {
    let tmp = TempDir::new(tag);
    let server = ServerProc::start(&tmp.join("root"), &[]);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    let (first, paths) = read(&a.receive_metadata());
    assert_eq!((first.upto, first.since, paths.len()), (0, None, 0));
    (tmp, server, a, first)
}

#[test]
fn an_acknowledged_listing_is_followed_by_the_changes_since() {
    let (_tmp, server, mut a, first) = server_and_a("delta-wire");
    for name in ["f1", "f2", "f3"] {
        assert_eq!(a.upload(name, name.as_bytes(), 64), StatusCode::OK);
    }
    // Only the listing the session was sent can be acknowledged.
    let wrong = Listing { upto: 3, ..first };
    assert_eq!(request(&mut a, &ack_name(&wrong)), StatusCode::NO_FILE);
    assert_eq!(request(&mut a, &ack_name(&Listing { store: [9; 16], ..first })), StatusCode::NO_FILE);
    assert_eq!(request(&mut a, &ack_name(&first)), StatusCode::OK);
    // What changed since, but for what this session received: its own three.
    assert_eq!(request(&mut a, &more_name(&first)), StatusCode::OK);
    let (more, paths) = read(&a.receive_metadata());
    assert_eq!((more.store, more.since, more.upto), (first.store, Some(0), 3));
    assert!(paths.is_empty(), "{paths:?}");
    assert_eq!(request(&mut a, &ack_name(&more)), StatusCode::OK);
    // One such pass over the table per session every few seconds at most.
    assert_eq!(request(&mut a, &more_name(&more)), StatusCode::NO_FILE);
    drop(a);

    // Another client changes one file and adds one; a comes back.
    let mut b = RawPeer::hello(server.send_port, server.recv_port, [2; 16], "b");
    let (full, paths) = read(&b.receive_metadata());
    assert_eq!((full.since, paths.len()), (None, 3));
    assert_eq!(b.upload("f2", b"f2 from b", 64), StatusCode::OK);
    assert_eq!(b.upload("f4", b"f4", 64), StatusCode::OK);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    let (delta, paths) = read(&a.receive_metadata());
    assert_eq!((delta.since, delta.upto), (Some(3), 5));
    assert_eq!(paths, ["f2", "f4"]);

    // "Every path next time": the following session lists them all.
    assert_eq!(request(&mut a, INDEX_NAME), StatusCode::OK);
    drop(a);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    let (again, paths) = read(&a.receive_metadata());
    assert_eq!((again.since, paths.len()), (None, 4));
}

/// A `/more` listing does not count its versions as seen by the session
/// (the client only saves them): a change the client makes over one of
/// them still keeps that version as a conflict copy (section 6).
#[test]
fn a_version_only_listed_by_more_is_kept_when_overwritten() {
    let (_tmp, server, mut a, first) = server_and_a("delta-stale");
    assert_eq!(request(&mut a, &ack_name(&first)), StatusCode::OK);
    assert_eq!(a.upload("p", b"a's first", 64), StatusCode::OK);
    let mut b = RawPeer::hello(server.send_port, server.recv_port, [2; 16], "b");
    b.receive_metadata();
    assert_eq!(b.upload("p", b"b's version", 64), StatusCode::OK);
    // a refuses the delivery of b's version (file in use): never seen.
    assert_eq!(a.answer_next(StatusCode::IN_USE), "p");
    assert_eq!(request(&mut a, &more_name(&first)), StatusCode::OK);
    let (_, listed) = read(&a.receive_metadata());
    assert_eq!(listed, ["p"], "b's version, which a did not receive");
    assert_eq!(a.upload("p", b"a's second", 64), StatusCode::OK);
    let mut c = RawPeer::hello(server.send_port, server.recv_port, [3; 16], "c");
    let (_, paths) = read(&c.receive_metadata());
    assert!(paths.iter().any(|p| p.starts_with("p (conflicted copy b ")), "b's version kept: {paths:?}");
}

#[test]
fn a_legacy_session_sees_none_of_it() {
    let tmp = TempDir::new("delta-legacy");
    let server = ServerProc::start(&tmp.join("root"), &[]);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    a.receive_metadata();
    assert_eq!(a.upload("f", b"f", 64), StatusCode::OK);
    let mut legacy = RawPeer::connect_raw(server.send_port, server.recv_port);
    let text = legacy.receive_metadata();
    assert!(!text.contains("# "), "the contract's text alone: {text}");
    assert_eq!(request(&mut legacy, INDEX_NAME), StatusCode::BAD_REQUEST);
}
