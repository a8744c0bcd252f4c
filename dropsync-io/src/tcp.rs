//! What the protocol asks of a socket that `std::net` cannot do: TCP
//! keep-alive for legacy sessions, on both sides, and telling whether a
//! waiting connection's peer has gone (PROTOCOL.md section 1).

use std::io;
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Probes sent, one per interval, before a silent peer counts as gone.
const KEEPALIVE_PROBES: u32 = 4;

/// Section 1: "the server turns on TCP keep-alive for [a legacy session's]
/// sockets and ends it on a socket error"; a client whose HELLO was refused
/// relies on it the same way. The kernel probes after `idle` without
/// traffic, every third of it (whole seconds, at least one: the kernel
/// refuses 0); a peer that answers none of the probes makes the next read
/// fail, which ends the session. A peer that is merely quiet answers them
/// and stays.
pub fn enable_keepalive(stream: &TcpStream, idle: Duration) -> io::Result<()> {
    let interval = (idle / 3).max(Duration::from_secs(1));
    let params = TcpKeepalive::new().with_time(idle.max(interval)).with_interval(interval).with_retries(KEEPALIVE_PROBES);
    SockRef::from(stream).set_tcp_keepalive(&params)
}

/// True when the peer of `stream` has closed it (end of stream, or an
/// error such as a reset), without consuming or waiting for anything: a
/// peek that would block means the connection is alive and quiet; bytes
/// waiting mean alive. Section 1: "a waiting connection that has closed
/// is never paired".
pub fn peer_has_closed(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    match SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
    }
}

/// True when a read of `stream` would return at once: bytes are waiting,
/// or the peer has closed it (or it failed). False when a read would wait.
pub fn readable_now(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    match SockRef::from(stream).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Ok(_) => true,
        Err(e) => !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted),
    }
}

/// True for the error an accept gets when the process or the system is
/// out of file descriptors (EMFILE, ENFILE): not the connection's fault, and
/// it recurs until descriptors are freed.
pub fn is_out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    #[test]
    fn readable_now_says_whether_a_read_would_wait() {
        let (mut a, b) = pair();
        assert!(!readable_now(&b), "nothing sent: a read would wait");
        a.write_all(b"x").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !readable_now(&b) {
            assert!(std::time::Instant::now() < deadline, "the byte never became readable");
            std::thread::yield_now();
        }
        let mut one = [0u8; 1];
        io::Read::read_exact(&mut &b, &mut one).unwrap();
        assert!(!readable_now(&b), "read: nothing left");
        drop(a);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !readable_now(&b) {
            assert!(std::time::Instant::now() < deadline, "the close never showed");
            std::thread::yield_now();
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn a_quiet_or_talking_peer_is_alive_and_a_closed_one_is_not() {
        let (mut a, b) = pair();
        assert!(!peer_has_closed(&b), "quiet");
        a.write_all(b"x").unwrap();
        assert!(!peer_has_closed(&b), "bytes waiting");
        drop(a);
        // The FIN comes after the byte; once that byte is read, EOF shows.
        let mut buf = [0u8; 1];
        std::io::Read::read_exact(&mut &b, &mut buf).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !peer_has_closed(&b) {
            assert!(std::time::Instant::now() < deadline, "closed peer never seen");
            std::thread::yield_now();
        }
    }

    #[test]
    fn keepalive_can_be_enabled() {
        let (a, _b) = pair();
        enable_keepalive(&a, Duration::from_secs(15)).unwrap();
        assert!(SockRef::from(&a).keepalive().unwrap());
    }
}
