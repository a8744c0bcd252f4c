//! First contact: pairing, META-DATA, one upload fanned out.
use dropsync_proto::StatusCode;
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

#[test]
fn pair_upload_fan_out() {
    let tmp = TempDir::new("smoke");
    let server = ServerProc::start(&tmp.join("root"), &[]);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    // A session that said HELLO is told the extensions it may offer, and
    // what the META-DATA lists [ext]: every path, as of version 0.
    let text = a.receive_metadata();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["dropsync-metadata 1", "# ext copy index"], "{text}");
    assert!(lines[2].starts_with("# index ") && lines[2].ends_with(" 0") && lines.len() == 3, "{text}");
    let mut b = RawPeer::hello(server.send_port, server.recv_port, [2; 16], "b");
    b.receive_metadata();
    assert_eq!(a.upload("x/y.txt", b"hello world", 4), StatusCode::OK);
    let (name, data) = b.receive_one();
    assert_eq!((name.as_str(), data.as_deref()), ("x/y.txt", Some(&b"hello world"[..])), "log: {}", server.log());
}
