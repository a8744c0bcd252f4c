//! Server → client transfers on a session's receive connection: the
//! META-DATA first, then queued paths, each sent as its state at dequeue
//! time (PROTOCOL.md section 6). Also the thread that reads the client's
//! replies on that connection.
//!
//! A delivery is prepared ([`prepare_next`]: dequeue, read the catalog, open
//! the content) and then delivered ([`deliver`]: drive the transfers, wait
//! for the client's replies, record what it has seen). Only the session's
//! own sender thread delivers, so a client that is slow or never answers
//! holds back nobody but itself; the pool's workers only prepare.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use dropsync_io::conn::Conn;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use dropsync_core::liveness::Due;
use dropsync_core::meta_server::Catalog;
use dropsync_core::delivery::{client_has_it, judge_queued, resend_after, Delivery as Queued};
use dropsync_core::copies::deliver_as_copy;
use dropsync_core::mux::OpId;
use dropsync_core::sender::Outcome;
use dropsync_core::sending::{Cause, Ended, FileDigest, Prepared, Replied, Sending, Source as SendSource, Transmit};
use dropsync_io::wire::{is_timeout_error, FrameReader, Msg};
use dropsync_proto::name::METADATA_TRANSFER_NAME;
use dropsync_proto::digest::finish;
use dropsync_proto::{md5, Digest, Frame, Md5, StatusCode, ZERO_DIGEST};

use crate::chunk_digests::Digests;
use crate::metrics::Metrics;
use crate::server::Server;
use crate::session::{MetaState, Session};
use crate::streams::{self, End, Offer, Stream};

/// The session cannot be served any more (its connection is gone).
#[derive(Debug)]
pub struct Gone(pub String);

/// Where an outgoing transfer reads its bytes: a committed blob, or the
/// META-DATA text.
enum Source {
    File(File),
    Bytes(Vec<u8>),
}

/// Bytes read per step when a chunk's MD5 is computed from its source: a
/// delivery never holds a whole chunk (1 MiB by default) in memory, so a
/// fan-out to a thousand clients at once costs a thousand of these, not a
/// thousand chunks.
const HASH_PIECE: usize = 64 * 1024;

impl Source {
    /// The MD5 of the `len` bytes at `offset`, read in pieces of
    /// [`HASH_PIECE`] into `scratch`; an error if the source is shorter.
    fn chunk_md5(&self, offset: u64, len: u32, scratch: &mut Vec<u8>) -> io::Result<Digest> {
        match self {
            Source::Bytes(b) => {
                let range = usize::try_from(offset).ok().and_then(|o| b.get(o..o + len as usize));
                range.map(md5).ok_or_else(|| io::Error::other("META-DATA shorter than announced"))
            }
            Source::File(f) => {
                scratch.resize(HASH_PIECE, 0);
                let mut hasher = Md5::default();
                let mut done = 0u64;
                while done < u64::from(len) {
                    let want = (u64::from(len) - done).min(HASH_PIECE as u64) as usize;
                    let n = FileExt::read_at(f, &mut scratch[..want], offset + done)?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "content shorter than its entry"));
                    }
                    hasher.write_all(&scratch[..n])?;
                    done += n as u64;
                }
                Ok(finish(hasher))
            }
        }
    }

    /// Writes the `len` bytes at `offset` to `out`: from a file through the
    /// kernel on a plain connection (sendfile), through the cipher on TLS, with no chunk-sized
    /// buffer here. Fewer bytes than `len` is an error: the frame on the
    /// wire is then broken, and the session with it.
    fn copy_to(&self, offset: u64, len: u32, out: &mut Conn) -> io::Result<()> {
        match self {
            Source::Bytes(b) => {
                let range = usize::try_from(offset).ok().and_then(|o| b.get(o..o + len as usize));
                out.write_all(range.ok_or_else(|| io::Error::other("META-DATA shorter than announced"))?)
            }
            Source::File(f) => {
                let mut file = f;
                file.seek(SeekFrom::Start(offset))?;
                let copied = out.copy_from(&mut file.take(u64::from(len)))?;
                if copied != u64::from(len) {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "content shorter than its entry"));
                }
                Ok(())
            }
        }
    }
}

/// One item of a batch: what to send and what it stands for.
struct Item {
    name: String,
    /// The catalog version being delivered (0 for the META-DATA).
    version: u64,
    /// Where the bytes come from, how many and their MD5 (a committed
    /// blob's was checked when it was uploaded); `None` for a DELETE.
    content: Option<(Source, u64, Digest)>,
    /// The chunk MD5s of the content, kept from its upload
    /// (`chunk_digests`), if they were.
    known: Option<Arc<Digests>>,
    /// [ext] Sent as a COPY of the content from this path (which the
    /// client has), with the content's MD5, instead of its bytes.
    copy: Option<(String, Digest)>,
    /// [ext] An upload still arriving, whose bytes are sent as they are
    /// written (`streams`); its version is the one its commit makes.
    stream: Option<Arc<Stream>>,
}

/// Transfers to one client, prepared and ready to be delivered together
/// (interleaved, [ext] parallel transfers).
pub struct Batch {
    items: Vec<Item>,
    /// The META-DATA transfer rather than queued paths.
    metadata: bool,
}

/// Prepares the next delivery for `session`: the META-DATA if it has not
/// been sent, else up to `--parallel` queued paths (one for a legacy
/// session). `None` when there is nothing to send yet.
pub fn prepare_next(server: &Server, session: &Session) -> Option<Batch> {
    match take_pending_metadata(session) {
        MetaProgress::NotReady => return None,
        MetaProgress::Take(text) => {
            let size = text.len() as u64;
            let digest = md5(text.as_bytes());
            let item = Item {
                name: METADATA_TRANSFER_NAME.into(),
                version: 0,
                content: Some((Source::Bytes(text.into_bytes()), size, digest)),
                copy: None,
                known: None,
                stream: None,
            };
            return Some(Batch { items: vec![item], metadata: true });
        }
        MetaProgress::AlreadySent => {}
    }
    if let Some(offer) = session.take_offer() {
        return Some(prepare_stream(session, offer));
    }
    let mut paths = Vec::new();
    while paths.len() < session.transfers_at_once(server.config.parallel) {
        match session.queue.try_pop() {
            Some(p) => paths.push(p),
            None => break,
        }
    }
    prepare_paths(server, session, paths)
}

/// [ext] A delivery of an upload still arriving (`streams`), alone in its
/// batch. It counts as being sent to the client (the stale-change rule's
/// wait) like any other.
fn prepare_stream(session: &Session, offer: Offer) -> Batch {
    let Offer { stream, file } = offer;
    let name = stream.path().to_owned();
    log::debug!("{}: streaming {name:?} while it is uploaded", session.who());
    session.set_outgoing(std::slice::from_ref(&name));
    let item = Item {
        name,
        version: 0,
        content: Some((Source::File(file), 0, ZERO_DIGEST)),
        known: None,
        copy: None,
        stream: Some(stream),
    };
    Batch { items: vec![item], metadata: false }
}

/// Where the META-DATA transfer stands.
enum MetaProgress {
    /// The snapshot is not taken yet: send nothing.
    NotReady,
    /// Send this text now (section 1: the first transfer of every session).
    Take(String),
    /// It went out earlier; the queue may be served.
    AlreadySent,
}

fn take_pending_metadata(session: &Session) -> MetaProgress {
    let mut state = session.metadata.lock().unwrap_or_else(PoisonError::into_inner);
    match std::mem::replace(&mut *state, MetaState::Sent) {
        MetaState::Pending => {
            *state = MetaState::Pending;
            MetaProgress::NotReady
        }
        MetaState::Ready(text) => MetaProgress::Take(text),
        MetaState::Sent => MetaProgress::AlreadySent,
    }
}

/// Prepares `paths` as they are now: their committed content, or a DELETE
/// for a tombstone; skipped when the client already has that version
/// (unless it asked with REQUEST). They count as being sent to the client
/// (the stale-change rule's wait) until [`deliver`] has recorded them.
pub fn prepare_paths(server: &Server, session: &Session, paths: Vec<String>) -> Option<Batch> {
    if paths.is_empty() {
        return None;
    }
    session.set_outgoing(&paths);
    let lib = &server.library;
    let mut items = Vec::with_capacity(paths.len());
    // Sources whose DELETE went out behind their COPY, ahead of their turn.
    let mut pulled_forward: HashSet<String> = HashSet::new();
    for path in &paths {
        let requested = session.requested.lock().unwrap_or_else(PoisonError::into_inner).remove(path);
        if pulled_forward.contains(path) {
            continue;
        }
        // A blob can vanish between reading the entry and opening it if the
        // path is overwritten meanwhile: then the newer entry is what to send.
        for _ in 0..3 {
            let entry = lib.catalog().get(path);
            let judged = judge_queued(entry.as_ref(), &session.seen.lock().unwrap_or_else(PoisonError::into_inner), requested);
            let Some(entry) = entry else { break };
            match judged {
                Queued::Skip => {
                    log::debug!("{}: skip {path:?} version {}: already has it", session.who(), entry.version);
                    break;
                }
                Queued::Delete { version } => {
                    let item = Item { name: path.clone(), version, content: None, copy: None, known: None, stream: None };
                    items.push(item);
                    break;
                }
                Queued::File { version } => match copy_source(server, session, path, version) {
                    Some(from) => {
                        // Already in the batch (pulled forward or in its turn).
                        let handled = items.iter().any(|i| i.name == from);
                        let source_deleted = if handled { None } else { deleted_source(server, session, &from) };
                        items.push(Item {
                            name: path.clone(),
                            version,
                            content: None,
                            copy: Some((from, entry.md5)),
                            known: None,
                            stream: None,
                        });
                        if let Some(delete) = source_deleted {
                            pulled_forward.insert(delete.name.clone());
                            items.push(delete);
                        }
                        break;
                    }
                    None => match lib.open_content(&entry) {
                        Ok(f) => {
                            let content = Some((Source::File(f), entry.size, entry.md5));
                            let known = entry.strong.and_then(|key| server.chunk_digests.get(&key));
                            items.push(Item { name: path.clone(), version, content, copy: None, known, stream: None });
                            break;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => {
                            log::error!("cannot open content of {path:?}: {e}");
                            break;
                        }
                    },
                },
            }
        }
    }
    if pulled_forward.iter().any(|n| !paths.contains(n)) {
        let names: Vec<String> = items.iter().map(|i| i.name.clone()).collect();
        session.set_outgoing(&names);
    }
    Some(Batch { items, metadata: false })
}

/// [ext] The DELETE of a COPY's source, when the source is deleted now and
/// the client has not been sent that yet: a rename on the sender's side.
/// It goes out right behind the COPY (as it would when dequeued, only
/// sooner), so that the client can rename its file instead of copying it
/// and deleting the source (the client's `incoming_batch`).
fn deleted_source(server: &Server, session: &Session, from: &str) -> Option<Item> {
    let entry = server.library.catalog().get(from)?;
    let seen = session.seen.lock().unwrap_or_else(PoisonError::into_inner);
    match judge_queued(Some(&entry), &seen, false) {
        Queued::Delete { version } => {
            Some(Item { name: from.to_owned(), version, content: None, copy: None, known: None, stream: None })
        }
        Queued::Skip | Queued::File { .. } => None,
    }
}

/// [ext] The path to name in a COPY of `version` of `path` to `session`
/// (`copies::deliver_as_copy`), unless the client refused one of `path`
/// before (it is then sent the file).
fn copy_source(server: &Server, session: &Session, path: &str, version: u64) -> Option<String> {
    let takes_copy = session.takes_copy.load(Ordering::Relaxed)
        && !session.copy_refused.lock().unwrap_or_else(PoisonError::into_inner).contains(path);
    let origin = server.library.copied_from(path, version);
    let seen = session.seen.lock().unwrap_or_else(PoisonError::into_inner);
    deliver_as_copy(origin.as_ref(), &seen, takes_copy).map(str::to_owned)
}

/// Delivers `batch` to `session` (the session's sender thread only: this
/// waits for the client's replies) and records each outcome: a delivered
/// version counts as seen (section 6), a refusal gives the path up for
/// this client.
pub fn deliver(server: &Server, session: &Session, batch: Batch) -> Result<(), Gone> {
    let items: Vec<(String, Kind, bool)> = batch
        .items
        .iter()
        .map(|i| {
            let kind = match (&i.content, &i.copy) {
                (_, Some(_)) => Kind::Copy,
                (None, None) => Kind::Delete,
                (Some(_), None) => Kind::File,
            };
            (i.name.clone(), kind, i.stream.is_some())
        })
        .collect();
    let metadata = batch.metadata;
    let result = run_batch(server, session, batch.items);
    let outcomes = match result {
        Ok(o) => o,
        Err(gone) => {
            session.set_outgoing(&[]);
            return Err(gone);
        }
    };
    if metadata {
        log::debug!("{}: META-DATA sent: {:?}", session.who(), outcomes.first().map(|(o, _)| o));
        return Ok(());
    }
    for ((path, kind, streamed), (outcome, version)) in items.into_iter().zip(outcomes) {
        if streamed && outcome != Outcome::Committed {
            // Aborted (the upload failed or stalled) or refused: the path
            // goes out as usual once committed, queued by the commit like
            // any other change.
            log::debug!("{}: streaming of {path:?} ended {outcome:?}", session.who());
            continue;
        }
        if kind == Kind::Copy && outcome != Outcome::Committed {
            // It could not copy (it changed its copy of the source since,
            // say): the file itself goes out next.
            log::debug!("{}: copy of {path:?} refused ({outcome:?}); sending the file", session.who());
            let mut refused = session.copy_refused.lock().unwrap_or_else(PoisonError::into_inner);
            // Capped like the origins it is about: forgetting costs one
            // more COPY refused, then the file.
            if refused.len() >= dropsync_core::copies::MAX_REMEMBERED {
                refused.clear();
            }
            refused.insert(path.clone());
            drop(refused);
            session.requested.lock().unwrap_or_else(PoisonError::into_inner).insert(path.clone());
            if session.queue.push(&path) || server.config.workers > 0 {
                server.wake(session);
            }
            continue;
        }
        if client_has_it(outcome) {
            let m = &server.metrics;
            Metrics::add(
                match kind {
                    Kind::Delete => &m.deletes_out,
                    Kind::File => &m.files_out,
                    Kind::Copy => &m.copies_out,
                },
                1,
            );
            // Read before the session's lock is taken: no lock is held
            // while the catalog's is waited for.
            let current = server.library.catalog().get(&path);
            let mut seen = session.seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.saw(&path, version);
            log::debug!("{}: delivered {path:?} version {version}", session.who());
            if resend_after(version, current.as_ref(), &seen) {
                drop(seen);
                log::info!(
                    "{}: {path:?} changed by this client while version {version} was on its way; sending it again",
                    session.who()
                );
                session.requested.lock().unwrap_or_else(PoisonError::into_inner).insert(path.clone());
                if session.queue.push(&path) || server.config.workers > 0 {
                    server.wake(session);
                }
            }
        } else {
            // 0x0080 (and any other refusal): give up on this path for
            // this client (ASSIGNMENT.md, section 6).
            log::info!("{}: gave up sending {path:?}: {outcome:?}", session.who());
        }
    }
    session.set_outgoing(&[]);
    Ok(())
}

/// What a delivered item was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    File,
    Delete,
    Copy,
}

/// What the reply reader hands the session's sender, the one thread that
/// writes on the receive connection.
#[derive(Debug)]
pub enum Inbox {
    /// A STATUS reply (keep-alives are not replies).
    Reply(StatusCode),
    /// Bytes arrived at this time: the client is there.
    Heard(Instant),
    /// A message the client should not send on this connection, to be
    /// answered with this STATUS (section 4: every message but STATUS gets
    /// one reply).
    Answer(StatusCode),
    /// [ext] An upload being streamed to the client grew or ended
    /// (`streams`).
    StreamMoved,
}

/// How often a sender waiting for a reply looks at the connection's clocks.
const TICK: Duration = Duration::from_millis(250);

/// Waits for the client's next reply, at most the dead-peer time, sending
/// keep-alives and answering stray messages meanwhile.
fn wait_reply(server: &Server, session: &Session) -> Result<StatusCode, Gone> {
    let inbox = session.replies.lock().unwrap_or_else(PoisonError::into_inner);
    let deadline = Instant::now() + server.config.dead_peer;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Gone(format!("no reply within {:?}", server.config.dead_peer)));
        }
        match inbox.recv_timeout(left.min(TICK)) {
            Ok(Inbox::Reply(code)) => {
                session.note_progress();
                return Ok(code);
            }
            Ok(other) => take_in(session, other)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(Gone("receive connection closed".into())),
        }
        keep_alive(session)?;
    }
}

/// Between deliveries: answers what the client sent on the receive
/// connection and keeps its clocks (section 9). A reply with no message
/// waiting for it breaks the protocol.
pub fn tend(session: &Session) -> Result<(), Gone> {
    if session.queue.is_empty() {
        // Nothing to send: this client is not waiting for anything.
        session.note_progress();
    }
    {
        let inbox = session.replies.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match inbox.try_recv() {
                Ok(Inbox::Reply(code)) => {
                    return Err(Gone(format!("STATUS {code} arrived with no message waiting for a reply")))
                }
                Ok(other) => take_in(session, other)?,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Err(Gone("receive connection closed".into())),
            }
        }
    }
    keep_alive(session)
}

fn take_in(session: &Session, what: Inbox) -> Result<(), Gone> {
    match what {
        Inbox::Heard(at) => session.link().on_received(at),
        Inbox::Answer(code) => {
            session.write_out(&Frame::Status(code).to_vec(), false).map_err(|e| Gone(format!("receive connection: {e}")))?
        }
        Inbox::StreamMoved => session.stream_heard(),
        Inbox::Reply(_) => {}
    }
    Ok(())
}

/// Section 9 on the receive connection: a keep-alive when one is due; the
/// client gone when silent too long (a legacy one only when a reply is
/// overdue, section 1).
fn keep_alive(session: &Session) -> Result<(), Gone> {
    let due = session.link().poll(Instant::now());
    match due {
        Due::Nothing => Ok(()),
        Due::PeerGone(gone) => Err(Gone(gone.to_string())),
        Due::KeepAlive => session
            .write_out(&Frame::Status(StatusCode::KEEP_ALIVE).to_vec(), false)
            .map_err(|e| Gone(format!("receive connection: {e}"))),
    }
}

/// Drives `items` through the core multiplexer: each transfer stop-and-wait
/// on its own, chunks of different transfers interleaved, replies matched
/// in order. On shutdown every transfer in progress is ABORTed (section 9).
/// Returns each item's outcome and the version it delivered (a streamed
/// upload's: the one its commit made), in the items' order.
fn run_batch(server: &Server, session: &Session, items: Vec<Item>) -> Result<Vec<(Outcome, u64)>, Gone> {
    server.active_transfers.fetch_add(1, Ordering::SeqCst);
    let open = items.len() as i64;
    server.metrics.deliveries_open.fetch_add(open, Ordering::Relaxed);
    let result = drive(server, session, items);
    server.metrics.deliveries_open.fetch_sub(open, Ordering::Relaxed);
    // Every reply is in (or the session is over): none is awaited now.
    session.link().set_awaiting(Instant::now(), false);
    server.active_transfers.fetch_sub(1, Ordering::SeqCst);
    result
}

/// What a delivery keeps per transfer: its item's place in the batch, its
/// content, and the MD5 of its next chunk computed ahead of its turn.
struct Delivery {
    index: usize,
    /// The source, its size and whole-file MD5; `None` for a DELETE.
    content: Option<(Source, u64, Digest)>,
    prefetched: Option<(u64, u32, Digest)>,
    /// The chunk MD5s kept from the content's upload.
    known: Option<Arc<Digests>>,
    /// [ext] The upload it follows, for a streamed delivery.
    follows: Option<Follows>,
}

/// What a streamed delivery knows of the upload it follows.
struct Follows {
    stream: Arc<Stream>,
    /// Since when it has had nothing to send (all the whole chunks written
    /// are sent), waiting for its upload; `None` while it sends.
    idle_since: Option<Instant>,
    /// How long it waited for its upload while other work waited for this
    /// client, in all.
    held_others: Duration,
    /// Since when its complete upload is being committed.
    finishing_since: Option<Instant>,
}

impl Follows {
    fn new(stream: Arc<Stream>) -> Self {
        Follows { stream, idle_since: None, held_others: Duration::ZERO, finishing_since: None }
    }

    /// Whether to give up on the upload now (see [`follow_streams`]).
    fn gives_up(&mut self, progress: &streams::Progress, now: Instant) -> bool {
        if progress.end.is_some() {
            return false;
        }
        if progress.finishing {
            // Counted only while it has nothing to send: a slow client
            // still taking the chunks written is not kept waiting.
            let since = *self.finishing_since.get_or_insert(now);
            return self.idle_since.is_some_and(|idle| now.duration_since(idle.max(since)) >= streams::COMMIT_WAIT);
        }
        self.idle_since.is_some_and(|t| now.duration_since(t) >= streams::STALL) || self.held_others >= streams::STALL
    }
}

impl Delivery {
    /// The MD5 of the chunk at `offset` kept from the upload, if it was
    /// (for a streamed one: checked as it arrived).
    fn known(&self, offset: u64, len: u32) -> Option<Digest> {
        if let Some(f) = &self.follows {
            return f.stream.chunk_digest(offset, len);
        }
        self.known.as_ref()?.of(offset, len)
    }

    /// Hashes the chunk at `offset` ahead of its turn (unless its MD5 is
    /// known).
    fn prefetch(&mut self, offset: u64, len: u32, scratch: &mut Vec<u8>) {
        if self.known(offset, len).is_some() {
            return;
        }
        if let Some((src, _, _)) = &self.content {
            if let Ok(digest) = src.chunk_md5(offset, len, scratch) {
                self.prefetched = Some((offset, len, digest));
            }
        }
    }
}

/// Chunks of stored contents: their MD5 computed here, in pieces, and
/// their bytes streamed by the driver from the source to the socket.
struct Chunks {
    scratch: Vec<u8>,
}

impl SendSource<Delivery> for Chunks {
    fn prepare(&mut self, _id: OpId, _name: &str, d: &mut Delivery, offset: u64, len: u32) -> io::Result<Prepared<'_>> {
        let Some((src, size, file_digest)) = &d.content else {
            // A chunk of a DELETE cannot be asked for.
            return Err(io::Error::other("a chunk of a DELETE"));
        };
        let prefetched = d.prefetched.take();
        let digest = match (d.known(offset, len), prefetched) {
            // Checked when the content was uploaded, in chunks of this size.
            (Some(known), _) => known,
            (None, Some((o, l, digest))) if o == offset && l == len => digest,
            // One chunk is the whole file: its MD5 is the file's.
            _ if offset == 0 && u64::from(len) == *size => *file_digest,
            _ => src.chunk_md5(offset, len, &mut self.scratch)?,
        };
        Ok(Prepared { payload: None, len, digest, file_digest: None })
    }
}

fn drive(server: &Server, session: &Session, items: Vec<Item>) -> Result<Vec<(Outcome, u64)>, Gone> {
    let mut sending = Sending::new(items.len().max(1));
    let mut versions: Vec<u64> = items.iter().map(|i| i.version).collect();
    // The streamed transfers still following their uploads.
    let mut streaming: Vec<OpId> = Vec::new();
    let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
    // Each transfer with its source and whole-file MD5 (known for every
    // file: a blob's was checked when it was uploaded, the META-DATA's is
    // computed when it is prepared), so chunks go out by length and MD5 and
    // their bytes are streamed from the source.
    for (index, item) in items.into_iter().enumerate() {
        if let Some((from, digest)) = item.copy {
            let d = Delivery { index, content: None, prefetched: None, known: None, follows: None };
            sending.add_copy(from, item.name, digest, d);
            continue;
        }
        if let Some(stream) = item.stream {
            let follows = Some(Follows::new(stream));
            let d = Delivery { index, content: item.content, prefetched: None, known: None, follows };
            streaming.push(sending.add_stream(item.name, server.config.chunk_size, d));
            continue;
        }
        match item.content {
            Some((src, size, digest)) => {
                let d = Delivery {
                    index,
                    content: Some((src, size, digest)),
                    prefetched: None,
                    known: item.known,
                    follows: None,
                };
                sending.add_upload(item.name, size, server.config.chunk_size, FileDigest::Known(digest), d);
            }
            None => {
                let d = Delivery { index, content: None, prefetched: None, known: None, follows: None };
                sending.add_delete(item.name, ZERO_DIGEST, d);
            }
        }
    }
    let mut chunks = Chunks { scratch: Vec::new() };
    let mut frame = Vec::new();
    let mut aborting = false;
    let record = |ended: Ended<Delivery>, outcomes: &mut Vec<Option<Outcome>>| {
        if let Cause::Unreadable(e) = &ended.cause {
            log::error!("{:?}: cannot read its content: {e}", ended.name);
        }
        if let Some(f) = &ended.op.follows {
            // Ended by the client's reply, or aborted: it follows no more.
            f.stream.unwatch(session.id);
        }
        outcomes[ended.op.index] = Some(ended.outcome);
    };
    while !sending.is_empty() {
        if server.is_shutting_down() && !aborting {
            aborting = true;
            sending.abort_all();
        }
        follow_streams(session, &mut sending, &mut streaming, &mut versions);
        for (name, committed) in std::mem::take(&mut *session.overtaken.lock().unwrap_or_else(PoisonError::into_inner)) {
            for id in sending.ids_named(&name) {
                if sending.op(id).is_some_and(|(_, d)| versions.get(d.index).is_some_and(|v| *v < committed)) {
                    log::debug!("{}: aborting the delivery of {name:?}: the client's own change overtook it", session.who());
                    sending.abort(id);
                }
            }
        }
        while let Some(Transmit::Chunk { id, offset, len }) = sending.poll_transmit(&mut chunks) {
            frame.clear();
            sending.take_frames(&mut frame);
            let Some(Delivery { content: Some((src, _, _)), .. }) = sending.op_mut(id) else { continue };
            session
                .write_streamed(&frame, |out| src.copy_to(offset, len, out))
                .map_err(|e| Gone(format!("receive connection: {e}")))?;
            Metrics::add(&server.metrics.bytes_out, u64::from(len));
            // While the client checks this chunk, hash the next one, so the
            // two MD5 passes run side by side (of a streamed upload: only a
            // whole chunk, which is what it sends before the end).
            let next = sending.next_range(id, offset + u64::from(len), server.config.chunk_size);
            if let Some(d) = sending.op_mut(id) {
                if let Some(f) = d.follows.as_mut() {
                    f.idle_since = None;
                }
                match next {
                    Some((_, n)) if d.follows.is_some() && n < server.config.chunk_size => {}
                    Some((next, n)) => d.prefetch(next, n, &mut chunks.scratch),
                    None => {}
                }
            }
        }
        frame.clear();
        sending.take_frames(&mut frame);
        if !frame.is_empty() {
            session.write_out(&frame, true).map_err(|e| Gone(format!("receive connection: {e}")))?;
        }
        while let Some(ended) = sending.poll_ended() {
            record(ended, &mut outcomes);
        }
        if sending.is_idle() {
            if streaming.is_empty() {
                // Nothing awaits a reply and nothing more could be sent: all over.
                break;
            }
            // A streamed transfer has sent all its upload has written.
            let began = Instant::now();
            wait_stream(session)?;
            let others_wait = !session.queue.is_empty() || session.metadata_ready() || session.has_offers();
            for id in &streaming {
                if let Some(f) = sending.op_mut(*id).and_then(|d| d.follows.as_mut()) {
                    f.idle_since.get_or_insert(began);
                    if others_wait {
                        f.held_others += began.elapsed();
                    }
                }
            }
            continue;
        }
        let reply = wait_reply(server, session)?;
        match sending.handle_reply(reply) {
            Ok(Replied::Ended(ended)) => record(ended, &mut outcomes),
            Ok(_) => {}
            Err(e) => return Err(Gone(e.to_string())),
        }
    }
    Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Aborted)).zip(versions).collect())
}

/// [ext] Gives each streamed transfer what its upload wrote since, and its
/// end: the size and MD5 of the version committed (its last chunk and
/// FINISHED may go out), or an ABORT for an upload that failed. A
/// transfer that has had nothing to send for [`streams::STALL`] (its upload
/// wrote no whole chunk more), or has waited for its upload that long in
/// all while other work waited for this client, or whose complete upload
/// takes [`streams::COMMIT_WAIT`] to commit, is given up (ABORT): the
/// upload's commit queues the path as usual, so a slow uploader holds back
/// no other client for longer than that.
fn follow_streams(session: &Session, sending: &mut Sending<Delivery>, streaming: &mut Vec<OpId>, versions: &mut [u64]) {
    let now = Instant::now();
    streaming.retain(|&id| {
        let Some(d) = sending.op_mut(id) else { return false };
        let index = d.index;
        let Some(f) = d.follows.as_mut() else { return false };
        let progress = f.stream.progress();
        let stalled = f.gives_up(&progress, now);
        sending.grow(id, progress.written);
        // An op that stops following here ends later (its FINISHED or
        // ABORT answered), and leaves the stream's watchers then.
        match progress.end {
            None if stalled => {
                let name = sending.op(id).map(|(name, _)| name.to_owned()).unwrap_or_default();
                let who = session.who();
                log::info!("{who}: streaming {name:?}: the upload keeps it waiting; it goes out once committed");
                sending.abort(id);
                false
            }
            None => true,
            Some(End::Committed { version, size, md5 }) => {
                if let Some(v) = versions.get_mut(index) {
                    *v = version;
                }
                if !sending.complete(id, size, md5) {
                    sending.abort(id);
                }
                false
            }
            Some(End::Failed) => {
                sending.abort(id);
                false
            }
        }
    });
}

/// Waits (at most [`TICK`]) for a streamed upload to move while nothing
/// awaits a reply, keeping the connection's clocks; a reply now is out of
/// step.
fn wait_stream(session: &Session) -> Result<(), Gone> {
    {
        let inbox = session.replies.lock().unwrap_or_else(PoisonError::into_inner);
        match inbox.recv_timeout(TICK) {
            Ok(Inbox::Reply(code)) => {
                return Err(Gone(format!("STATUS {code} arrived with no message waiting for a reply")))
            }
            Ok(other) => take_in(session, other)?,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Err(Gone("receive connection closed".into())),
        }
    }
    keep_alive(session)
}

/// Reads the receive connection and hands what it reads to the session's
/// sender ([`Inbox`]), which is the only one to write on it: replies, signs
/// of life, and stray messages to answer. Ends the session when the
/// connection closes.
pub fn read_replies(server: &Arc<Server>, session: &Arc<Session>, mut reader: FrameReader<Conn>, tx: mpsc::Sender<Inbox>) {
    let mut last_total = 0;
    let why = loop {
        if session.is_closed() {
            break "session closed".to_string();
        }
        let msg = reader.read_msg();
        // Any byte is a sign of life, a whole message or not.
        if reader.total_read() != last_total {
            last_total = reader.total_read();
            if tx.send(Inbox::Heard(Instant::now())).is_err() {
                break "sender gone".into();
            }
        }
        let handed = match msg {
            Ok(Some(Msg::Status(StatusCode::KEEP_ALIVE))) => Ok(()),
            Ok(Some(Msg::Status(code))) => tx.send(Inbox::Reply(code)),
            // Transfers flow server → client here; anything else the client
            // sends on this connection is still answered (section 4: every
            // message but STATUS gets one reply), with 0x0100, or OK for a
            // repeated HELLO.
            Ok(Some(other)) => {
                let code = match &other {
                    Msg::Hello { .. } => StatusCode::OK,
                    _ => StatusCode::BAD_REQUEST,
                };
                if let Msg::Chunk { len, .. } = &other {
                    if let Err(e) = reader.skip(u64::from(*len)) {
                        if !is_timeout_error(&e) {
                            break format!("receive connection: {e}");
                        }
                    }
                }
                log::warn!("{}: {other:?} on the receive connection; answered {code}", session.who());
                tx.send(Inbox::Answer(code))
            }
            Ok(None) => break "client closed the receive connection".into(),
            Err(e) if is_timeout_error(&e) => Ok(()),
            Err(e) => break format!("receive connection: {e}"),
        };
        if handed.is_err() {
            break "sender gone".into();
        }
    };
    drop(tx);
    server.end_session(session, &why);
}
