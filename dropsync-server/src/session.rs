//! One connected client: its two connections, its update queue and what it
//! is known to have seen. An entry of the server's connected-client list.

use std::collections::HashSet;
use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr};

use dropsync_io::conn::Conn;
use dropsync_io::tls::Fingerprint;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use dropsync_core::access::Access;
use dropsync_core::liveness::{Liveness, Silence, Timers};
use dropsync_core::locks::SessionId;
use dropsync_io::queue::UpdateQueue;
use dropsync_core::stale::SeenVersions;
use dropsync_core::delta_index::MIN_MORE_SPACING;
use dropsync_proto::index::Listing;
use dropsync_proto::ClientId;

use crate::outbound::{Batch, Inbox};
use crate::streams::{Offer, Offers};

/// A paired client session.
#[derive(Debug)]
pub struct Session {
    /// Server-unique id (also the lock owner id).
    pub id: SessionId,
    /// Id, label, address and client id, for logs; see [`Session::who`].
    who: String,
    /// The label from HELLO (for conflict-copy names).
    pub label: String,
    /// The client's IP address (for the per-address session cap).
    pub ip: IpAddr,
    /// What it may change (secure mode's read-only clients).
    pub access: Access,
    /// The key it proved it holds, on TLS.
    pub key: Option<Fingerprint>,
    /// Its connections are TLS.
    pub tls: bool,
    /// The client's address (its send connection's), for the status page.
    pub peer: SocketAddr,
    /// When the session started (wall clock, nanoseconds since the Unix
    /// epoch), for the status page.
    pub started_ns: i64,
    /// When the session started (monotonic), the origin of `progress_ms`.
    started: Instant,
    /// Milliseconds after `started` of the last sign that deliveries move:
    /// a reply to one, or the sender finding nothing to send. The status
    /// page calls a client with work waiting and no progress for a while
    /// stalled.
    progress_ms: AtomicU64,
    /// Paired without HELLO (section 1): one transfer at a time, and never
    /// closed for silence alone.
    legacy: bool,
    /// It offered COPY [ext] (a REQUEST of `COPY_OFFER_NAME`): deliveries
    /// of content it has at another path may name that path instead of
    /// sending the bytes.
    pub takes_copy: AtomicBool,
    /// Paths whose delivery by COPY it refused: sent as files from then on.
    pub copy_refused: Mutex<HashSet<String>>,
    /// Paths waiting to be sent to this client (FIFO, no duplicates).
    pub queue: UpdateQueue,
    /// Versions this client is known to have seen (section 6).
    pub seen: Mutex<SeenVersions>,
    /// Paths it asked for with REQUEST: always served, never skipped.
    pub requested: Mutex<HashSet<String>>,
    /// Paths whose delivery under way this client's own change overtook
    /// (committed while the delivery was on its way): the sender aborts it
    /// (`outbound::drive`), as its content is older than the client's.
    /// With the version the client committed: only a delivery of an older
    /// version is aborted.
    pub overtaken: Mutex<Vec<(String, u64)>>,
    /// The META-DATA transfer that must precede every other transfer.
    pub metadata: Mutex<MetaState>,
    /// HELLO id (`None`: a legacy session).
    pub client_id: Option<ClientId>,
    /// [ext] What its META-DATA listed (`dropsync_proto::index`), which is
    /// all it may acknowledge; `None` for a legacy session, which is sent
    /// every path and no listing line.
    listing: Mutex<Option<Listing>>,
    /// [ext] When this session was last sent a `/more` listing.
    last_more: Mutex<Option<Instant>>,
    /// Writer of the receive connection (transfers to the client,
    /// keep-alives, answers): used by the session's sender thread only, its
    /// one owner.
    out: Mutex<Conn>,
    /// What the reply reader read on the receive connection, for the
    /// sender thread (`outbound::Inbox`).
    pub replies: Mutex<Receiver<Inbox>>,
    /// Deliveries prepared by the worker pool, for the session's sender.
    deliveries: Mutex<mpsc::Sender<Batch>>,
    /// [ext] Uploads in progress offered to this client (`streams`).
    offers: Offers,
    /// The sender's inbox, for a stream it follows to wake it
    /// ([`Inbox::StreamMoved`]); taken when the session closes, so that the
    /// inbox still ends when the reply reader does.
    wake: Mutex<Option<mpsc::Sender<Inbox>>>,
    /// A [`Inbox::StreamMoved`] is in the inbox: no need for another.
    stream_woken: AtomicBool,
    /// A delivery is prepared or under way (pool mode: at most one).
    pub delivering: AtomicBool,
    send_sock: Conn,
    recv_sock: Conn,
    closed: AtomicBool,
    /// Keep-alive and dead-peer clocks of the receive connection, kept by
    /// the sender thread (the reply reader reports what it hears).
    link: Mutex<Liveness>,
    /// The paths being sent to this client right now, until their outcome
    /// is recorded in `seen`.
    outgoing: Mutex<Vec<String>>,
    outgoing_done: Condvar,
}

/// The pieces a session is made of.
pub struct SessionParts {
    /// Server-unique id.
    pub id: SessionId,
    /// HELLO id.
    pub client_id: Option<ClientId>,
    /// HELLO label.
    pub label: String,
    /// Peer address.
    pub peer: SocketAddr,
    /// What the admission rule gave it.
    pub access: Access,
    /// Its key, on TLS.
    pub key: Option<Fingerprint>,
    /// TLS connections.
    pub tls: bool,
    /// Send connection (a clone; the inbound thread reads the original).
    pub send_sock: Conn,
    /// Receive connection (a clone).
    pub recv_sock: Conn,
    /// Writer for the receive connection.
    pub out: Conn,
    /// What the reply reader hands the sender.
    pub replies: Receiver<Inbox>,
    /// Where prepared deliveries go (the sender thread holds the receiver).
    pub deliveries: mpsc::Sender<Batch>,
    /// The sender of `replies`'s channel, for streams to wake the sender.
    pub wake: mpsc::Sender<Inbox>,
    /// When the session starts.
    pub now: Instant,
    /// Section 9's intervals.
    pub timers: Timers,
}

/// Where a session is with its first transfer, the META-DATA.
#[derive(Debug)]
pub enum MetaState {
    /// The session is in the client list but its snapshot is not taken
    /// yet: nothing may be sent (fan-outs wait in the queue).
    Pending,
    /// The text to send first.
    Ready(String),
    /// Sent; the queue may be served.
    Sent,
}

impl Session {
    /// Assembles a session.
    pub fn new(p: SessionParts) -> Self {
        Self {
            who: match &p.client_id {
                Some(id) => format!("#{} {:?}@{} [{}]", p.id, p.label, p.peer, &dropsync_proto::digest::to_hex(id)[..8]),
                None => format!("#{} {:?}@{} [legacy]", p.id, p.label, p.peer),
            },
            id: p.id,
            label: p.label,
            ip: p.peer.ip().to_canonical(),
            access: p.access,
            key: p.key,
            tls: p.tls,
            peer: p.peer,
            started_ns: crate::clock::now_ns(),
            started: p.now,
            progress_ms: AtomicU64::new(0),
            legacy: p.client_id.is_none(),
            takes_copy: AtomicBool::new(false),
            copy_refused: Mutex::new(HashSet::new()),
            queue: UpdateQueue::new(),
            seen: Mutex::new(SeenVersions::new(0)),
            requested: Mutex::new(HashSet::new()),
            overtaken: Mutex::new(Vec::new()),
            metadata: Mutex::new(MetaState::Pending),
            client_id: p.client_id,
            listing: Mutex::new(None),
            last_more: Mutex::new(None),
            out: Mutex::new(p.out),
            replies: Mutex::new(p.replies),
            deliveries: Mutex::new(p.deliveries),
            offers: Offers::default(),
            wake: Mutex::new(Some(p.wake)),
            stream_woken: AtomicBool::new(false),
            delivering: AtomicBool::new(false),
            send_sock: p.send_sock,
            recv_sock: p.recv_sock,
            closed: AtomicBool::new(false),
            link: Mutex::new(Liveness::new(p.now, p.timers, silence_of(p.client_id.is_none()))),
            outgoing: Mutex::new(Vec::new()),
            outgoing_done: Condvar::new(),
        }
    }

    /// Hands a prepared delivery to the session's sender thread; false when
    /// that thread is gone (the session is ending).
    pub fn hand_over(&self, batch: Batch) -> bool {
        self.deliveries.lock().unwrap_or_else(PoisonError::into_inner).send(batch).is_ok()
    }

    /// [ext] Offers this client an upload in progress (`streams::offer`).
    pub fn offer_stream(&self, offer: Offer) {
        if let Some(old) = self.offers.push(offer) {
            old.stream.unwatch(self.id);
        }
    }

    /// The oldest offered upload still in progress.
    pub fn take_offer(&self) -> Option<Offer> {
        self.offers.take()
    }

    /// True when an offered upload still under way waits to be taken.
    pub fn has_offers(&self) -> bool {
        !self.offers.is_empty()
    }

    /// A stream this client's sender follows grew or ended: wakes the
    /// sender if it is not woken already.
    pub fn stream_moved(&self) {
        if self.stream_woken.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(tx) = self.wake.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
            let _ = tx.send(Inbox::StreamMoved);
        }
    }

    /// The sender took the wake-up in: the next move wakes it again.
    pub fn stream_heard(&self) {
        self.stream_woken.store(false, Ordering::SeqCst);
    }

    /// Marks `paths` as being sent to this client (empty: finished, and
    /// their outcomes recorded).
    pub fn set_outgoing(&self, paths: &[String]) {
        *self.outgoing.lock().unwrap_or_else(PoisonError::into_inner) = paths.to_vec();
        if paths.is_empty() {
            self.outgoing_done.notify_all();
        }
    }

    /// Waits (at most `limit`) until `path` is not being sent to this
    /// client. A change from the client and a delivery to it travel on two
    /// connections, so the client's reply to a delivery may arrive after its
    /// next change of the same path; whether it saw that delivery (its
    /// reply was OK) or refused it (0x0080) decides the stale-change rule,
    /// so the rule waits for that reply.
    pub fn wait_outgoing_settled(&self, path: &str, limit: Duration) {
        let guard = self.outgoing.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = self
            .outgoing_done
            .wait_timeout_while(guard, limit, |cur| cur.iter().any(|p| p == path) && !self.is_closed())
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// True while a delivery of `path` to this client awaits its reply
    /// (see [`wait_outgoing_settled`](Self::wait_outgoing_settled)).
    pub fn has_outgoing(&self, path: &str) -> bool {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner).iter().any(|p| p == path)
    }

    /// How many paths are being sent to this client right now.
    pub fn outgoing_len(&self) -> usize {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Records that deliveries to this client move (see `progress_ms`).
    pub fn note_progress(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since deliveries to this client last moved.
    pub fn since_progress(&self) -> Duration {
        let at = self.started + Duration::from_millis(self.progress_ms.load(Ordering::Relaxed));
        at.elapsed()
    }

    /// Sets the META-DATA to send first and the version counter it lists
    /// every version up to (section 6: what the client has seen; a listing
    /// of the changes since a version counts every version up to `upto` as
    /// seen too, for the client had the rest from earlier listings).
    /// A session that sent HELLO is also told, in `# ext` and listing lines
    /// after the header, the extensions it may offer (COPY, `index`) and
    /// what `text` lists; a legacy one gets the contract's text alone.
    pub fn set_metadata(&self, text: String, listing: Listing) {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).listed(listing.upto);
        self.put_metadata(text, listing);
    }

    /// [ext] Sets a listing of what changed since this session's listing, but
    /// for what it received, to send next (`/more`). The versions it lists
    /// do not count as seen: the client only saves where they differ from
    /// its bases, and fetches them in its next session, not in this one
    /// (a change of one of them from it keeps the version as a conflict copy).
    pub fn set_more(&self, text: String, listing: Listing, now: Instant) {
        *self.last_more.lock().unwrap_or_else(PoisonError::into_inner) = Some(now);
        self.put_metadata(text, listing);
    }

    /// True when a `/more` now comes sooner than [`MIN_MORE_SPACING`] after
    /// the last: it is refused (each costs a pass over the table under its
    /// lock).
    pub fn more_too_soon(&self, now: Instant) -> bool {
        let last = self.last_more.lock().unwrap_or_else(PoisonError::into_inner);
        last.is_some_and(|at| now.saturating_duration_since(at) < MIN_MORE_SPACING)
    }

    fn put_metadata(&self, mut text: String, listing: Listing) {
        if !self.legacy {
            let mut ext = String::new();
            dropsync_proto::metadata::render_extensions(&["copy", "index"], &mut ext);
            dropsync_proto::index::render_listing(&listing, &mut ext);
            let at = text.find('\n').map_or(text.len(), |i| i + 1);
            text.insert_str(at, &ext);
            *self.listing.lock().unwrap_or_else(PoisonError::into_inner) = Some(listing);
        }
        *self.metadata.lock().unwrap_or_else(PoisonError::into_inner) = MetaState::Ready(text);
    }

    /// True while a META-DATA is set and not yet taken to be sent.
    pub fn metadata_ready(&self) -> bool {
        matches!(*self.metadata.lock().unwrap_or_else(PoisonError::into_inner), MetaState::Ready(_))
    }

    /// [ext] What this session's META-DATA listed (`None`: legacy, or not
    /// sent yet).
    pub fn listing(&self) -> Option<Listing> {
        *self.listing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes one encoded message on the receive connection, holding the
    /// writer for the whole message so a keep-alive never lands inside one.
    /// `awaits_reply`: the message is a transfer's, which the client answers.
    pub fn write_out(&self, bytes: &[u8], awaits_reply: bool) -> std::io::Result<()> {
        let r = self.out.lock().unwrap_or_else(PoisonError::into_inner).write_all(bytes);
        self.sent(awaits_reply);
        r
    }

    /// Writes a chunk on the receive connection: its `header`, then its
    /// payload, which `body` streams into the socket (from the content's
    /// file, with no chunk-sized buffer). The writer is held throughout, as
    /// in [`write_out`](Self::write_out). The client answers it.
    pub fn write_streamed(
        &self,
        header: &[u8],
        body: impl FnOnce(&mut Conn) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let r = {
            let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
            out.write_all(header).and_then(|()| body(&mut out))
        };
        self.sent(true);
        r
    }

    /// Tells the receive connection's clocks that a message went out (one
    /// the client answers, if `awaits_reply`).
    fn sent(&self, awaits_reply: bool) {
        let now = Instant::now();
        let mut link = self.link();
        link.on_sent(now);
        if awaits_reply {
            link.set_awaiting(now, true);
        }
    }

    /// The receive connection's clocks.
    pub fn link(&self) -> MutexGuard<'_, Liveness> {
        self.link.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the session closed and shuts both sockets down (which wakes
    /// its blocked threads). True only for the first call.
    pub fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.queue.close();
        self.wake.lock().unwrap_or_else(PoisonError::into_inner).take();
        let _ = self.send_sock.shutdown(Shutdown::Both);
        let _ = self.recv_sock.shutdown(Shutdown::Both);
        true
    }

    /// True for a session paired without HELLO (section 1).
    pub fn is_legacy(&self) -> bool {
        self.legacy
    }

    /// Most transfers to send this client at once: `configured` for a
    /// client that said HELLO, one for a legacy one (section 6: "a legacy
    /// session always gets one transfer at a time").
    pub fn transfers_at_once(&self, configured: usize) -> usize {
        dropsync_core::delivery::transfers_at_once(self.legacy, configured)
    }

    /// What silence from this client means (section 1: a legacy session is
    /// not closed for silence alone).
    pub fn silence(&self) -> Silence {
        silence_of(self.legacy)
    }

    /// The label to show for this client: its HELLO label, or "legacy #id"
    /// (a legacy client has none).
    pub fn display_label(&self) -> String {
        match (self.label.is_empty(), self.legacy) {
            (false, _) => self.label.clone(),
            (true, true) => format!("legacy #{}", self.id),
            (true, false) => format!("#{}", self.id),
        }
    }

    /// True once the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// A short name for logs (made once: it is in every log line of the
    /// session).
    pub fn who(&self) -> &str {
        &self.who
    }
}

/// What silence means from a client that is `legacy` (section 1) or not.
fn silence_of(legacy: bool) -> Silence {
    if legacy {
        Silence::Allowed
    } else {
        Silence::Ends
    }
}
