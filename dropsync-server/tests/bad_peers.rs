//! "A bad peer only hurts itself": sessions that never answer, and idle
//! connections, hold back no other client (PROTOCOL.md sections 1 and 9;
//! the worker pool never waits on a client, each client's own sender does).
#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use dropsync_proto::StatusCode;
use dropsync_testkit::{RawPeer, ServerProc, TempDir};

/// Far below the 60 s a worker used to wait on a silent client, far above
/// what a delivery takes on loopback (milliseconds): the test tells the two
/// apart without timing anything finely.
const PROMPT: Duration = Duration::from_secs(5);

fn silent_peers_hold_back_no_one(workers: &str) {
    let tmp = TempDir::new("bad-peers");
    let s = ServerProc::start(&tmp.join("root"), &["--workers", workers]);
    // Eight clients that say HELLO and then never read or answer anything,
    // not even their META-DATA.
    let _silent: Vec<RawPeer> = (0..8u8).map(|i| RawPeer::hello(s.send_port, s.recv_port, [100 + i; 16], "silent")).collect();
    // And idle connections on both ports, which pair as legacy sessions
    // that never answer either.
    let _idle: Vec<TcpStream> = (0..100)
        .map(|i| TcpStream::connect(("127.0.0.1", if i % 2 == 0 { s.send_port } else { s.recv_port })).unwrap())
        .collect();
    let mut a = RawPeer::hello(s.send_port, s.recv_port, [1; 16], "a");
    a.receive_metadata();
    let mut b = RawPeer::hello(s.send_port, s.recv_port, [2; 16], "b");
    b.receive_metadata();
    for i in 0..30 {
        let name = format!("f{i:02}");
        let started = Instant::now();
        assert_eq!(a.upload(&name, name.as_bytes(), 64), StatusCode::OK);
        let (got, data) = b.receive_one();
        let took = started.elapsed();
        assert_eq!((got.as_str(), data.as_deref()), (name.as_str(), Some(name.as_bytes())));
        assert!(took < PROMPT, "{name} took {took:?} from A to B; log:\n{}", s.log());
        if i == 0 {
            eprintln!("first edit A -> B with silent peers around ({workers} workers): {took:?}");
        }
    }
}

#[test]
fn silent_sessions_and_idle_connections_hold_back_no_one_with_the_worker_pool() {
    silent_peers_hold_back_no_one("4");
}

#[test]
fn silent_sessions_and_idle_connections_hold_back_no_one_with_dedicated_senders() {
    silent_peers_hold_back_no_one("0");
}

#[test]
fn sessions_from_one_address_never_lock_out_another_address() {
    let tmp = TempDir::new("per-address");
    // Eight clients at most: one address may hold seven of them.
    let s = ServerProc::start(&tmp.join("root"), &["--max-clients", "8"]);
    let _idle: Vec<RawPeer> = (0..7u8)
        .map(|i| {
            let mut p = RawPeer::hello(s.send_port, s.recv_port, [10 + i; 16], "idle");
            p.receive_metadata();
            p
        })
        .collect();
    // An eighth from the same address is closed before it is read.
    let mut more = RawPeer::connect_raw(s.send_port, s.recv_port);
    assert!(more.send_closed_by_server(), "a session beyond the per-address share was let in; log:\n{}", s.log());
    // A client from another address still gets in and is served.
    let mut other = RawPeer::hello_from(Ipv4Addr::new(127, 0, 0, 2), s.send_port, s.recv_port, [2; 16], "other");
    other.receive_metadata();
    assert_eq!(other.upload("hello.txt", b"from elsewhere", 64), StatusCode::OK);
    assert!(s.log().contains("sessions from this address already"), "{}", s.log());
}
