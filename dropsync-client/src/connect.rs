//! Opening a session: both TCP connections with their socket options, and
//! HELLO on each (PROTOCOL.md section 1 [ext]), or, when the server refuses
//! HELLO, both connections again without it, as a legacy peer.

use std::io;
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dropsync_core::liveness::{Silence, Timers};
use dropsync_io::conn::{is_alert, Conn};
use dropsync_io::tcp;
use dropsync_io::tls::{ClientTls, ConnectError, Pin};
use dropsync_io::wire::{is_timeout_error, write_frame, FrameReader, Msg};
use dropsync_proto::{ClientId, Frame, StatusCode};

use crate::cli::Config;
use crate::trust::Trust;

/// How long one TCP connect may take before the next address is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest a blocked socket read lasts before its thread looks at the clock
/// (keep-alives due, peer silent too long). The actual tick is shorter when
/// the keep-alive interval is.
const MAX_READ_TICK: Duration = Duration::from_secs(1);

/// Shortest read tick, however small the configured intervals: below this
/// the threads would only spin.
const MIN_READ_TICK: Duration = Duration::from_millis(20);

/// How long the server has to answer HELLO. A server written from the
/// assignment alone may neither answer nor close on a message type it does
/// not know; after this the client takes HELLO as refused.
const HELLO_ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Pause before HELLO is tried a second time after the server closed the
/// connection (see [`open`]).
const HELLO_RETRY: Duration = Duration::from_millis(300);

/// Longest a TLS handshake may take.
const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Timing of one session's connections (PROTOCOL.md section 9).
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Send a keep-alive after this long without sending.
    pub keepalive: Duration,
    /// Drop the connection after this long without receiving.
    pub dead_peer: Duration,
    /// A legacy session (the server refused HELLO): silence alone closes
    /// nothing, since such a server may never send keep-alives; a reply
    /// awaited for `dead_peer` still does, and TCP keep-alive finds a
    /// server that is gone.
    pub silence_ok: bool,
}

impl Timing {
    /// Section 9's intervals, for the core's clocks.
    pub fn timers(&self) -> Timers {
        Timers { keepalive: self.keepalive, dead_peer: self.dead_peer }
    }

    /// What silence from the server means: a legacy server may never send
    /// keep-alives (section 1).
    pub fn silence(&self) -> Silence {
        if self.silence_ok {
            Silence::Allowed
        } else {
            Silence::Ends
        }
    }

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
    pub send: Conn,
    /// Reader of the send connection (STATUS replies).
    pub send_rx: FrameReader<Conn>,
    /// The receive connection, for writing replies.
    pub recv: Conn,
    /// Reader of the receive connection (transfers from the server).
    pub recv_rx: FrameReader<Conn>,
    /// True when the server refused HELLO and the session is legacy.
    pub legacy: bool,
}

impl Connected {
    /// Shuts both connections down (the reader threads then see the end).
    pub fn shutdown(send: &Conn, recv: &Conn) {
        let _ = send.shutdown(Shutdown::Both);
        let _ = recv.shutdown(Shutdown::Both);
    }
}

/// Connects to the server's two ports and says HELLO on both, with the same
/// client id; returns once the server has answered OK on each. A server
/// that refuses HELLO (closes the connection, answers another code, sends
/// something else, or says nothing for [`HELLO_ANSWER_WAIT`]) gets both
/// connections again without HELLO, as from a legacy peer (section 1).
/// Gives up early (an `Interrupted` error) once `stop` is set.
///
/// With a pinned server (secure mode) both connections are TLS to that key
/// and there is no fallback: a server that refuses is an error.
pub fn open(cfg: &Config, id: ClientId, timing: Timing, stop: &AtomicBool, trust: &Trust) -> io::Result<Connected> {
    if trust.pin().is_some() {
        return match open_with_hello(cfg, id, timing, stop, Some(trust))? {
            Ok(conn) => Ok(conn),
            Err(r) => Err(io::Error::other(r.why)),
        };
    }
    let mut refusal = match open_with_hello(cfg, id, timing, stop, None)? {
        Ok(conn) => return Ok(conn),
        Err(r) => r,
    };
    if refusal.transient {
        // A server restarting resets the connections that reach it while
        // it starts; one that does not know HELLO closes them every time.
        // Only a second close in a row counts as a refusal: clients that
        // fell back to legacy all at once after a server restart used to
        // have their connections paired across clients (found by
        // dropsync-soak, seed 506).
        log::debug!("HELLO met a closed connection ({}); trying HELLO once more", refusal.why);
        sleep_unless_stopped(HELLO_RETRY, stop)?;
        refusal = match open_with_hello(cfg, id, timing, stop, None)? {
            Ok(conn) => return Ok(conn),
            Err(r) => r,
        };
    }
    log::warn!(
        "the server refused HELLO ({}); connecting again as a legacy peer, without HELLO (a server in secure mode \
         closes plaintext connections: then start this client with --server-fingerprint)",
        refusal.why
    );
    let send = Conn::plain(dial(&cfg.host, cfg.send_port, timing)?);
    let recv = Conn::plain(dial(&cfg.host, cfg.receive_port, timing)?);
    let send_rx = FrameReader::new(send.try_clone()?);
    let recv_rx = FrameReader::new(recv.try_clone()?);
    Ok(Connected { send, send_rx, recv, recv_rx, legacy: true })
}

/// Why HELLO was refused; `transient` when the server only closed or
/// reset the connection (which a restarting server does too).
struct Refusal {
    why: String,
    transient: bool,
}

/// Waits `d`, in short steps, unless `stop` is set (then `Interrupted`).
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> io::Result<()> {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if stop.load(Ordering::SeqCst) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "stopped"));
        }
        std::thread::sleep(Duration::from_millis(20).min(until.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

/// Both connections with HELLO answered OK on each, or why HELLO was
/// refused (the inner error); the outer error is a failure to connect.
fn open_with_hello(
    cfg: &Config,
    id: ClientId,
    timing: Timing,
    stop: &AtomicBool,
    trust: Option<&Trust>,
) -> io::Result<Result<Connected, Refusal>> {
    let send = secure(dial(&cfg.host, cfg.send_port, timing)?, trust, timing)?;
    let recv = secure(dial(&cfg.host, cfg.receive_port, timing)?, trust, timing)?;
    let hello = Frame::Hello { client_id: id, label: &cfg.label };
    let mut scratch = Vec::new();
    // Both HELLOs go out before either answer is awaited, so the order in
    // which the server answers (or pairs) does not matter.
    let written = write_frame(&mut &send, &hello, &mut scratch).and_then(|()| write_frame(&mut &recv, &hello, &mut scratch));
    if let Err(e) = written {
        return refused_or_error(e, "HELLO");
    }
    let mut send_rx = FrameReader::new(send.try_clone()?);
    let mut recv_rx = FrameReader::new(recv.try_clone()?);
    let limit = HELLO_ANSWER_WAIT.min(timing.dead_peer);
    for (rx, conn) in [(&mut send_rx, "send"), (&mut recv_rx, "receive")] {
        if let Err(e) = await_ok(rx, conn, limit, stop) {
            Connected::shutdown(&send, &recv);
            if let Some(trust) = trust.filter(|_| is_alert(&e)) {
                let fp = trust.identity.fingerprint;
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("the server did not admit this client ({e}); enrol it there with `server enroll {fp}`"),
                ));
            }
            return refused_or_error(e, conn);
        }
    }
    Ok(Ok(Connected { send, send_rx, recv, recv_rx, legacy: false }))
}

/// Turns a dialled socket into the session's connection: TLS to the pinned
/// server in secure mode (the first connection of a first use pins the key
/// it meets), the socket as it is otherwise.
fn secure(tcp: TcpStream, trust: Option<&Trust>, timing: Timing) -> io::Result<Conn> {
    let Some((trust, pin)) = trust.and_then(|t| Some((t, t.pin()?))) else { return Ok(Conn::plain(tcp)) };
    let tls = ClientTls { identity: Some(&trust.identity), pin };
    match tls.connect(tcp, Instant::now() + TLS_HANDSHAKE_LIMIT) {
        Ok((conn, shown)) => {
            trust.shown(shown)?;
            // The handshake set its own timeouts; the session's read tick again.
            conn.set_read_timeout(Some(timing.read_tick()))?;
            conn.set_write_timeout(None)?;
            Ok(conn)
        }
        Err(ConnectError::WrongServer { shown }) => {
            let Pin::Known(want) = pin else { return Err(io::Error::other("pin changed during a handshake")) };
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "the server's certificate has fingerprint {shown}, not the pinned {want}: not connecting \
                     (someone may be in between; if the server's key really changed, start with \
                     --server-fingerprint {shown})"
                ),
            ))
        }
        Err(ConnectError::Io(e)) => Err(e),
    }
}

/// Sorts a failure during HELLO: the server closing, resetting or
/// answering otherwise is a refusal (`Ok(Err(why))`); a stop is an error.
fn refused_or_error<T>(e: io::Error, conn: &str) -> io::Result<Result<T, Refusal>> {
    use io::ErrorKind::*;
    match e.kind() {
        Interrupted => Err(e),
        kind => Ok(Err(Refusal {
            why: format!("{conn}: {e}"),
            transient: matches!(kind, ConnectionAborted | ConnectionReset | BrokenPipe | UnexpectedEof),
        })),
    }
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
                // A legacy server may never send keep-alives: the kernel's
                // probes find one that is gone (section 1).
                tcp::enable_keepalive(&s, timing.keepalive)?;
                return Ok(s);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
        }
    }
    Err(last)
}

/// Waits for the STATUS answering HELLO; anything but OK is an error.
fn await_ok(rx: &mut FrameReader<Conn>, conn: &str, limit: Duration, stop: &AtomicBool) -> io::Result<()> {
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
            Err(e) if is_timeout_error(&e) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, format!("no answer to HELLO within {limit:?}")))
            }
            Err(e) => return Err(e),
        }
    }
}
