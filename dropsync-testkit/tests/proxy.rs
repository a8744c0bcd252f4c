//! The latency proxy adds its delay and forwards bytes intact.
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use dropsync_testkit::LatencyProxy;

#[test]
fn forwards_both_ways_with_the_delay() {
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = echo.accept().unwrap();
        let mut buf = [0u8; 1024];
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 || s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let proxy = LatencyProxy::start(target, Duration::from_millis(50)).unwrap();
    let mut c = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    c.read_exact(&mut got).unwrap();
    let rtt = t.elapsed();
    assert_eq!(&got, b"ping");
    assert!(rtt >= Duration::from_millis(100), "round trip {rtt:?} shorter than 2 × 50 ms");
}
