//! "A bad peer only hurts itself": sessions that never answer, and idle
//! connections, hold back no other client (PROTOCOL.md sections 1 and 9;
//! the worker pool never waits on a client, each client's own sender does).
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::{Ipv4Addr, TcpStream};
use std::time::{Duration, Instant};

use dropsync_proto::{md5, Frame, StatusCode};
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

#[test]
fn two_thousand_idle_connections_hold_back_no_one() {
    let tmp = TempDir::new("idle-2000");
    let s = ServerProc::start(&tmp.join("root"), &[]);
    // 2,000 connections that never say a word, half on each port (after
    // 1 s they are legacy, and pair with each other into sessions that
    // never answer their META-DATA).
    let idle: Vec<TcpStream> = (0..2000)
        .map(|i| TcpStream::connect(("127.0.0.1", if i % 2 == 0 { s.send_port } else { s.recv_port })).unwrap())
        .collect();
    // Real clients, from another address.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut a = RawPeer::hello_from(other, s.send_port, s.recv_port, [1; 16], "a");
    a.receive_metadata();
    let mut b = RawPeer::hello_from(other, s.send_port, s.recv_port, [2; 16], "b");
    b.receive_metadata();
    for i in 0..10 {
        let name = format!("edit{i}");
        let started = Instant::now();
        assert_eq!(a.upload(&name, name.as_bytes(), 64), StatusCode::OK);
        assert_eq!(b.receive_one(), (name.clone(), Some(name.as_bytes().to_vec())));
        let took = started.elapsed();
        assert!(took < PROMPT, "{name} took {took:?} from A to B with 2,000 idle connections open");
        if i == 0 {
            eprintln!("first edit A -> B with 2,000 idle connections open: {took:?}");
        }
    }
    drop(idle);
}

#[test]
fn fifteen_hundred_transfers_from_one_connection_leave_the_others_working() {
    let tmp = TempDir::new("transfers-1500");
    let s = ServerProc::start(&tmp.join("root"), &[]);
    let mut x = RawPeer::hello(s.send_port, s.recv_port, [9; 16], "greedy");
    x.receive_metadata();
    let mut a = RawPeer::hello(s.send_port, s.recv_port, [1; 16], "a");
    a.receive_metadata();
    let mut b = RawPeer::hello(s.send_port, s.recv_port, [2; 16], "b");
    b.receive_metadata();
    // 1,500 transfers opened at once on one connection, none finished.
    let mut burst = Vec::new();
    for i in 0..1500 {
        let name = format!("open/{i}");
        burst.extend_from_slice(&Frame::Chunk { digest: md5(b"x"), name: &name, payload: b"x" }.to_vec());
    }
    x.send.write_all(&burst).unwrap();
    let replies: Vec<StatusCode> = (0..1500).map(|_| x.send_status()).collect();
    let ok = replies.iter().filter(|c| **c == StatusCode::OK).count();
    let in_use = replies.iter().filter(|c| **c == StatusCode::IN_USE).count();
    assert_eq!((ok, in_use), (256, 1244), "the per-connection limit (256) holds");
    // Everyone else carries on.
    assert_eq!(a.upload("still/works.txt", b"yes", 64), StatusCode::OK);
    assert_eq!(b.receive_one(), ("still/works.txt".to_string(), Some(b"yes".to_vec())));
    let log = s.log().len();
    assert!(log < 1_000_000, "the server wrote {log} bytes of log");
    eprintln!("server log after 1,500 transfers on one connection: {log} bytes");
}
