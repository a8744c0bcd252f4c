//! The receiving side of one connection, as one machine: bytes and the time
//! in, replies and deadlines out, in quinn-proto's shape. The server's send
//! connection (uploads, DELETE, REQUEST from a client) and the client's
//! receive connection (deliveries from the server) are both this machine;
//! they differ only in their [`Host`], which owns what touches the outside
//! (locks, temp files, commits, the folder) and answers the questions the
//! contract leaves to each side.
//!
//! What lives here, once (PROTOCOL.md sections 3, 4 and 9):
//! - every message gets exactly one STATUS, in order; keep-alives are never
//!   answered and may come between any two messages;
//! - a name is checked before anything else happens (0x0100);
//! - the first message naming F opens a transfer; the open transfers'
//!   limit and the idle-transfer abort (section 9, [`OpenTransfers`]);
//! - chunk sizes, chunk and whole-file MD5 (section 4, [`Receiver`]), an
//!   oversized payload skipped without ever being buffered;
//! - ABORT, DELETE, REQUEST, a repeated HELLO, and what is not expected;
//! - keep-alive and dead peer ([`Liveness`]);
//! - the stale-change rule's bounded wait, as a state with a deadline
//!   ([`Step::Settle`], section 6).
//!
//! The driver's loop: read into [`spare`](Receiving::spare) and report it
//! with [`filled`](Receiving::filled); call [`process`](Receiving::process)
//! until it says [`Step::NeedInput`]; write what
//! [`poll_transmit`](Receiving::poll_transmit) gives; call
//! [`handle_timeout`](Receiving::handle_timeout) when a read times out or
//! [`poll_timeout`](Receiving::poll_timeout) has passed; log what
//! [`poll_event`](Receiving::poll_event) tells.

use std::collections::VecDeque;
use std::time::Instant;

#[cfg(doc)]
use dropsync_proto::index::INDEX_NAME;
use dropsync_proto::index::{parse_request, IndexRequest};
use dropsync_proto::name::{validate_name, COPY_OFFER_NAME};
use dropsync_proto::{Digest, Frame, MessageType, ParseError, StatusCode};

use crate::decoder::{Decoder, Msg};
use crate::liveness::{Due, Gone, Liveness, Silence, Timers};
use crate::open_transfers::{Begin, Limits, OpenTransfers, Refusal};
use crate::receiver::{ChunkVerdict, FinishVerdict, HeaderVerdict, Receiver};
use crate::stale::MAX_CROSS_CONNECTION_WAIT;

/// The settings of one receiving side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Largest chunk payload accepted (section 4: 16 MiB unless configured).
    pub max_chunk: u32,
    /// Longest name accepted; a longer one gets 0x0100.
    pub max_name_len: usize,
    /// Whether the META-DATA transfer of section 1 may arrive here (the
    /// client's receive connection; never the server's).
    pub metadata_name: bool,
    /// Open transfers and the idle-transfer abort (section 9).
    pub limits: Limits,
    /// Keep-alive and dead-peer intervals.
    pub timers: Timers,
    /// What silence means (a legacy session may be silent, section 1).
    pub silence: Silence,
}

/// What a verified transfer assembled, for [`Host::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assembled {
    /// Bytes in the file.
    pub size: u64,
    /// Its MD5 (the wire's integrity check; never its identity).
    pub md5: Digest,
}

/// A verified chunk payload for [`Host::append`]: borrowed from the
/// machine's buffer, or the host's own buffer from
/// [`Host::chunk_buffer`], handed back filled (no copy on the way).
#[derive(Debug)]
pub enum Payload<'a> {
    /// In the receive buffer, valid for the call.
    Borrowed(&'a [u8]),
    /// The buffer the host lent, now holding the payload.
    Owned(Vec<u8>),
}

impl Payload<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }
}

/// Why a transfer ended without a commit, for [`Host::discard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A verdict of section 4 with this reply: 0x0008 (third bad checksum,
    /// or whole-file mismatch) or 0x0010 (third invalid size).
    Verdict(StatusCode),
    /// The peer sent ABORT.
    PeerAbort,
    /// No message of its own for the idle limit (section 9).
    Idle,
    /// The host could not keep the data ([`Host::append`] failed).
    HostFailed(StatusCode),
    /// The connection ended.
    ConnectionClosed,
}

/// A host's answer to a change (an upload's FINISHED, a DELETE, a COPY):
/// its STATUS now, or later. A reply given later still goes out in its
/// place (section 4: replies in order): the replies to messages after it
/// wait behind it, keep-alives do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// The STATUS, now.
    Now(StatusCode),
    /// The host finishes the change later (group commit: several changes
    /// share one durable write) and then gives its STATUS to
    /// [`Receiving::resolve`] with this ticket, which the host picks and
    /// keeps unique among the replies it has not given yet.
    Later(u64),
}

impl From<StatusCode> for Reply {
    fn from(code: StatusCode) -> Self {
        Reply::Now(code)
    }
}

/// A reply queued behind one the host gives later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    Waiting(u64),
    Ready(StatusCode),
}

/// What the side that owns the outside world does for the machine. Each
/// call happens at the point of the contract where its effect is due;
/// whatever the host returns as a STATUS is the reply to that message.
pub trait Host {
    /// What the host keeps for one open transfer (a temp file, a lock).
    /// Dropping it must undo it (remove the partial data, release the lock).
    type Transfer;

    /// The first message of a transfer of `name` arrived (a chunk of
    /// `first_len` bytes, or 0 for a FINISHED: an empty file). Take the
    /// lock without waiting and set up the temp file, or refuse with the
    /// STATUS that ends the transfer (0x0040 locked, 0x0080 in use).
    fn open(&mut self, name: &str, first_len: u32) -> Result<Self::Transfer, StatusCode>;

    /// A buffer of `len` bytes the next payload may be read into directly
    /// (a large chunk that goes on to a writer thread as it is), or `None`
    /// to have it borrowed from the receive buffer.
    fn chunk_buffer(&mut self, _transfer: &mut Self::Transfer, _len: u32) -> Option<Vec<u8>> {
        None
    }

    /// A chunk of `len` bytes checked out against its MD5 `digest`, just
    /// before [`append`](Self::append): a host may keep the digest (the
    /// server sends it again with the same chunk of a delivery).
    fn checked(&mut self, _transfer: &mut Self::Transfer, _digest: &Digest, _len: usize) {}

    /// A chunk whose MD5 checked out: append it. `Err` ends the transfer
    /// with that STATUS (the data cannot be kept: 0x0080).
    fn append(&mut self, name: &str, transfer: &mut Self::Transfer, payload: Payload<'_>) -> Result<(), StatusCode>;

    /// The whole file checked out: make it replace the old version (fsync,
    /// rename, record) and return the reply, now or later.
    fn commit(&mut self, name: &str, transfer: Self::Transfer, file: Assembled) -> Reply;

    /// The transfer ended without a commit; dropping `transfer` undoes it.
    fn discard(&mut self, _name: &str, _transfer: Self::Transfer, _why: Ended) {}

    /// The first message of a transfer of `name` was refused with `code`
    /// (beyond the limit, after an idle abort, or by [`open`](Self::open)).
    fn refused(&mut self, _name: &str, _code: StatusCode) {}

    /// Whether a change of `name` (its FINISHED or DELETE) must wait, at most
    /// [`MAX_CROSS_CONNECTION_WAIT`], before it is judged: the stale-change
    /// rule of section 6, while a delivery of `name` on the other
    /// connection awaits its reply.
    fn must_settle(&mut self, _name: &str) -> bool {
        false
    }

    /// DELETE of `name` (no transfer of it open here): the reply, now or
    /// later.
    fn delete(&mut self, name: &str) -> Reply;

    /// COPY [ext] of `from`'s content (MD5 `digest`) to `name`, no transfer
    /// of `name` open here: the reply (0x0001 done; 0x0020 the content is
    /// not the version the digest names, so the sender sends the file; or
    /// what an upload would get). Only a peer that said it takes COPY is
    /// sent one; a host that does not answers 0x0100.
    fn copy(&mut self, _from: &str, _name: &str, _digest: &Digest) -> Reply {
        Reply::Now(StatusCode::BAD_REQUEST)
    }

    /// REQUEST of [`COPY_OFFER_NAME`] [ext]: the peer takes COPY, and asks
    /// whether this host does. 0x0001 when it does (each side may then send
    /// COPY to the other), else 0x0100, the reply to any reserved name.
    fn offer_copy(&mut self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// REQUEST of [`INDEX_NAME`] [ext]: the peer acknowledges a META-DATA
    /// listing, or asks for every path next time. 0x0100 from a host that
    /// knows no listing since a version, the reply to any reserved name.
    fn index(&mut self, _request: IndexRequest) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// REQUEST of `name`: the reply. Only a server serves one.
    fn request(&mut self, _name: &str) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// A HELLO after the session began: the reply.
    fn hello(&mut self) -> StatusCode {
        StatusCode::BAD_REQUEST
    }

    /// Whether to stop before the next message (the client after the
    /// server's META-DATA, until it has reconciled). [`Receiving::process`]
    /// then returns [`Step::Paused`].
    fn paused(&self) -> bool {
        false
    }
}

/// What [`Receiving::process`] stopped for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every whole message received is handled: send what
    /// [`Receiving::poll_transmit`] gives (the peer may be waiting for
    /// it), then read more.
    NeedInput,
    /// Section 6's stale-change rule: send the replies so far, wait until
    /// the delivery of `name` to this peer has its reply or until `until`,
    /// whichever comes first, then call [`Receiving::process`] again, which
    /// judges the change with what is known then.
    Settle {
        /// The path.
        name: String,
        /// The latest the wait may last.
        until: Instant,
    },
    /// [`Host::paused`] said so: send the replies, and call
    /// [`Receiving::process`] again once it no longer does.
    Paused,
}

/// Why the connection must close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Closed {
    /// Section 9: the peer is gone.
    #[error("{0}")]
    PeerGone(Gone),
    /// A message of unknown type: its length is unknown, so the stream
    /// cannot be resynchronised (section 2).
    #[error("unreadable message: {0}")]
    Unreadable(ParseError),
}

/// What happened that the driver may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The transfer limit was reached (reported once per connection).
    LimitReached {
        /// The limit.
        max_open: usize,
    },
    /// A transfer's late message after its idle abort was refused.
    LateMessage {
        /// The path.
        name: String,
    },
    /// A name that breaks section 3's rules was refused with 0x0100.
    BadName {
        /// The name.
        name: String,
    },
    /// A frame the codec refused (section 3), answered 0x0100.
    Rejected(ParseError),
    /// A message this side does not take, answered 0x0100.
    Unexpected {
        /// Its type.
        kind: MessageType,
        /// Its name.
        name: String,
    },
    /// A STATUS other than a keep-alive: nothing awaits one here; ignored.
    StrayStatus(StatusCode),
}

enum State<T> {
    /// Between messages.
    Idle,
    /// A chunk's payload is awaited in the receive buffer.
    Payload { digest: Digest, name: String, len: u32 },
    /// A chunk's payload is being read into the host's buffer.
    PayloadInto { digest: Digest, name: String, buf: Vec<u8>, got: usize },
    /// A change waits for section 6's bounded wait (see [`Step::Settle`]).
    /// `announced` once [`Step::Settle`] has been returned for it.
    Settling { name: String, until: Instant, change: Change<T>, announced: bool },
}

enum Change<T> {
    Upload { transfer: T, file: Assembled },
    Delete,
}

/// The receiving side of one connection. `T` is the host's
/// [`Host::Transfer`].
pub struct Receiving<T> {
    config: Config,
    decoder: Decoder,
    link: Liveness,
    open: OpenTransfers<T>,
    state: State<T>,
    /// Replies not transmitted yet.
    out: Vec<u8>,
    /// Replies behind one the host gives later ([`Reply::Later`]), in
    /// order; empty while none is awaited.
    held: VecDeque<Held>,
    events: VecDeque<Event>,
    limit_reported: bool,
    /// The last [`spare`](Receiving::spare) was the host's payload buffer.
    spare_is_payload: bool,
}

impl<T> Receiving<T> {
    /// A connection set up at `now`, nothing received yet.
    pub fn new(config: Config, now: Instant) -> Self {
        Self::with_decoder(config, now, Decoder::new())
    }

    /// A connection whose first bytes went into `decoder` already (read
    /// while the connection was being paired); what it holds comes next.
    pub fn with_decoder(config: Config, now: Instant, decoder: Decoder) -> Self {
        Receiving {
            config,
            decoder,
            link: Liveness::new(now, config.timers, config.silence),
            open: OpenTransfers::new(config.limits),
            state: State::Idle,
            out: Vec::with_capacity(64),
            held: VecDeque::new(),
            events: VecDeque::new(),
            limit_reported: false,
            spare_is_payload: false,
        }
    }

    /// Room to read the socket into (never empty). A large payload the
    /// host lent a buffer for is read straight into that buffer, once what
    /// the receive buffer holds of it has been moved there.
    pub fn spare(&mut self) -> &mut [u8] {
        let mut into_payload = false;
        if let State::PayloadInto { buf, got, .. } = &mut self.state {
            *got += self.decoder.take_into(&mut buf[*got..]);
            into_payload = *got < buf.len();
        }
        self.spare_is_payload = into_payload;
        match &mut self.state {
            State::PayloadInto { buf, got, .. } if into_payload => &mut buf[*got..],
            State::Payload { len, .. } => self.decoder.spare(*len as usize),
            _ => {
                let want = self.decoder.buffered() + 1;
                self.decoder.spare(want)
            }
        }
    }

    /// `n` bytes were read into [`spare`](Self::spare) at `now`. Any byte
    /// counts as hearing from the peer: a large chunk on a slow link is not
    /// silence.
    pub fn filled(&mut self, now: Instant, n: usize) {
        if n == 0 {
            return;
        }
        self.link.on_received(now);
        match &mut self.state {
            State::PayloadInto { buf, got, .. } if self.spare_is_payload => *got = (*got + n).min(buf.len()),
            _ => self.decoder.filled(n),
        }
    }

    /// Bytes that arrived at `now` (a copy: tests and the simulator; a
    /// socket driver reads into [`spare`](Self::spare)).
    pub fn handle_input(&mut self, now: Instant, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.spare();
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(now, n);
            bytes = &bytes[n..];
        }
    }

    /// True between messages with nothing buffered: the peer closing now
    /// loses nothing half-received.
    pub fn is_between_messages(&self) -> bool {
        matches!(self.state, State::Idle) && self.decoder.buffered() == 0 && self.decoder.skip_pending() == 0
    }

    /// Handles every whole message received, until one of [`Step`]'s
    /// reasons to stop. `Err` closes the connection.
    pub fn process<H: Host<Transfer = T>>(&mut self, now: Instant, host: &mut H) -> Result<Step, Closed> {
        loop {
            match std::mem::replace(&mut self.state, State::Idle) {
                State::Idle => {
                    if host.paused() {
                        return Ok(Step::Paused);
                    }
                    let msg = match self.decoder.poll_msg() {
                        Ok(Some(msg)) => msg,
                        Ok(None) => return Ok(Step::NeedInput),
                        Err(e) => return Err(Closed::Unreadable(e)),
                    };
                    self.handle(now, msg, host);
                    if matches!(self.state, State::Settling { .. }) {
                        continue;
                    }
                }
                State::Payload { digest, name, len } => {
                    let Some(payload) = self.decoder.payload(len) else {
                        self.state = State::Payload { digest, name, len };
                        return Ok(Step::NeedInput);
                    };
                    let reply = on_payload(&mut self.open, host, &name, &digest, Payload::Borrowed(payload));
                    self.reply(reply);
                }
                State::PayloadInto { digest, name, mut buf, mut got } => {
                    got += self.decoder.take_into(&mut buf[got..]);
                    if got < buf.len() {
                        self.state = State::PayloadInto { digest, name, buf, got };
                        return Ok(Step::NeedInput);
                    }
                    let reply = on_payload(&mut self.open, host, &name, &digest, Payload::Owned(buf));
                    self.reply(reply);
                }
                State::Settling { name, until, change, announced: false } => {
                    let step = Step::Settle { name: name.clone(), until };
                    self.state = State::Settling { name, until, change, announced: true };
                    return Ok(step);
                }
                State::Settling { name, change, announced: true, .. } => {
                    let reply = match change {
                        Change::Upload { transfer, file } => host.commit(&name, transfer, file),
                        Change::Delete => host.delete(&name),
                    };
                    self.answer(reply);
                }
            }
            // After every message, not only when a read times out: a peer
            // whose own keep-alives come more often than the read timeout
            // would otherwise never get one (dropsync-soak, seed 2).
            self.handle_timeout(now, host)?;
        }
    }

    /// Time has passed (a read timed out, or [`poll_timeout`]
    /// (Self::poll_timeout) is due): a gone peer closes the connection; a
    /// keep-alive is queued if due; idle transfers are aborted.
    pub fn handle_timeout<H: Host<Transfer = T>>(&mut self, now: Instant, host: &mut H) -> Result<(), Closed> {
        match self.link.poll(now) {
            Due::PeerGone(gone) => return Err(Closed::PeerGone(gone)),
            Due::KeepAlive => {
                Frame::Status(StatusCode::KEEP_ALIVE).encode(&mut self.out);
                self.link.on_sent(now);
            }
            Due::Nothing => {}
        }
        if matches!(self.open.poll_timeout(), Some(at) if at <= now) {
            for (name, transfer) in self.open.expire(now) {
                host.discard(&name, transfer, Ended::Idle);
            }
        }
        Ok(())
    }

    /// When [`handle_timeout`](Self::handle_timeout) next has something to
    /// do.
    pub fn poll_timeout(&self) -> Instant {
        let link = self.link.poll_timeout();
        match self.open.poll_timeout() {
            Some(idle) => idle.min(link),
            None => link,
        }
    }

    /// Moves the replies not sent yet into `buf` (appended); true if there
    /// were any. The driver writes them whole.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut Vec<u8>) -> bool {
        if self.out.is_empty() {
            return false;
        }
        buf.append(&mut self.out);
        self.link.on_sent(now);
        true
    }

    /// The next event to log, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Time spent by this side (the client reconciling after META-DATA) is
    /// not the peer's silence: the dead-peer clock starts again at `now`.
    pub fn forgive_silence(&mut self, now: Instant) {
        self.link.on_received(now);
    }

    /// Transfers open now.
    pub fn open_transfers(&self) -> usize {
        self.open.len()
    }

    /// The connection ended: every open transfer (and a change still
    /// settling) is discarded, so partial files go and locks are released.
    /// Returns how many.
    pub fn close<H: Host<Transfer = T>>(&mut self, host: &mut H) -> usize {
        let mut n = 0;
        if let State::Settling { name, change: Change::Upload { transfer, .. }, .. } =
            std::mem::replace(&mut self.state, State::Idle)
        {
            host.discard(&name, transfer, Ended::ConnectionClosed);
            n += 1;
        }
        for (name, transfer) in self.open.drain() {
            host.discard(&name, transfer, Ended::ConnectionClosed);
            n += 1;
        }
        n
    }

    fn reply(&mut self, code: StatusCode) {
        if self.held.is_empty() {
            Frame::Status(code).encode(&mut self.out);
        } else {
            self.held.push_back(Held::Ready(code));
        }
    }

    fn answer(&mut self, reply: Reply) {
        match reply {
            Reply::Now(code) => self.reply(code),
            Reply::Later(ticket) => self.held.push_back(Held::Waiting(ticket)),
        }
    }

    /// The host's STATUS for the change it answered [`Reply::Later`] with
    /// `ticket`: it goes out in its place, with the replies that waited
    /// behind it. False if no reply awaits that ticket.
    pub fn resolve(&mut self, ticket: u64, code: StatusCode) -> bool {
        let Some(slot) = self.held.iter_mut().find(|h| **h == Held::Waiting(ticket)) else {
            return false;
        };
        *slot = Held::Ready(code);
        while let Some(Held::Ready(code)) = self.held.front().copied() {
            self.held.pop_front();
            Frame::Status(code).encode(&mut self.out);
        }
        true
    }

    /// Replies the host is still to give ([`Reply::Later`]).
    pub fn replies_awaited(&self) -> usize {
        self.held.iter().filter(|h| matches!(h, Held::Waiting(_))).count()
    }

    /// Section 3: a name is checked before it is used. The META-DATA
    /// transfer's name is only for a transfer to a client.
    fn name_ok(&mut self, name: &str, transfer: bool) -> bool {
        let metadata = self.config.metadata_name && transfer;
        let ok = name.len() <= self.config.max_name_len && validate_name(name, metadata).is_ok();
        if !ok {
            self.events.push_back(Event::BadName { name: name.to_owned() });
        }
        ok
    }

    /// Handles a message the driver decoded from this stream itself (a
    /// legacy session's first message, read while pairing). A chunk's
    /// payload must follow in the decoder given to
    /// [`with_decoder`](Self::with_decoder). Call
    /// [`process`](Self::process) next.
    pub fn handle_msg<H: Host<Transfer = T>>(&mut self, now: Instant, msg: Msg, host: &mut H) {
        self.handle(now, msg, host);
    }

    fn handle<H: Host<Transfer = T>>(&mut self, now: Instant, msg: Msg, host: &mut H) {
        match msg {
            Msg::Chunk { digest, name, len } => self.on_chunk(now, digest, name, len, host),
            Msg::Named { kind: MessageType::Finished, digest, name } => self.on_finished(now, &digest, name, host),
            Msg::Named { kind: MessageType::Abort, name, .. } => {
                // Section 4: an ABORT naming no transfer open on this
                // connection is answered OK and changes nothing (a
                // transfer aborted for idleness is forgotten).
                if let Some(transfer) = self.open.abort(&name) {
                    host.discard(&name, transfer, Ended::PeerAbort);
                }
                self.reply(StatusCode::OK);
            }
            Msg::Named { kind: MessageType::Delete, name, .. } => self.on_delete(now, name, host),
            // [ext] The offer of COPY: a reserved name, so that a peer that
            // knows no COPY refuses it (0x0100) and nothing else happens.
            Msg::Named { kind: MessageType::Request, name, .. } if name == COPY_OFFER_NAME => {
                let reply = host.offer_copy();
                self.reply(reply);
            }
            Msg::Named { kind: MessageType::Request, name, .. } => {
                let reply = match parse_request(&name) {
                    Some(request) => host.index(request),
                    None if self.name_ok(&name, false) => host.request(&name),
                    None => StatusCode::BAD_REQUEST,
                };
                self.reply(reply);
            }
            Msg::Named { kind, name, .. } => {
                self.events.push_back(Event::Unexpected { kind, name });
                self.reply(StatusCode::BAD_REQUEST);
            }
            // Section 4: a keep-alive is never replied to.
            Msg::Status(StatusCode::KEEP_ALIVE) => {}
            Msg::Status(code) => self.events.push_back(Event::StrayStatus(code)),
            Msg::Hello { .. } => {
                let reply = host.hello();
                self.reply(reply);
            }
            Msg::Copy { digest, from, name } => self.on_copy(&digest, &from, name, host),
            Msg::Rejected(e) => {
                self.events.push_back(Event::Rejected(e));
                self.reply(StatusCode::BAD_REQUEST);
            }
        }
    }

    /// Section 4: "The first message naming F opens the transfer." `Err`
    /// refuses it with the STATUS that ends it.
    fn begin<H: Host<Transfer = T>>(
        &mut self,
        now: Instant,
        name: &str,
        first_len: u32,
        host: &mut H,
    ) -> Result<(), StatusCode> {
        match self.open.begin(name, now) {
            Begin::Open => Ok(()),
            Begin::Refused(code) => {
                match self.open.last_refusal() {
                    Some(Refusal::Limit) if !self.limit_reported => {
                        self.limit_reported = true;
                        self.events.push_back(Event::LimitReached { max_open: self.config.limits.max_open });
                    }
                    Some(Refusal::Expired) => self.events.push_back(Event::LateMessage { name: name.to_owned() }),
                    _ => {}
                }
                host.refused(name, code);
                Err(code)
            }
            Begin::New => match host.open(name, first_len) {
                Ok(transfer) => {
                    self.open.insert(name, Receiver::new(self.config.max_chunk), transfer, now);
                    Ok(())
                }
                Err(code) => {
                    host.refused(name, code);
                    Err(code)
                }
            },
        }
    }

    fn on_chunk<H: Host<Transfer = T>>(&mut self, now: Instant, digest: Digest, name: String, len: u32, host: &mut H) {
        if !self.name_ok(&name, true) {
            self.decoder.skip(u64::from(len));
            return self.reply(StatusCode::BAD_REQUEST);
        }
        if let Err(code) = self.begin(now, &name, len, host) {
            self.decoder.skip(u64::from(len));
            return self.reply(code);
        }
        let Some((receiver, transfer)) = self.open.get_mut(&name) else {
            self.decoder.skip(u64::from(len));
            return self.reply(StatusCode::IN_USE);
        };
        match receiver.handle_chunk_header(len) {
            HeaderVerdict::ReadPayload => {
                self.state = match host.chunk_buffer(transfer, len) {
                    Some(mut buf) => {
                        buf.resize(len as usize, 0);
                        State::PayloadInto { digest, name, buf, got: 0 }
                    }
                    None => State::Payload { digest, name, len },
                };
            }
            // Section 4: an invalid size is read and discarded, never
            // allocated; the transfer stays open.
            HeaderVerdict::Resend { reply } => {
                self.decoder.skip(u64::from(len));
                self.reply(reply);
            }
            HeaderVerdict::Discard { reply } => {
                self.decoder.skip(u64::from(len));
                self.end(&name, Ended::Verdict(reply), host);
                self.reply(reply);
            }
            HeaderVerdict::Closed => {
                self.decoder.skip(u64::from(len));
                self.end(&name, Ended::Verdict(StatusCode::BAD_REQUEST), host);
                self.reply(StatusCode::BAD_REQUEST);
            }
        }
    }

    fn on_finished<H: Host<Transfer = T>>(&mut self, now: Instant, digest: &Digest, name: String, host: &mut H) {
        if !self.name_ok(&name, true) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        // A FINISHED with no chunk before it opens a transfer: an empty file.
        if let Err(code) = self.begin(now, &name, 0, host) {
            return self.reply(code);
        }
        let Some((mut receiver, transfer)) = self.open.remove(&name) else {
            return self.reply(StatusCode::IN_USE);
        };
        match receiver.handle_finished(digest) {
            FinishVerdict::Commit { size, digest, .. } => {
                let file = Assembled { size, md5: digest };
                if host.must_settle(&name) {
                    let until = now + MAX_CROSS_CONNECTION_WAIT;
                    self.state =
                        State::Settling { name, until, change: Change::Upload { transfer, file }, announced: false };
                    return;
                }
                let reply = host.commit(&name, transfer, file);
                self.answer(reply);
            }
            FinishVerdict::Discard { reply } => {
                host.discard(&name, transfer, Ended::Verdict(reply));
                self.reply(reply);
            }
            FinishVerdict::Closed => {
                host.discard(&name, transfer, Ended::Verdict(StatusCode::BAD_REQUEST));
                self.reply(StatusCode::BAD_REQUEST);
            }
        }
    }

    fn on_delete<H: Host<Transfer = T>>(&mut self, now: Instant, name: String, host: &mut H) {
        if !self.name_ok(&name, false) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        // Section 4: a transfer of F open on this connection holds F's
        // lock, so a DELETE of F meets a lock: 0x0040.
        if self.open.get_mut(&name).is_some() {
            return self.reply(StatusCode::LOCKED);
        }
        if host.must_settle(&name) {
            let until = now + MAX_CROSS_CONNECTION_WAIT;
            self.state = State::Settling { name, until, change: Change::Delete, announced: false };
            return;
        }
        let reply = host.delete(&name);
        self.answer(reply);
    }

    /// COPY [ext]: a whole transfer in one message. Both names follow
    /// section 3, and a transfer of `name` open on this connection holds
    /// its lock (0x0040), as for a DELETE. Unlike an upload it is judged at
    /// once, without the stale-change wait: the section 6 wait is a "may".
    fn on_copy<H: Host<Transfer = T>>(&mut self, digest: &Digest, from: &str, name: String, host: &mut H) {
        if !self.name_ok(&name, false) || !self.name_ok(from, false) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        if self.open.get_mut(&name).is_some() {
            return self.reply(StatusCode::LOCKED);
        }
        let reply = host.copy(from, &name, digest);
        self.answer(reply);
    }

    /// Ends the open transfer of `name` without a commit.
    fn end<H: Host<Transfer = T>>(&mut self, name: &str, why: Ended, host: &mut H) {
        if let Some((_, transfer)) = self.open.remove(name) {
            host.discard(name, transfer, why);
        }
    }
}

/// A chunk's payload has arrived: the receiver's verdict, carried out.
/// Returns the reply.
fn on_payload<T, H: Host<Transfer = T>>(
    open: &mut OpenTransfers<T>,
    host: &mut H,
    name: &str,
    digest: &Digest,
    payload: Payload<'_>,
) -> StatusCode {
    // The transfer may have been aborted for idleness while its payload
    // was arriving: that transfer is over (section 9).
    let Some((receiver, transfer)) = open.get_mut(name) else {
        return StatusCode::IN_USE;
    };
    let (reply, why) = match receiver.handle_chunk(digest, payload.as_slice()) {
        ChunkVerdict::Append { reply } => {
            host.checked(transfer, digest, payload.as_slice().len());
            match host.append(name, transfer, payload) {
                Ok(()) => return reply,
                Err(code) => (code, Ended::HostFailed(code)),
            }
        }
        ChunkVerdict::Resend { reply } => return reply,
        ChunkVerdict::Discard { reply } => (reply, Ended::Verdict(reply)),
        ChunkVerdict::Closed => (StatusCode::BAD_REQUEST, Ended::Verdict(StatusCode::BAD_REQUEST)),
    };
    if let Some((_, transfer)) = open.remove(name) {
        host.discard(name, transfer, why);
    }
    reply
}

#[cfg(test)]
#[path = "receiving_tests.rs"]
mod tests;
