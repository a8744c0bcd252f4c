//! A session's receiving thread, on its send connection: uploads, DELETE and
//! REQUEST from the client, each answered with exactly one STATUS in order
//! (PROTOCOL.md sections 4 and 6). Any number of uploads may be open at
//! once, interleaved chunk by chunk ([ext] parallel transfers): each has its
//! own lock, temp file and receiver state machine.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Instant;

use dropsync_core::locks::{try_lock_guard, try_lock_owned, OwnedLockGuard, SessionId};
use dropsync_core::liveness::{Due, Liveness};
use dropsync_core::meta_server::Catalog;
use dropsync_core::open_transfers::{Begin, Limits, OpenTransfers, Refusal};
use dropsync_core::receiver::{ChunkVerdict, FinishVerdict, HeaderVerdict, Receiver};
use dropsync_core::stale::MAX_CROSS_CONNECTION_WAIT;
use dropsync_io::wire::{is_timeout_error, FrameReader, Msg};
use dropsync_proto::name::validate_name;
use dropsync_proto::{Digest, Frame, MessageType, StatusCode};

use crate::library::Committed;
use crate::server::Server;
use crate::session::Session;
use crate::sink::{Sink, SinkThreads};

/// Why the loop ended (for the disconnect log line).
type End = String;

/// Names of uploads aborted for idleness remembered per connection (see
/// `open_transfers::Limits::remember_expired`).
const MAX_EXPIRED_REMEMBERED: usize = 256;

/// What the server keeps for one upload in progress, beside its receiver.
struct Upload {
    sink: Sink,
    /// Held for the whole transfer; dropping the upload releases it.
    _lock: OwnedLockGuard,
}

/// Work that follows a reply on the wire (section 6: the reply first, then
/// the update queues).
enum AfterReply {
    /// A committed change of `path`: queue it for every client but `except`.
    FanOut { path: String, except: Option<SessionId> },
    /// An accepted REQUEST: queue the path for this client.
    Queue(String),
}

struct Inbound<'a> {
    server: &'a Arc<Server>,
    session: &'a Arc<Session>,
    out: TcpStream,
    /// The uploads open on this connection, with section 9's limits.
    open: OpenTransfers<Upload>,
    /// The transfer limit was reached at least once (logged once).
    limit_logged: bool,
    /// This connection's sink threads (at most
    /// `sink::MAX_THREADS_PER_CONNECTION`).
    sink_threads: SinkThreads,
    /// Replies not sent yet (see `Inbound::reply`).
    scratch: Vec<u8>,
    /// What follows those replies.
    after_reply: Vec<AfterReply>,
    /// Keep-alive and dead-peer clocks of the send connection.
    link: Liveness,
    /// Bytes read by the last look, to tell a slow message from silence.
    last_total_read: u64,
}

/// Serves the send connection until it closes, then ends the session.
pub fn run(
    server: &Arc<Server>,
    session: &Arc<Session>,
    mut reader: FrameReader<TcpStream>,
    out: TcpStream,
    first: Option<Msg>,
) {
    let limits = Limits {
        max_open: server.config.max_transfers,
        idle: server.config.dead_peer,
        remember_expired: MAX_EXPIRED_REMEMBERED,
    };
    let mut conn = Inbound {
        server,
        session,
        out,
        open: OpenTransfers::new(limits),
        limit_logged: false,
        sink_threads: SinkThreads::default(),
        scratch: Vec::with_capacity(64),
        after_reply: Vec::new(),
        link: Liveness::new(Instant::now(), server.config.timers(), session.silence()),
        last_total_read: 0,
    };
    let why = conn.serve(&mut reader, first);
    // Replies to what was handled still go out (a commit's OK above all).
    let _ = conn.flush();
    let partial = conn.open.drain().len();
    // Dropping the open uploads removes their temp files and releases locks.
    drop(conn);
    let why = if partial > 0 { format!("{why}; {partial} partial upload(s) dropped") } else { why };
    server.end_session(session, &why);
}

impl Inbound<'_> {
    fn serve(&mut self, reader: &mut FrameReader<TcpStream>, mut pending: Option<Msg>) -> End {
        loop {
            if self.session.is_closed() {
                return "session closed".into();
            }
            if self.server.is_shutting_down() {
                return "server shutting down".into();
            }
            if pending.is_none() && reader.needs_input() {
                if let Err(end) = self.flush() {
                    return end;
                }
            }
            let msg = match pending.take() {
                Some(m) => m,
                None => match reader.read_msg() {
                    Ok(Some(m)) => m,
                    Ok(None) => return "client closed the send connection".into(),
                    Err(e) if is_timeout_error(&e) => {
                        if let Err(end) = self.idle(reader) {
                            return end;
                        }
                        continue;
                    }
                    Err(e) => return format!("send connection: {e}"),
                },
            };
            self.link.on_received(Instant::now());
            if let Err(end) = self.handle(msg, reader).and_then(|()| self.keepalive_if_due()) {
                return end;
            }
            self.expire_idle();
        }
    }

    /// Section 9: a keep-alive once nothing was sent for the keep-alive
    /// interval. Checked after every message as well as when a read times
    /// out: a client whose own keep-alives arrive more often than the read
    /// timeout never lets a read time out, and used to get no keep-alive at
    /// all on this connection, so it dropped the session as dead (with
    /// `--keepalive-secs 1` on both sides, every few seconds; found by
    /// dropsync-soak, seed 2, where a large delivery then never finished).
    /// The dead-peer check comes first, in [`idle`](Self::idle): a message
    /// just handled proves the peer is there.
    fn keepalive_if_due(&mut self) -> Result<(), End> {
        let now = Instant::now();
        if self.link.poll(now) == Due::KeepAlive {
            self.reply(StatusCode::KEEP_ALIVE)?;
            // Queued now, written at the next flush, which comes before any
            // wait for input.
            self.link.on_sent(now);
        }
        Ok(())
    }

    /// Called when a read times out: keep-alive and dead-peer checks
    /// (section 9; a legacy session is not closed for silence alone,
    /// section 1: TCP keep-alive finds a peer that is gone).
    fn idle(&mut self, reader: &FrameReader<TcpStream>) -> Result<(), End> {
        let now = Instant::now();
        if reader.total_read() != self.last_total_read {
            self.last_total_read = reader.total_read();
            self.link.on_received(now);
        }
        if let Due::PeerGone(gone) = self.link.poll(now) {
            return Err(gone.to_string());
        }
        self.expire_idle();
        self.keepalive_if_due()?;
        self.flush()?;
        if self.server.is_shutting_down() || self.session.is_closed() {
            return Err("server shutting down".into());
        }
        Ok(())
    }

    /// Section 9's idle-transfer rule (`OpenTransfers::expire`): an upload
    /// with no message of its own for the dead-peer time is aborted, even
    /// while keep-alives flow; its next message gets 0x0080.
    fn expire_idle(&mut self) {
        let now = Instant::now();
        if !matches!(self.open.poll_timeout(), Some(at) if at <= now) {
            return;
        }
        // Dropping an upload removes its temp file and releases its lock.
        for (name, _upload) in self.open.expire(now) {
            log::info!(
                "{}: upload of {name:?} aborted: no message of its own for {:?}; lock released",
                self.session.who(),
                self.server.config.dead_peer
            );
        }
    }

    /// Queues a reply; [`flush`](Self::flush) sends what is queued.
    /// Replies to messages that arrived together go out together (many
    /// small files: one write and one wake-up of the client, not two per
    /// file).
    fn reply(&mut self, code: StatusCode) -> Result<(), End> {
        Frame::Status(code).encode(&mut self.scratch);
        if code != StatusCode::OK && code != StatusCode::KEEP_ALIVE {
            log::debug!("{}: replied {code}", self.session.who());
        }
        Ok(())
    }

    /// Sends the queued replies. Called before anything that may wait for
    /// the client (a read that needs more input, the stale-change rule's
    /// wait), since the client may be waiting for these replies, and
    /// before a commit is fanned out or a REQUEST queued, so the client
    /// hears its reply first (section 6).
    /// What waited for the replies is done then, even if the client is
    /// gone: a committed change reaches the other clients regardless.
    fn flush(&mut self) -> Result<(), End> {
        let mut sent = Ok(());
        if !self.scratch.is_empty() {
            sent = self.out.write_all(&self.scratch).map_err(|e| format!("send connection: {e}"));
            self.scratch.clear();
            self.link.on_sent(Instant::now());
        }
        for after in std::mem::take(&mut self.after_reply) {
            match after {
                AfterReply::FanOut { path, except } => self.server.fan_out(&path, except),
                AfterReply::Queue(name) => {
                    self.session.requested.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.clone());
                    if self.session.queue.push(&name) || self.server.config.workers > 0 {
                        self.server.wake(self.session);
                    }
                }
            }
        }
        sent
    }

    /// Waits (through read timeouts) until `len` payload bytes are buffered.
    fn wait_payload(&mut self, reader: &mut FrameReader<TcpStream>, len: u32) -> Result<(), End> {
        if reader.buffered() < len as usize {
            self.flush()?;
        }
        loop {
            match reader.ensure(len) {
                Ok(()) => return Ok(()),
                Err(e) if is_timeout_error(&e) => self.idle(reader)?,
                Err(e) => return Err(format!("send connection: {e}")),
            }
        }
    }

    /// Reads a whole chunk payload into `out` (through read timeouts).
    fn read_payload_into(&mut self, reader: &mut FrameReader<TcpStream>, out: &mut [u8]) -> Result<(), End> {
        self.flush()?;
        let mut got = 0;
        loop {
            match reader.read_payload_into(out, &mut got) {
                Ok(()) => return Ok(()),
                Err(e) if is_timeout_error(&e) => self.idle(reader)?,
                Err(e) => return Err(format!("send connection: {e}")),
            }
        }
    }

    fn skip(&mut self, reader: &mut FrameReader<TcpStream>, len: u32) -> Result<(), End> {
        self.flush()?;
        match reader.skip(u64::from(len)) {
            // A timed-out skip completes during the next read.
            Err(e) if !is_timeout_error(&e) => Err(format!("send connection: {e}")),
            _ => Ok(()),
        }
    }

    /// Before the stale-change rule judges a change of `name`, waits for the
    /// client's reply to a delivery of `name` still in flight (see
    /// `Session::wait_outgoing_settled`). Without the rule there is nothing
    /// to decide and no reason to wait.
    /// Queued replies are sent first: the client may be waiting for them.
    fn settle_outgoing(&mut self, name: &str) -> Result<(), End> {
        if self.server.library.conflict_copies() && self.session.has_outgoing(name) {
            self.flush()?;
            self.session.wait_outgoing_settled(name, MAX_CROSS_CONNECTION_WAIT);
        }
        Ok(())
    }

    fn name_ok(&self, name: &str) -> bool {
        name.len() <= self.server.config.max_name_len && validate_name(name, false).is_ok()
    }

    fn handle(&mut self, msg: Msg, reader: &mut FrameReader<TcpStream>) -> Result<(), End> {
        match msg {
            Msg::Chunk { digest, name, len } => self.on_chunk(reader, digest, name, len),
            Msg::Named { kind: MessageType::Finished, digest, name } => self.on_finished(digest, name),
            Msg::Named { kind: MessageType::Abort, name, .. } => {
                // Section 4: an ABORT naming no transfer open on this
                // connection is answered OK and changes nothing. It ends a
                // transfer aborted for idleness too.
                if self.open.abort(&name).is_some() {
                    log::info!("{}: upload of {name:?} aborted by the client", self.session.who());
                }
                self.reply(StatusCode::OK)
            }
            Msg::Named { kind: MessageType::Delete, name, .. } => self.on_delete(name),
            Msg::Named { kind: MessageType::Request, name, .. } => self.on_request(name),
            Msg::Named { kind, name, .. } => {
                log::warn!("{}: unexpected {kind:?} for {name:?}", self.session.who());
                self.reply(StatusCode::BAD_REQUEST)
            }
            Msg::Status(StatusCode::KEEP_ALIVE) => Ok(()),
            Msg::Status(code) => {
                log::debug!("{}: ignoring unsolicited STATUS {code}", self.session.who());
                Ok(())
            }
            // A repeated HELLO changes nothing.
            Msg::Hello { .. } => self.reply(StatusCode::OK),
            Msg::Rejected(e) => {
                log::warn!("{}: rejected a message: {e}", self.session.who());
                self.reply(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// Opens the upload of `name` (try-lock, temp file) if this message,
    /// whose chunk has `first_len` bytes (0 for a FINISHED), is its first.
    /// `Err(code)` refuses the transfer: 0x0040 when another transfer holds
    /// the lock; 0x0080 beyond the limit of transfers open on this
    /// connection, or for the late message of a transfer aborted for
    /// idleness (section 9), which is over with that reply.
    fn upload(&mut self, name: &str, first_len: u32) -> Result<(), StatusCode> {
        let now = Instant::now();
        match self.open.begin(name, now) {
            Begin::Open => return Ok(()),
            Begin::Refused(code) => {
                if self.open.last_refusal() == Some(Refusal::Limit) && !std::mem::replace(&mut self.limit_logged, true) {
                    log::warn!(
                        "{}: {} transfers open on one connection; refusing more with {code}",
                        self.session.who(),
                        self.server.config.max_transfers
                    );
                }
                return Err(code);
            }
            Begin::New => {}
        }
        let Some(lock) = try_lock_owned(&self.server.library.locks, name, self.session.id) else {
            return Err(StatusCode::LOCKED);
        };
        let temp = self.server.library.blobs.temp().map_err(|e| {
            log::error!("cannot create a temp file: {e}");
            StatusCode::IN_USE
        })?;
        let sink = Sink::open(temp, first_len, &self.sink_threads);
        let receiver = Receiver::new(self.server.config.max_chunk);
        self.open.insert(name, receiver, Upload { sink, _lock: lock }, now);
        Ok(())
    }

    fn on_chunk(&mut self, reader: &mut FrameReader<TcpStream>, digest: Digest, name: String, len: u32) -> Result<(), End> {
        if !self.name_ok(&name) {
            self.skip(reader, len)?;
            return self.reply(StatusCode::BAD_REQUEST);
        }
        let verdict = match self.upload(&name, len).and_then(|()| self.open.get_mut(&name).ok_or(StatusCode::IN_USE)) {
            Ok((receiver, _)) => receiver.handle_chunk_header(len),
            Err(code) => {
                self.skip(reader, len)?;
                if code == StatusCode::LOCKED {
                    log::info!("{}: {name:?} is locked by another transfer", self.session.who());
                }
                return self.reply(code);
            }
        };
        let reply = match verdict {
            HeaderVerdict::ReadPayload => match self.open.get_mut(&name).and_then(|(_, up)| up.sink.buffer()) {
                // A large chunk is read straight into a buffer that then
                // goes to the sink thread as it is.
                Some(mut buf) => {
                    buf.resize(len as usize, 0);
                    self.read_payload_into(reader, &mut buf)?;
                    let Some((receiver, _)) = self.open.get_mut(&name) else { return self.reply(StatusCode::IN_USE) };
                    let verdict = receiver.handle_chunk(&digest, &buf);
                    self.chunk_verdict(&name, verdict, |sink| sink.append_owned(buf))
                }
                None => {
                    self.wait_payload(reader, len)?;
                    let payload = reader.read_payload(len).map_err(|e| format!("send connection: {e}"))?;
                    let Some((receiver, _)) = self.open.get_mut(&name) else { return self.reply(StatusCode::IN_USE) };
                    let verdict = receiver.handle_chunk(&digest, payload);
                    self.chunk_verdict(&name, verdict, |sink| sink.append(payload))
                }
            },
            HeaderVerdict::Resend { reply } => {
                self.skip(reader, len)?;
                reply
            }
            HeaderVerdict::Discard { reply } => {
                self.skip(reader, len)?;
                log::info!("{}: upload of {name:?} aborted: {reply}", self.session.who());
                self.open.remove(&name);
                reply
            }
            HeaderVerdict::Closed => {
                self.skip(reader, len)?;
                self.open.remove(&name);
                StatusCode::BAD_REQUEST
            }
        };
        self.reply(reply)
    }

    /// Carries out the core receiver's verdict on a chunk of `name`;
    /// `append` writes an accepted chunk to the upload's sink. Returns the
    /// reply.
    fn chunk_verdict(&mut self, name: &str, verdict: ChunkVerdict, append: impl FnOnce(&mut Sink) -> io::Result<()>) -> StatusCode {
        match verdict {
            ChunkVerdict::Append { reply } => {
                let Some((_, up)) = self.open.get_mut(name) else { return StatusCode::IN_USE };
                match append(&mut up.sink) {
                    Ok(()) => reply,
                    Err(e) => {
                        log::error!("{name:?}: cannot write temp file: {e}");
                        self.open.remove(name);
                        StatusCode::IN_USE
                    }
                }
            }
            ChunkVerdict::Resend { reply } => reply,
            ChunkVerdict::Discard { reply } => {
                log::info!("{}: upload of {name:?} aborted: {reply}", self.session.who());
                self.open.remove(name);
                reply
            }
            ChunkVerdict::Closed => {
                self.open.remove(name);
                StatusCode::BAD_REQUEST
            }
        }
    }

    fn on_finished(&mut self, digest: Digest, name: String) -> Result<(), End> {
        if !self.name_ok(&name) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        if let Err(code) = self.upload(&name, 0) {
            return self.reply(code);
        }
        let Some((mut receiver, Upload { sink, _lock: lock })) = self.open.remove(&name) else {
            return self.reply(StatusCode::IN_USE);
        };
        let temp = match sink.finish() {
            Ok(temp) => temp,
            Err(e) => {
                log::error!("{}: cannot write {name:?}: {e}", self.session.who());
                return self.reply(StatusCode::IN_USE);
            }
        };
        let verdict = receiver.handle_finished(&digest);
        match verdict {
            FinishVerdict::Commit { size, digest, .. } => {
                let server = self.server;
                let lib = &server.library;
                self.settle_outgoing(&name)?;
                let result = lib.commit_upload(&name, temp, digest, size, &self.session.seen, &self.session.label);
                // Released before the reply, so a client that hears OK can
                // start its next change of the file at once.
                drop(lock);
                match result {
                    Ok(Committed::New { entry, conflict }) => {
                        log::info!("{}: committed {name:?} version {} ({size} bytes)", self.session.who(), entry.version);
                        self.reply_then_fan_out(conflict, name)
                    }
                    Ok(_) => {
                        log::debug!("{}: {name:?} unchanged", self.session.who());
                        self.reply(StatusCode::OK)
                    }
                    Err(e) => {
                        log::error!("{}: cannot commit {name:?}: {e}", self.session.who());
                        self.reply(StatusCode::IN_USE)
                    }
                }
            }
            FinishVerdict::Discard { reply } => {
                log::info!("{}: upload of {name:?} discarded: {reply}", self.session.who());
                self.reply(reply)
            }
            FinishVerdict::Closed => self.reply(StatusCode::BAD_REQUEST),
        }
    }

    fn on_delete(&mut self, name: String) -> Result<(), End> {
        if !self.name_ok(&name) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        let server = self.server;
        let lib = &server.library;
        let Some(lock) = try_lock_guard(lib.locks.as_ref(), &name, self.session.id) else {
            return self.reply(StatusCode::LOCKED);
        };
        self.settle_outgoing(&name)?;
        let result = lib.commit_delete(&name, &self.session.seen);
        drop(lock);
        match result {
            Ok(Committed::New { entry, conflict }) => {
                log::info!("{}: deleted {name:?} (version {})", self.session.who(), entry.version);
                self.reply_then_fan_out(conflict, name)
            }
            Ok(_) => self.reply(StatusCode::NO_FILE),
            Err(e) => {
                log::error!("{}: cannot delete {name:?}: {e}", self.session.who());
                self.reply(StatusCode::IN_USE)
            }
        }
    }

    fn on_request(&mut self, name: String) -> Result<(), End> {
        if !self.name_ok(&name) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        let lib = &self.server.library;
        if lib.locks.holder(&name).is_some() {
            return self.reply(StatusCode::IN_USE);
        }
        if lib.catalog.get(&name).is_none() {
            return self.reply(StatusCode::NO_FILE);
        }
        self.after_reply.push(AfterReply::Queue(name));
        self.reply(StatusCode::OK)
    }

    /// Replies OK to a committed change of `name` (and of its `conflict`
    /// copy, if one was kept); both are queued for the other clients once
    /// the reply is on the wire.
    fn reply_then_fan_out(&mut self, conflict: Option<String>, name: String) -> Result<(), End> {
        if let Some(c) = conflict {
            self.after_reply.push(AfterReply::FanOut { path: c, except: None });
        }
        self.after_reply.push(AfterReply::FanOut { path: name, except: Some(self.session.id) });
        self.reply(StatusCode::OK)
    }
}
