//! A byte-counting TCP proxy on 127.0.0.1 (B7): clients connect to it as
//! if it were the server, and it copies both ways, counting every byte the
//! TCP connections carry (payload of the protocol, frames and TLS alike;
//! not the TCP/IP headers). Threads only; everything stops on
//! [`CountingProxy::stop`] or drop, within a second. It can also hold each
//! direction of each connection to a rate (B2's link rows): a slower link
//! between a client and the server, on loopback.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::R;

/// How often a blocked thread looks at the stop flag.
const POLL: Duration = Duration::from_millis(500);
/// Copy buffer of each direction.
const BUF: usize = 256 * 1024;

/// One listening port forwarding to one server port.
pub struct CountingProxy {
    /// The port clients connect to.
    pub port: u16,
    /// Bytes client → server, server → client.
    counts: Arc<[AtomicU64; 2]>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Option<JoinHandle<()>>,
}

/// Read size of a direction held to a rate: small steps keep it smooth.
const PACED_BUF: usize = 64 * 1024;
/// The most a paced direction may run ahead after a late wake-up.
const BURST: Duration = Duration::from_millis(5);

fn pump(mut from: TcpStream, mut to: TcpStream, count: Arc<[AtomicU64; 2]>, dir: usize, stop: Arc<AtomicBool>, rate: Option<u64>) {
    let mut buf = vec![0u8; if rate.is_some() { PACED_BUF } else { BUF }];
    // When the link is free again: an idle link saves up no credit.
    let mut free_at = Instant::now();
    loop {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
                count[dir].fetch_add(n as u64, Ordering::Relaxed);
                if let Some(rate) = rate.filter(|r| *r > 0) {
                    // The link's pace: the next bytes go once these would
                    // have crossed it (a late wake-up is made up for, but
                    // no more than BURST of it).
                    let now = Instant::now();
                    let earliest = now.checked_sub(BURST).unwrap_or(now);
                    free_at = free_at.max(earliest) + Duration::from_secs_f64(n as f64 / rate as f64);
                    if free_at > now {
                        std::thread::sleep(free_at - now);
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // Half-close: the other side sees the end of this direction.
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

impl CountingProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`.
    pub fn start(target: u16) -> R<CountingProxy> {
        Self::start_paced(target, None)
    }

    /// Like [`start`](Self::start), each direction of each connection
    /// carrying at most `rate` bytes a second (`None`: as fast as it goes).
    pub fn start_paced(target: u16, rate: Option<u64>) -> R<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let counts: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let stop = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let threads = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (counts, stop, conns, threads) = (counts.clone(), stop.clone(), conns.clone(), threads.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else { continue };
                    let set_up = (|| -> std::io::Result<[TcpStream; 4]> {
                        client.set_nonblocking(false)?;
                        for s in [&client, &server] {
                            s.set_nodelay(true)?;
                            s.set_read_timeout(Some(POLL))?;
                        }
                        Ok([client.try_clone()?, server.try_clone()?, client.try_clone()?, server.try_clone()?])
                    })();
                    let Ok([c2, s2, c3, s3]) = set_up else { continue };
                    conns.lock().unwrap_or_else(|e| e.into_inner()).extend([c3, s3]);
                    let (k1, k2, st1, st2) = (counts.clone(), counts.clone(), stop.clone(), stop.clone());
                    let up = std::thread::spawn(move || pump(client, s2, k1, 0, st1, rate));
                    let down = std::thread::spawn(move || pump(server, c2, k2, 1, st2, rate));
                    threads.lock().unwrap_or_else(|e| e.into_inner()).extend([up, down]);
                }
            })
        };
        Ok(CountingProxy { port, counts, stop, conns, threads, accept: Some(accept) })
    }

    /// Bytes so far: (client → server, server → client).
    pub fn bytes(&self) -> (u64, u64) {
        (self.counts[0].load(Ordering::Relaxed), self.counts[1].load(Ordering::Relaxed))
    }

    /// Both directions together.
    pub fn total(&self) -> u64 {
        let (a, b) = self.bytes();
        a + b
    }

    /// Closes every connection and joins every thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for c in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A proxy for each of a server's two ports (one client's both connections).
pub struct ProxyPair {
    /// To the send port.
    pub send: CountingProxy,
    /// To the receive port.
    pub recv: CountingProxy,
}

impl ProxyPair {
    /// Proxies for the server's (send, receive) ports.
    pub fn start(ports: (u16, u16)) -> R<ProxyPair> {
        Ok(ProxyPair { send: CountingProxy::start(ports.0)?, recv: CountingProxy::start(ports.1)? })
    }

    /// Proxies whose every direction carries at most `rate` bytes a second:
    /// one client's link to the server.
    pub fn start_paced(ports: (u16, u16), rate: u64) -> R<ProxyPair> {
        Ok(ProxyPair {
            send: CountingProxy::start_paced(ports.0, Some(rate))?,
            recv: CountingProxy::start_paced(ports.1, Some(rate))?,
        })
    }

    /// The ports a client is given instead of the server's.
    pub fn ports(&self) -> (u16, u16) {
        (self.send.port, self.recv.port)
    }

    /// Every byte both connections carried, both ways.
    pub fn total(&self) -> u64 {
        self.send.total() + self.recv.total()
    }
}
