//! Accepting connections and pairing them into sessions (PROTOCOL.md
//! section 1). Every accepted connection gets its own thread at once, so no
//! accept ever waits for a busy worker.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dropsync_core::access::{Access, Refusal};
use dropsync_core::locks::SessionId;
use dropsync_core::pairing::{ConnId, ConnKind, PairEvent, HELLO_TIMEOUT};
use dropsync_io::conn::Conn;
use dropsync_io::tcp;
use dropsync_io::tls::{Fingerprint, TLS_HANDSHAKE_BYTE};
use dropsync_io::wire::{is_timeout_error, write_status, FrameReader, Msg};
use dropsync_proto::index::Listing;
use dropsync_proto::{ClientId, StatusCode};

use crate::metrics::{NotAdmitted, SessionKind};
use crate::server::Server;
use crate::session::{Session, SessionParts};
use crate::quiet_log::{self, QuietLog};
use crate::{inbound, outbound, spawn_named, workers};

/// How long a connection waits for its partner before it is dropped. A
/// real client opens both connections at once; a lone one is a client that
/// died half-way, or someone holding a thread and a descriptor for nothing.
const PAIR_TIMEOUT: Duration = Duration::from_secs(10);

/// The same for a legacy connection that has said nothing at all: a legacy
/// client opens its two connections together, so one that is silent and
/// alone after this long is closed rather than paired with whatever comes
/// next from its address.
const SILENT_PAIR_TIMEOUT: Duration = Duration::from_secs(5);

/// Most connections from one IP address waiting for a partner at once; a
/// connection beyond is closed at once. A real client has at most one of
/// each kind waiting (a few, behind a NAT).
const MAX_WAITING_PER_ADDRESS: usize = 64;

/// First and longest pause of the accept loop after an accept error (out of
/// descriptors: EMFILE, ENFILE), so that it backs off instead of spinning.
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// Longest a connection may take over its TLS handshake, counted from its
/// first byte: a peer that stalls or drips is closed then, having seen
/// nothing but the server's certificate.
const TLS_HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

static ACCEPT_ERRORS: QuietLog = QuietLog::new();
static REFUSALS: QuietLog = QuietLog::new();
/// One per reason a connection is not admitted (plaintext, no key, key
/// not enrolled, handshake failed), so that one kind knocking often does
/// not hide another.
static NOT_ADMITTED: [QuietLog; 4] = [QuietLog::new(), QuietLog::new(), QuietLog::new(), QuietLog::new()];

/// How often a waiting connection looks whether its peer has closed it
/// (section 1: "a waiting connection that has closed is never paired").
/// The check at pairing time catches a close within this window too.
const PARKED_POLL: Duration = Duration::from_millis(200);

/// One connection that said HELLO (or turned out to be legacy) and waits
/// for, or has found, its partner.
pub struct Half {
    kind: ConnKind,
    stream: Conn,
    reader: FrameReader<Conn>,
    peer: SocketAddr,
    /// What the admission rule gave this connection's key.
    access: Access,
    label: String,
    /// A legacy connection's first message, already read: processed first.
    first: Option<Msg>,
    /// Dropped when the partner takes this half, which wakes the parked thread.
    _taken: mpsc::Sender<()>,
}

/// Accepts on `listener` forever, one thread per connection.
/// An accept error (descriptors exhausted, above all) pauses the loop, from
/// [`ACCEPT_BACKOFF`]'s first to its longest pause, and is logged at most
/// once per interval.
pub fn accept_loop(server: Arc<Server>, listener: TcpListener, kind: ConnKind) {
    let mut pause = ACCEPT_BACKOFF.0;
    let mut reserve = Reserve::take();
    for conn in listener.incoming() {
        if server.is_shutting_down() {
            return;
        }
        match conn {
            Ok(stream) => {
                pause = ACCEPT_BACKOFF.0;
                let server = server.clone();
                let spawned = spawn_named("handshake", move || handshake(&server, stream, kind));
                if let Err(e) = spawned {
                    if let Some(n) = ACCEPT_ERRORS.allow(Instant::now()) {
                        log::error!("cannot start a thread for a new connection: {e}{}", quiet_log::more(n));
                    }
                }
            }
            Err(e) => {
                if tcp::is_out_of_descriptors(&e) {
                    reserve.turn_away(&listener);
                }
                if let Some(n) = ACCEPT_ERRORS.allow(Instant::now()) {
                    log::warn!("accept failed: {e}; pausing accepts for {pause:?}{}", quiet_log::more(n));
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// A descriptor held back for the moment the process runs out of them
/// (EMFILE, ENFILE): the accept loop then gives it up, accepts the waiting
/// connection and closes it at once, so its client hears a refusal instead
/// of hanging in the backlog (and the loop does not spin on the same
/// error), and takes the descriptor back.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn take() -> Self {
        Reserve(std::fs::File::open("/dev/null").ok())
    }

    fn turn_away(&mut self, listener: &TcpListener) {
        self.0 = None;
        drop(listener.accept());
        *self = Reserve::take();
    }
}

/// Why a new connection from `ip` is turned away before it is read, if it
/// is: the server is full, its address holds its share of the sessions
/// (`--max-clients-per-address`), or it has too many connections waiting
/// for a partner.
fn refusal(server: &Server, ip: IpAddr) -> Option<String> {
    let cfg = &server.config;
    if server.client_count() >= cfg.max_clients {
        return Some(format!("{} clients connected already", cfg.max_clients));
    }
    if server.sessions_from(ip) >= cfg.max_clients_per_address {
        return Some(format!("{} sessions from this address already", cfg.max_clients_per_address));
    }
    let waiting = server.handshakes().parked.values().filter(|h| h.peer.ip().to_canonical() == ip).count();
    if waiting >= MAX_WAITING_PER_ADDRESS {
        return Some(format!("{waiting} connections from this address wait for a partner already"));
    }
    None
}

/// What the first byte of a new connection says it is (section 1, and
/// docs/PROTOCOL.md "Secure mode": a TLS ClientHello starts with 0x16,
/// which is no message type).
enum Opening {
    /// A TLS handshake.
    Tls,
    /// A message of the plain protocol.
    Plain,
    /// Nothing within section 1's HELLO time: a legacy peer that waits.
    Silent,
}

fn opening(stream: &TcpStream) -> Option<Opening> {
    stream.set_read_timeout(Some(HELLO_TIMEOUT)).ok()?;
    let mut first = [0u8; 1];
    match stream.peek(&mut first) {
        Ok(0) => None,
        Ok(_) if first[0] == TLS_HANDSHAKE_BYTE => Some(Opening::Tls),
        Ok(_) => Some(Opening::Plain),
        Err(e) if is_timeout_error(&e) => Some(Opening::Silent),
        Err(_) => None,
    }
}

/// Logs a connection turned away by the admission rule (at most once per
/// interval, however many knock).
fn not_admitted(server: &Server, peer: SocketAddr, why: Result<Refusal, std::io::Error>) {
    let kind = match &why {
        Ok(Refusal::Plaintext) => NotAdmitted::Plaintext,
        Ok(Refusal::NoKey) => NotAdmitted::NoKey,
        Ok(Refusal::NotEnrolled) => NotAdmitted::NotEnrolled,
        Err(_) => NotAdmitted::Handshake,
    };
    server.metrics.not_admitted(kind);
    let slot = kind as usize;
    let why = match why {
        Ok(refusal) => refusal.to_string(),
        Err(e) => format!("TLS handshake failed: {e}"),
    };
    if let Some(n) = NOT_ADMITTED[slot].allow(Instant::now()) {
        log::warn!("{peer}: not admitted: {why}{}", quiet_log::more(n));
    }
}

fn handshake(server: &Arc<Server>, tcp: TcpStream, kind: ConnKind) {
    let Ok(peer) = tcp.peer_addr() else { return };
    let conn = server.next_id();
    if let Some(why) = refusal(server, peer.ip().to_canonical()) {
        if let Some(n) = REFUSALS.allow(Instant::now()) {
            log::warn!("{peer}: refused, {why}{}", quiet_log::more(n));
        }
        return;
    }
    let _ = tcp.set_nodelay(true);
    let Some(opening) = opening(&tcp) else { return log::debug!("{peer}: closed before saying anything") };
    let mut stream = match opening {
        Opening::Tls => match server.gate.tls.accept(tcp, Instant::now() + TLS_HANDSHAKE_LIMIT) {
            Ok(s) => s,
            Err(e) if dropsync_io::conn::is_refused_key(&e) => return not_admitted(server, peer, Ok(Refusal::NotEnrolled)),
            Err(e) => return not_admitted(server, peer, Err(e)),
        },
        Opening::Plain | Opening::Silent => Conn::plain(tcp),
    };
    // Nothing is read from a connection the rule refuses, nothing is
    // written to it, and it takes no slot: it is closed here.
    let access = match server.gate.admit(&stream) {
        Ok(access) => access,
        Err(why) => return not_admitted(server, peer, Ok(why)),
    };
    let key = stream.peer_fingerprint();
    let setup = stream.set_read_timeout(Some(HELLO_TIMEOUT)).and_then(|()| stream.try_clone());
    let mut reader = match setup {
        Ok(s) => FrameReader::new(s),
        Err(e) => return log::warn!("{peer}: cannot set up connection: {e}"),
    };
    let read = match opening {
        // Section 1: no HELLO within 1 s of connecting is a legacy
        // connection, and this one has said nothing for that long.
        Opening::Silent => Err(std::io::ErrorKind::TimedOut.into()),
        Opening::Tls | Opening::Plain => reader.read_msg(),
    };
    let (client_id, label, first) = match read {
        Ok(Some(Msg::Hello { client_id, label })) => {
            if write_status(&mut stream, StatusCode::OK).is_err() {
                return;
            }
            (Some(paired_by(key.as_ref(), client_id)), label, None)
        }
        Ok(Some(other)) => (None, String::new(), Some(other)),
        Err(e) if is_timeout_error(&e) => (None, String::new(), None),
        Ok(None) | Err(_) => return log::debug!("{peer}: closed before saying anything"),
    };
    if client_id.is_none() && server.gate.secure() {
        // Legacy pairing goes by address, which would let two keys share
        // one session: in secure mode every connection says HELLO.
        log::info!("{peer}: not admitted: no HELLO; secure mode pairs connections by their key");
        return;
    }
    log::debug!("{peer}: {:?} connection {conn}, {}", kind, if client_id.is_some() { "HELLO" } else { "legacy" });
    let (taken_tx, taken_rx) = mpsc::channel();
    let Ok(probe) = stream.tcp().try_clone() else { return };
    let wait_limit = if client_id.is_none() && first.is_none() { SILENT_PAIR_TIMEOUT } else { PAIR_TIMEOUT };
    let half = Half { kind, stream, reader, peer, access, label, first, _taken: taken_tx };
    if let Some(pair) = announce(server, conn, half, client_id) {
        start_session(server, pair);
        return;
    }
    // Parked: wait until the partner takes this half, the peer closes it,
    // or the wait is over.
    let parked_at = Instant::now();
    loop {
        match taken_rx.recv_timeout(PARKED_POLL) {
            Err(RecvTimeoutError::Timeout) => {}
            // Taken: the sender side of the channel went with the half.
            _ => return,
        }
        let closed = tcp::peer_has_closed(&probe);
        if !closed && parked_at.elapsed() < wait_limit {
            continue;
        }
        let mut hs = server.handshakes();
        if hs.parked.remove(&conn).is_some() {
            let _ = hs.pairing.on_closed(conn);
            if closed {
                log::info!("{peer}: {kind:?} connection closed while waiting for its partner");
            } else {
                log::info!("{peer}: no partner connection within {wait_limit:?}; closed");
            }
        }
        return;
    }
}

/// The id a HELLO connection is paired by: its key's, when TLS proved it
/// holds one, whatever id it claimed; the claimed one in the open protocol.
fn paired_by(key: Option<&Fingerprint>, claimed: ClientId) -> ClientId {
    key.map_or(claimed, Fingerprint::client_id)
}

/// A complete pair, ready to become a session.
struct Pair {
    id: SessionId,
    send: Half,
    receive: Half,
    client_id: Option<ClientId>,
    replaces: Option<SessionId>,
}

/// Tells the pairing table about `half`; parks it, or returns the pair it
/// completes. A legacy partner found closed is forgotten and the next one
/// tried (section 1: "a waiting connection that has closed is never
/// paired"): pairing with it would end the new session at once and leave
/// this half the dead partner of the next client from the address.
fn announce(server: &Server, conn: ConnId, half: Half, client_id: Option<ClientId>) -> Option<Pair> {
    let mut hs = server.handshakes();
    loop {
        let event = match client_id {
            Some(id) => hs.pairing.on_hello(conn, half.kind, id),
            None => hs.pairing.on_legacy(conn, half.kind, half.peer.ip().to_canonical()),
        };
        match event {
            PairEvent::Waiting => {
                hs.parked.insert(conn, half);
                return None;
            }
            PairEvent::Superseded(old) => {
                hs.parked.remove(&old);
                hs.parked.insert(conn, half);
                return None;
            }
            PairEvent::Paired { send, receive, client_id, replaces } => {
                let other = if send == conn { receive } else { send };
                let Some(other_half) = hs.parked.remove(&other) else {
                    log::error!("pairing named connection {other}, which is not waiting");
                    return None;
                };
                if client_id.is_none() && tcp::peer_has_closed(other_half.stream.tcp()) {
                    log::info!("{}: waiting legacy connection had closed; not paired", other_half.peer);
                    let _ = hs.pairing.on_closed(other);
                    continue;
                }
                let (send_half, recv_half) =
                    if half.kind == ConnKind::Send { (half, other_half) } else { (other_half, half) };
                let replaces = replaces.and_then(|(s, _)| hs.by_conn.get(&s).copied());
                let id = server.next_id();
                hs.by_conn.insert(send, id);
                hs.by_conn.insert(receive, id);
                return Some(Pair { id, send: send_half, receive: recv_half, client_id, replaces });
            }
            PairEvent::AlreadyKnown => return None,
        }
    }
}

fn start_session(server: &Arc<Server>, pair: Pair) {
    if let Some(old) = pair.replaces.and_then(|id| server.session(id)) {
        server.end_session(&old, "replaced by a new session with the same client id");
    }
    let Pair { id, send, receive, client_id, .. } = pair;
    let label = if send.label.is_empty() { receive.label.clone() } else { send.label.clone() };
    let clones = (send.stream.try_clone(), receive.stream.try_clone(), receive.stream.try_clone());
    let (Ok(send_sock), Ok(recv_sock), Ok(out)) = clones else {
        return log::warn!("{}: cannot clone sockets", send.peer);
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    let (batch_tx, batch_rx) = mpsc::channel();
    let session = Arc::new(Session::new(SessionParts {
        id,
        client_id,
        label,
        peer: send.peer,
        access: send.access,
        key: send.stream.peer_fingerprint(),
        tls: send.stream.is_tls(),
        send_sock,
        recv_sock,
        out,
        replies: reply_rx,
        deliveries: batch_tx,
        wake: reply_tx.clone(),
        now: std::time::Instant::now(),
        timers: server.config.timers(),
    }));
    // Caught up with other instances first (with a shared catalog), so the
    // META-DATA lists everything committed anywhere before this pairing.
    crate::follower::catch_up(server);
    // In the client list before the snapshot, so that no commit can fall
    // between the two (a commit seen by both is just sent twice).
    server.add_session(session.clone());
    let kind = match (session.is_legacy(), session.tls) {
        (true, _) => SessionKind::Legacy,
        (false, true) => SessionKind::Secure,
        (false, false) => SessionKind::Hello,
    };
    server.metrics.session_started(kind);
    // [ext] A client that acknowledged a listing is sent what changed
    // since (`dropsync_proto::index`); a legacy one, every path.
    let since = session.client_id.and_then(|id| server.acks().since(&id));
    let (text, upto, since) = match server.library.snapshot(since) {
        (text, upto) if since.is_none_or(|s| s <= upto) => (text, upto, since),
        _ => {
            let (text, upto) = server.library.snapshot(None);
            (text, upto, None)
        }
    };
    if let Some(since) = since {
        log::debug!("{}: META-DATA of the changes since version {since}", session.who());
    }
    session.set_metadata(text, Listing { store: server.acks().store(), upto, since });
    log::info!("connect {} (client id {}); {} client(s)", session.who(), client_id.map_or("legacy".into(), |c| dropsync_proto::digest::to_hex(&c)), server.client_count());

    let tick = server.config.tick();
    let _ = send.stream.set_read_timeout(Some(tick));
    let _ = receive.stream.set_read_timeout(Some(tick));
    // A client that stops reading blocks only its own threads' writes, and
    // not for ever: a write that makes no progress for the dead-peer time
    // fails, which ends the session.
    let _ = send.stream.set_write_timeout(Some(server.config.dead_peer));
    let _ = receive.stream.set_write_timeout(Some(server.config.dead_peer));
    if session.is_legacy() {
        // Section 1: a legacy session is never closed for silence alone;
        // the kernel's keep-alive probes find a peer that is really gone.
        for s in [&send.stream, &receive.stream] {
            if let Err(e) = tcp::enable_keepalive(s.tcp(), server.config.keepalive) {
                log::warn!("{}: cannot turn on TCP keep-alive: {e}", session.who());
            }
        }
    }
    let (s1, s2, s3) = (server.clone(), server.clone(), server.clone());
    let (sess1, sess2, sess3) = (session.clone(), session.clone(), session.clone());
    let Half { stream: send_stream, reader: send_reader, first, .. } = send;
    let recv_reader = receive.reader;
    let ok = spawn_named("inbound", move || inbound::run(&s1, &sess1, send_reader, send_stream, first)).is_ok()
        && spawn_named("replies", move || outbound::read_replies(&s2, &sess2, recv_reader, reply_tx)).is_ok()
        && if server.config.workers > 0 {
            spawn_named("sender", move || workers::session_sender(&s3, &sess3, batch_rx)).is_ok()
        } else {
            spawn_named("sender", move || workers::dedicated(&s3, &sess3)).is_ok()
        };
    if !ok {
        return server.end_session(&session, "cannot start its threads");
    }
    server.wake(&session);
}
