//! A TCP latency proxy: forwards loopback connections to a target with an
//! added one-way delay in each direction. This kernel has no netem, so this
//! is how tests and benchmarks simulate a WAN. Bounded: it stops when
//! dropped (tests) or after its lifetime (the `latency-proxy` binary).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Size of each read; a delayed piece is forwarded whole.
const PIECE: usize = 64 * 1024;

/// A running proxy; stops accepting when dropped.
#[derive(Debug)]
pub struct LatencyProxy {
    /// The port to connect to instead of the target's.
    pub port: u16,
    stop: Arc<AtomicBool>,
    down: Arc<AtomicBool>,
}

impl LatencyProxy {
    /// Listens on 127.0.0.1 (ephemeral port) and forwards each connection to
    /// `target`, delaying every byte by `one_way` in each direction.
    pub fn start(target: SocketAddr, one_way: Duration) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicBool::new(false));
        let (flag, cut) = (stop.clone(), down.clone());
        thread::spawn(move || accept_loop(listener, target, one_way, flag, cut));
        Ok(Self { port, stop, down })
    }

    /// An outage (`true`) or its end: while down, every connection through
    /// the proxy is cut within 0.2 s and new ones are closed at once.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

impl Drop for LatencyProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, target: SocketAddr, delay: Duration, stop: Arc<AtomicBool>, down: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) if down.load(Ordering::SeqCst) => drop(client),
            Ok((client, _)) => {
                let Ok(server) = TcpStream::connect(target) else { continue };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    pipe(client, s2, delay, stop.clone(), down.clone());
                    pipe(server, c2, delay, stop.clone(), down.clone());
                }
            }
            // Non-blocking accept: poll so that `stop` is noticed.
            Err(_) => thread::park_timeout(Duration::from_millis(5)),
        }
    }
}

/// Forwards `from` → `to`, each piece released `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration, stop: Arc<AtomicBool>, down: Arc<AtomicBool>) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let reader_stop = stop.clone();
    thread::spawn(move || {
        let mut buf = vec![0u8; PIECE];
        while !reader_stop.load(Ordering::SeqCst) && !down.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        if down.load(Ordering::SeqCst) {
            // An outage cuts both directions at once.
            let _ = from.shutdown(Shutdown::Both);
        }
    });
    thread::spawn(move || {
        while let Ok((due, data)) = rx.recv() {
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            if stop.load(Ordering::SeqCst) || to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
