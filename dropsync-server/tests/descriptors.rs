//! A server that runs out of file descriptors (EMFILE) turns the excess
//! away, backs off instead of spinning, logs a few lines rather than
//! gigabytes, and serves real clients again as soon as descriptors free up.
//! Its own process (this file) so that the wrapper that lowers the limit
//! applies to this test's server alone.
#![allow(clippy::unwrap_used)]

use std::net::TcpStream;
use std::panic::catch_unwind;
use std::time::Duration;

use dropsync_proto::StatusCode;
use dropsync_testkit::{wait_for, wait_until, RawPeer, ServerProc, TempDir, DEFAULT_DEADLINE};

/// The server's descriptor limit here: enough to start and serve a couple
/// of clients, far fewer than the connections the test opens.
const NOFILE: u32 = 64;

#[test]
fn running_out_of_descriptors_is_survived() {
    // The testkit runs the server under $DROPSYNC_WRAPPER.
    std::env::set_var("DROPSYNC_WRAPPER", format!("prlimit --nofile={NOFILE}:{NOFILE} --"));
    let tmp = TempDir::new("emfile");
    let s = ServerProc::start(&tmp.join("root"), &[]);
    std::env::remove_var("DROPSYNC_WRAPPER");
    // Far more connections than the server has descriptors.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|i| TcpStream::connect(("127.0.0.1", if i % 2 == 0 { s.send_port } else { s.recv_port })).ok())
        .collect();
    let ran_out = wait_until(DEFAULT_DEADLINE, || s.log().contains("accept failed"));
    assert!(ran_out, "the server never ran out of descriptors; log:\n{}", s.log());
    // Let the flood hammer it for a while: the log stays small.
    std::thread::sleep(Duration::from_secs(2));
    let log = s.log().len();
    assert!(log < 200_000, "{log} bytes of log while out of descriptors");
    drop(flood);
    // Once they are gone (the server notices each close within a second or
    // so), a real client gets in and is served.
    let mut a = wait_for(DEFAULT_DEADLINE, "a session once the flood is gone", || {
        catch_unwind(|| {
            let mut p = RawPeer::hello(s.send_port, s.recv_port, [1; 16], "a");
            p.receive_metadata();
            p
        })
        .ok()
    });
    assert_eq!(a.upload("after.txt", b"descriptors are back", 64), StatusCode::OK, "log:\n{}", s.log());
    eprintln!("log while out of descriptors: {log} bytes");
}
