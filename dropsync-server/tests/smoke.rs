//! First contact: pairing, META-DATA, one upload fanned out.
use dropsync_proto::StatusCode;
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

#[test]
fn pair_upload_fan_out() {
    let tmp = TempDir::new("smoke");
    let server = ServerProc::start(&tmp.join("root"), &[]);
    let mut a = RawPeer::hello(server.send_port, server.recv_port, [1; 16], "a");
    // A session that said HELLO is told the extensions it may offer.
    assert_eq!(a.receive_metadata(), "dropsync-metadata 1\n# ext copy\n");
    let mut b = RawPeer::hello(server.send_port, server.recv_port, [2; 16], "b");
    b.receive_metadata();
    assert_eq!(a.upload("x/y.txt", b"hello world", 4), StatusCode::OK);
    let (name, data) = b.receive_one();
    assert_eq!((name.as_str(), data.as_deref()), ("x/y.txt", Some(&b"hello world"[..])), "log: {}", server.log());
}
