//! Opening a session: both TCP connections with their socket options, and
//! HELLO on each (PROTOCOL.md section 1 [ext]).

use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dropsync_core::wire::{is_timeout_error, write_frame, FrameReader, Msg};
use dropsync_proto::{ClientId, Frame, StatusCode};

use crate::cli::Config;

/// How long one TCP connect may take before the next address is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a blocked socket read lasts before its thread looks at the clock
/// (keep-alives due, peer silent too long). The actual tick is shorter when
/// the keep-alive interval is.
const MAX_READ_TICK: Duration = Duration::from_secs(1);

/// Shortest read tick, however small the configured intervals: below this
/// the threads would only spin.
const MIN_READ_TICK: Duration = Duration::from_millis(20);

/// Timing of one session's connections (PROTOCOL.md section 9).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Send a keep-alive after this long without sending.
    pub keepalive: Duration,
    /// Drop the connection after this long without receiving.
    pub dead_peer: Duration,
}

impl Timing {
    /// The socket read timeout: short enough to send keep-alives and notice
    /// silence on time.
    pub fn read_tick(&self) -> Duration {
        (self.keepalive / 4).min(self.dead_peer / 4).clamp(MIN_READ_TICK, MAX_READ_TICK)
    }
}

/// Both connections of a session, HELLO answered on each.
#[derive(Debug)]
pub struct Connected {
    /// The send connection, for writing.
    pub send: TcpStream,
    /// Reader of the send connection (STATUS replies).
    pub send_rx: FrameReader<TcpStream>,
    /// The receive connection, for writing replies.
    pub recv: TcpStream,
    /// Reader of the receive connection (transfers from the server).
    pub recv_rx: FrameReader<TcpStream>,
}

impl Connected {
    /// Shuts both connections down (the reader threads then see the end).
    pub fn shutdown(send: &TcpStream, recv: &TcpStream) {
        let _ = send.shutdown(Shutdown::Both);
        let _ = recv.shutdown(Shutdown::Both);
    }
}

/// Connects to the server's two ports and says HELLO on both, with the same
/// client id; returns once the server has answered OK on each.
/// Gives up early (an `Interrupted` error) once `stop` is set.
pub fn open(cfg: &Config, id: ClientId, timing: Timing, stop: &AtomicBool) -> io::Result<Connected> {
    let send = dial(&cfg.host, cfg.send_port, timing)?;
    let recv = dial(&cfg.host, cfg.receive_port, timing)?;
    let hello = Frame::Hello { client_id: id, label: &cfg.label };
    let mut scratch = Vec::new();
    // Both HELLOs go out before either answer is awaited, so the order in
    // which the server answers (or pairs) does not matter.
    write_frame(&mut &send, &hello, &mut scratch)?;
    write_frame(&mut &recv, &hello, &mut scratch)?;
    let mut send_rx = FrameReader::new(send.try_clone()?);
    let mut recv_rx = FrameReader::new(recv.try_clone()?);
    await_ok(&mut send_rx, "send", timing.dead_peer, stop)?;
    await_ok(&mut recv_rx, "receive", timing.dead_peer, stop)?;
    Ok(Connected { send, send_rx, recv, recv_rx })
}

/// One TCP connection with TCP_NODELAY (stop-and-wait would otherwise wait
/// on Nagle and delayed ACKs at every chunk) and the read tick.
fn dial(host: &str, port: u16, timing: Timing) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{host}: no address"));
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(timing.read_tick()))?;
                return Ok(s);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Waits for the STATUS answering HELLO; anything but OK is an error.
fn await_ok(rx: &mut FrameReader<TcpStream>, conn: &str, limit: Duration, stop: &AtomicBool) -> io::Result<()> {
    let start = Instant::now();
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        match rx.read_msg() {
            Ok(Some(Msg::Status(StatusCode::KEEP_ALIVE))) => {}
            Ok(Some(Msg::Status(StatusCode::OK))) => return Ok(()),
            Ok(Some(Msg::Status(code))) => {
                return Err(io::Error::other(format!("server answered HELLO on the {conn} connection with {code}")))
            }
            Ok(Some(other)) => {
                return Err(io::Error::other(format!("server sent {other:?} instead of answering HELLO")))
            }
            Ok(None) => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("server closed the {conn} connection during HELLO"),
                ))
            }
            Err(e) if is_timeout_error(&e) && start.elapsed() < limit => {}
            Err(e) => return Err(e),
        }
    }
}
