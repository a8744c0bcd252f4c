//! A session's send connection: uploads, DELETE and REQUEST from the
//! client. Every rule of the connection (replies in order, transfers,
//! limits, idle aborts, keep-alive, dead peer, the stale-change rule's
//! bounded wait) is core's [`Receiving`] machine; this file is its driver
//! (read, feed, process, write) and its [`Host`]: the lock table, the temp
//! files and the commits of the server's library (PROTOCOL.md section 6).

use std::io::Write;
use dropsync_io::conn::Conn;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use dropsync_core::library::{Committed, Pending};
use dropsync_core::locks::{try_lock_owned, OwnedLockGuard, SessionId};
use dropsync_core::open_transfers::Limits;
use dropsync_core::path_rules::PathConflict;
use dropsync_core::receiving::{Assembled, Config, Ended, Event, Host, Payload, Receiving, Reply, Step};
use dropsync_io::wire::{feed, Fed, FrameReader, Msg};
use dropsync_proto::index::{IndexRequest, Listing};
use dropsync_proto::{Digest, StatusCode};

use crate::library;
use crate::metrics::{Change, Metrics};
use crate::server::Server;
use crate::session::Session;
use crate::blobs::TempBlob;
use crate::chunk_digests::ChunkList;
use crate::sink::{Sink, SinkThreads, THREADED_MIN_CHUNK};
use crate::streams::{self, Stream};

/// Why the loop ended (for the disconnect log line).
type End = String;

/// Names of uploads aborted for idleness remembered per connection (see
/// `open_transfers::Limits::remember_expired`).
const MAX_EXPIRED_REMEMBERED: usize = 256;

/// Group commit: the changes of one connection that arrive while more of
/// its bytes are waiting are committed together, at most this many (a
/// peer that sends more changes without reading its replies holds no more
/// locks and temp files than that)...
const MAX_BATCH: usize = 256;
/// ...and the first of them waits at most this long for the others.
const MAX_BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
/// A batch committed quicker than this says waiting for more gains
/// nothing.
const CHEAP_COMMIT: std::time::Duration = std::time::Duration::from_micros(300);

static READ_ONLY: crate::quiet_log::QuietLog = crate::quiet_log::QuietLog::new();
static PATH_CONFLICTS: crate::quiet_log::QuietLog = crate::quiet_log::QuietLog::new();

/// What the server keeps for one upload in progress.
pub struct Upload {
    sink: Sink,
    /// Held for the whole transfer; dropping the upload releases it.
    lock: OwnedLockGuard,
    /// Counts the upload as open until it is dropped, however it ends.
    _open: OpenUpload,
    /// Its chunks' digests, kept for its deliveries once it is committed.
    chunks: ChunkList,
    /// [ext] What its streaming deliveries follow (a large upload's).
    stream: Option<Streamed>,
}

/// An upload that other clients may be sent while it arrives (`streams`).
struct Streamed {
    guard: streams::Guard,
    /// The temp file, for the deliveries to open.
    temp: std::path::PathBuf,
    /// Bytes accepted so far (offered once they reach `OFFER_AFTER`).
    accepted: u64,
}

/// One count in `Metrics::uploads_open` (and so in the locks held by
/// uploads), given back on drop so that no way out of a transfer leaks it.
struct OpenUpload(Arc<Server>);

impl OpenUpload {
    fn new(server: &Arc<Server>) -> Self {
        server.metrics.uploads_open.fetch_add(1, Ordering::Relaxed);
        Self(server.clone())
    }
}

impl Drop for OpenUpload {
    fn drop(&mut self) {
        self.0.metrics.uploads_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Work that follows a reply on the wire (section 6: the reply first, then
/// the update queues).
enum AfterReply {
    /// A committed change of `path`: queue it for every client but `except`.
    FanOut { path: String, except: Option<SessionId> },
    /// An accepted REQUEST: queue the path for this client.
    Queue(String),
}

/// The server's side of the machine's [`Host`] calls.
struct Uploads<'a> {
    server: &'a Arc<Server>,
    session: &'a Arc<Session>,
    /// This connection's sink threads (at most
    /// `sink::MAX_THREADS_PER_CONNECTION`).
    sink_threads: SinkThreads,
    /// What follows the replies handled so far.
    after_reply: Vec<AfterReply>,
    /// Changes answered [`Reply::Later`], for the next group commit.
    batch: Vec<Job>,
    /// The replies of the changes committed, for the machine.
    resolved: Vec<(u64, StatusCode)>,
    /// How long the last batch took to commit.
    last_commit_took: std::time::Duration,
    /// The next ticket to hand out.
    next_ticket: u64,
}

/// A change waiting for its group commit, with what it holds until then:
/// its path's lock, and an upload's count as open.
struct Job {
    ticket: u64,
    change: Pending<TempBlob>,
    lock: OwnedLockGuard,
    _open: Option<OpenUpload>,
    /// When its last message arrived.
    started: Instant,
    /// [ext] An upload's stream, ended with its commit.
    stream: Option<streams::Guard>,
}

/// What a change of a group commit was, for its reply and log line once
/// the change itself went to the library.
enum Done {
    Upload { path: String, size: u64 },
    Delete { path: String },
    Copy { path: String, from: String },
}

impl Done {
    fn of(change: &Pending<TempBlob>) -> Self {
        match change {
            Pending::Upload { path, size, .. } => Done::Upload { path: path.clone(), size: *size },
            Pending::Delete { path } => Done::Delete { path: path.clone() },
            Pending::Copy { path, from, .. } => Done::Copy { path: path.clone(), from: from.clone() },
        }
    }

    fn path(&self) -> &str {
        match self {
            Done::Upload { path, .. } | Done::Delete { path } | Done::Copy { path, .. } => path,
        }
    }
}

/// Serves the send connection until it closes, then ends the session.
pub fn run(
    server: &Arc<Server>,
    session: &Arc<Session>,
    reader: FrameReader<Conn>,
    out: Conn,
    first: Option<Msg>,
) {
    let config = Config {
        max_chunk: server.config.max_chunk,
        max_name_len: server.config.max_name_len,
        metadata_name: false,
        limits: Limits {
            max_open: server.config.max_transfers,
            idle: server.config.dead_peer,
            remember_expired: MAX_EXPIRED_REMEMBERED,
        },
        timers: server.config.timers(),
        silence: session.silence(),
    };
    let (input, decoder) = reader.into_parts();
    let now = Instant::now();
    let mut conn = Receiving::with_decoder(config, now, decoder);
    let mut host = Uploads {
        server,
        session,
        sink_threads: SinkThreads::default(),
        after_reply: Vec::new(),
        batch: Vec::new(),
        resolved: Vec::new(),
        last_commit_took: std::time::Duration::ZERO,
        next_ticket: 0,
    };
    if let Some(msg) = first {
        conn.handle_msg(now, msg, &mut host);
    }
    let mut driver = Driver { input, out, wbuf: Vec::with_capacity(64) };
    let why = driver.serve(&mut conn, &mut host);
    // What was received whole is committed, and the replies still go out
    // (a commit's OK above all).
    host.commit_batch(&mut conn);
    let _ = driver.flush(&mut conn, &mut host);
    // Dropping the open uploads removes their temp files and releases locks.
    let partial = conn.close(&mut host);
    let why = if partial > 0 { format!("{why}; {partial} partial upload(s) dropped") } else { why };
    server.end_session(session, &why);
}

/// The socket's owner: reads into the machine, writes what it sends.
struct Driver {
    input: Conn,
    out: Conn,
    wbuf: Vec<u8>,
}

impl Driver {
    fn serve(&mut self, conn: &mut Receiving<Upload>, host: &mut Uploads<'_>) -> End {
        loop {
            if host.session.is_closed() {
                return "session closed".into();
            }
            if host.server.is_shutting_down() {
                return "server shutting down".into();
            }
            let step = conn.process(Instant::now(), host);
            log_events(conn, host.session);
            match step {
                Ok(Step::NeedInput) => {
                    if host.batch_due(self.input.input_ready()) {
                        host.commit_batch(conn);
                    }
                }
                // Section 6: the replies so far go out first, since the
                // client may be waiting for them; then at most 1 s for the
                // delivery of `name` to be answered.
                Ok(Step::Settle { name, until }) => {
                    host.commit_batch(conn);
                    if let Err(end) = self.flush(conn, host) {
                        return end;
                    }
                    host.session.wait_outgoing_settled(&name, until.saturating_duration_since(Instant::now()));
                    continue;
                }
                Ok(Step::Paused) => {
                    host.commit_batch(conn);
                    continue;
                }
                Err(closed) => return closed.to_string(),
            }
            // Replies to messages that arrived together go out together
            // (many small files: one write, one wake-up of the client).
            if let Err(end) = self.flush(conn, host) {
                return end;
            }
            match feed(&mut self.input, conn) {
                Ok(Fed::Bytes) => {}
                Ok(Fed::Closed { mid_message: false }) => return "client closed the send connection".into(),
                Ok(Fed::Closed { mid_message: true }) => {
                    return "client closed the send connection in the middle of a message".into()
                }
                Ok(Fed::TimedOut) => {
                    if let Err(closed) = conn.handle_timeout(Instant::now(), host) {
                        return closed.to_string();
                    }
                }
                Err(e) => return format!("send connection: {e}"),
            }
        }
    }

    /// Sends the queued replies, then does what waited for them: a
    /// committed change reaches the other clients even if this one is
    /// gone.
    fn flush(&mut self, conn: &mut Receiving<Upload>, host: &mut Uploads<'_>) -> Result<(), End> {
        let mut sent = Ok(());
        if conn.poll_transmit(Instant::now(), &mut self.wbuf) {
            count_replies(&self.wbuf, &host.server.metrics);
            sent = self.out.write_all(&self.wbuf).map_err(|e| format!("send connection: {e}"));
            self.wbuf.clear();
        }
        host.after_reply();
        sent
    }
}

/// Counts the refusals among the replies about to go out (`wbuf` holds
/// whole STATUS frames only, replies and keep-alives).
fn count_replies(wbuf: &[u8], metrics: &Metrics) {
    let mut rest = wbuf;
    while let Ok(Some((frame, used))) = dropsync_proto::parse(rest) {
        if let dropsync_proto::Frame::Status(code) = frame {
            metrics.replied(code);
        }
        rest = rest.get(used..).unwrap_or_default();
        if used == 0 {
            break;
        }
    }
}

fn log_events(conn: &mut Receiving<Upload>, session: &Session) {
    while let Some(event) = conn.poll_event() {
        let who = session.who();
        match event {
            Event::LimitReached { max_open } => {
                log::warn!("{who}: {max_open} transfers open on one connection; refusing more with 0x0080")
            }
            Event::LateMessage { name } => {
                log::info!("{who}: {name:?}: a message of an upload aborted for idleness, refused")
            }
            Event::BadName { name } => log::debug!("{who}: refused the name {name:?}"),
            Event::Rejected(e) => log::warn!("{who}: rejected a message: {e}"),
            Event::Unexpected { kind, name } => {
                log::warn!("{who}: unexpected {kind:?} for {name:?}")
            }
            Event::StrayStatus(code) => log::debug!("{who}: ignoring unsolicited STATUS {code}"),
        }
    }
}

impl Uploads<'_> {
    fn after_reply(&mut self) {
        for after in std::mem::take(&mut self.after_reply) {
            match after {
                AfterReply::FanOut { path, except } => self.server.fan_out(&path, except),
                AfterReply::Queue(name) => {
                    self.session
                        .requested
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(name.clone());
                    if self.session.queue.push(&name) || self.server.config.workers > 0 {
                        self.server.wake(self.session);
                    }
                }
            }
        }
    }

    /// Remembers a committed change for the status page.
    fn changed(&self, name: &str, version: u64, deleted: bool) {
        self.server.metrics.changed(Change {
            at_ns: crate::clock::now_ns(),
            path: name.to_owned(),
            version,
            client: self.session.display_label(),
            deleted,
        });
    }

    /// A committed change of `name` (and of its `conflict` copy, if one was
    /// kept) is queued for the other clients once the reply is on the wire.
    fn fan_out_after_reply(&mut self, conflict: Option<String>, name: &str, version: u64) -> StatusCode {
        if let Some(c) = conflict {
            log::info!("{name}: overwrites a version its sender never saw; kept as {c:?}");
            self.after_reply.push(AfterReply::FanOut { path: c, except: None });
        }
        self.after_reply.push(AfterReply::FanOut { path: name.to_owned(), except: Some(self.session.id) });
        if self.session.has_outgoing(name) {
            // Our version of `name` is older than the client's own, just
            // committed: the sender aborts it (`resend_after` covers one
            // whose last message is already out).
            self.session.overtaken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((name.to_owned(), version));
        }
        StatusCode::OK
    }
}

impl Uploads<'_> {
    /// Queues `job` for the next group commit; its reply waits for it.
    fn defer(&mut self, mut job: Job) -> Reply {
        job.ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let ticket = job.ticket;
        self.batch.push(job);
        if self.batch.len() >= MAX_BATCH {
            self.commit_now();
        }
        Reply::Later(ticket)
    }

    /// Whether the changes waiting are committed now: when no more of the
    /// client's bytes are on their way (`more_coming` false), when the
    /// first has waited [`MAX_BATCH_WAIT`], or at once when commits cost
    /// next to nothing (a RAM disk: waiting would only hold the replies).
    fn batch_due(&self, more_coming: bool) -> bool {
        let Some(first) = self.batch.first() else { return false };
        !more_coming || self.last_commit_took < CHEAP_COMMIT || first.started.elapsed() >= MAX_BATCH_WAIT
    }

    /// Commits the changes waiting ([`commit_now`](Self::commit_now)) and
    /// gives `conn` the replies of every change committed so far.
    fn commit_batch(&mut self, conn: &mut Receiving<Upload>) {
        self.commit_now();
        for (ticket, reply) in self.resolved.drain(..) {
            conn.resolve(ticket, reply);
        }
    }

    /// Group commit of the changes waiting: each upload's data made
    /// durable (side by side in the file system's journal), then all of
    /// them committed by the library with one durable write; then, change
    /// by change, its lock released, its reply kept for
    /// [`commit_batch`](Self::commit_batch) and its fan-out queued for
    /// after the reply.
    fn commit_now(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let began = Instant::now();
        let mut jobs = std::mem::take(&mut self.batch);
        let mut temps: Vec<&mut TempBlob> = jobs
            .iter_mut()
            .filter_map(|j| match &mut j.change {
                Pending::Upload { temp, .. } => Some(temp),
                _ => None,
            })
            .collect();
        let mut synced = TempBlob::make_all_durable(&mut temps).into_iter();
        let mut held = Vec::with_capacity(jobs.len());
        let mut changes = Vec::with_capacity(jobs.len());
        for job in jobs {
            let Job { ticket, change, lock, _open, started, stream } = job;
            if let Pending::Upload { path, .. } = &change {
                if let Some(Err(e)) = synced.next() {
                    log::error!("{}: cannot write {path:?}: {e}", self.session.who());
                    self.resolved.push((ticket, StatusCode::IN_USE));
                    continue;
                }
            }
            let what = Done::of(&change);
            held.push((ticket, what, lock, _open, started, stream));
            changes.push(change);
        }
        let lib = &self.server.library;
        let outcomes = lib.commit_batch(changes, &self.session.seen, &self.session.label, library::now());
        self.last_commit_took = began.elapsed();
        for ((ticket, what, lock, _open, started, stream), outcome) in held.into_iter().zip(outcomes) {
            // Released before the reply, so a client that hears OK can
            // start its next change of the file at once.
            drop(lock);
            // Its streaming deliveries finish with the version committed,
            // now durable (or ABORT as the guard drops: unchanged, failed).
            if let (Some(stream), Ok(Committed::New { entry, .. })) = (&stream, &outcome) {
                stream.0.end(streams::End::Committed { version: entry.version, size: entry.size, md5: entry.md5 });
            }
            drop(stream);
            let reply = self.after_commit(what, outcome, started);
            self.resolved.push((ticket, reply));
        }
    }

    /// The reply to a change of a group commit, its metrics, log line and
    /// fan-out.
    fn after_commit(&mut self, what: Done, outcome: Result<Committed, dropsync_core::CoreError>, started: Instant) -> StatusCode {
        let metrics = &self.server.metrics;
        let who = self.session.who();
        match (what, outcome) {
            (Done::Upload { path, size }, Ok(committed)) => {
                metrics.commit_took(started.elapsed());
                Metrics::add(&metrics.files_in, 1);
                let Committed::New { entry, conflict } = committed else {
                    log::debug!("{who}: {path:?} unchanged");
                    return StatusCode::OK;
                };
                Metrics::add(&metrics.commits, 1);
                self.changed(&path, entry.version, false);
                log::info!("{who}: committed {path:?} version {} ({size} bytes)", entry.version);
                self.fan_out_after_reply(conflict, &path, entry.version)
            }
            (Done::Delete { path }, Ok(Committed::New { entry, conflict })) => {
                Metrics::add(&metrics.deletes_in, 1);
                self.changed(&path, entry.version, true);
                log::info!("{who}: deleted {path:?} (version {})", entry.version);
                self.fan_out_after_reply(conflict, &path, entry.version)
            }
            (Done::Delete { .. }, Ok(_)) => StatusCode::NO_FILE,
            (Done::Copy { path, from }, Ok(Committed::New { entry, conflict })) => {
                Metrics::add(&metrics.commits, 1);
                Metrics::add(&metrics.copies_in, 1);
                self.changed(&path, entry.version, false);
                log::info!(
                    "{who}: committed {path:?} version {} as a copy of {from:?} ({} bytes not sent)",
                    entry.version,
                    entry.size
                );
                self.fan_out_after_reply(conflict, &path, entry.version)
            }
            (Done::Copy { path, from }, Ok(Committed::NoFile)) => {
                log::debug!("{who}: copy of {from:?} to {path:?}: not the version it names");
                StatusCode::NO_FILE
            }
            // Unchanged: the path holds that content already.
            (Done::Copy { .. }, Ok(_)) => StatusCode::OK,
            (what, Err(e)) => {
                log::error!("{who}: cannot commit {:?}: {e}", what.path());
                StatusCode::IN_USE
            }
        }
    }

    /// An upload of a new file that a live file is in the way of
    /// (`path_rules`): a file where a folder of it would be, or a folder of
    /// live files where it would be, gets 0x0080, try again later (a swap
    /// between a folder and a file sends its deletes too, which clear the
    /// way); a case twin of a live file gets 0x0100, as a name no
    /// case-insensitive client can write.
    fn clear_way(&self, name: &str) -> Result<(), StatusCode> {
        let Some(conflict) = self.server.library.path_conflict(name, self.server.config.refuse_case_twins) else {
            return Ok(());
        };
        let (code, why) = match &conflict {
            PathConflict::FileAbove(p) => (StatusCode::IN_USE, format!("the file {p:?} is where a folder of it would be")),
            PathConflict::FilesBelow(p) => (StatusCode::IN_USE, format!("it is a folder of {p:?}")),
            PathConflict::CaseTwin(p) => (StatusCode::BAD_REQUEST, format!("it differs from {p:?} in letter case alone")),
        };
        if let Some(n) = PATH_CONFLICTS.allow(Instant::now()) {
            log::info!("{}: {name:?} refused ({code}): {why}{}", self.session.who(), crate::quiet_log::more(n));
        }
        Err(code)
    }

    /// The first message of an upload (or a COPY): the refusals it may get
    /// (read-only, what stands in the way), then the path's lock, taken
    /// without waiting (0x0040).
    fn admit_change(&self, name: &str) -> Result<OwnedLockGuard, StatusCode> {
        self.may_change(name)?;
        self.clear_way(name)?;
        try_lock_owned(self.server.library.locks(), name, self.session.id).ok_or_else(|| {
            log::info!("{}: {name:?} is locked by another transfer", self.session.who());
            StatusCode::LOCKED
        })
    }

    /// A read-only client's upload or delete is refused before it takes a
    /// lock or a temp file (core's `Access::refuses_change`).
    fn may_change(&self, name: &str) -> Result<(), StatusCode> {
        match self.session.access.refuses_change() {
            None => Ok(()),
            Some(code) => {
                if let Some(n) = READ_ONLY.allow(Instant::now()) {
                    log::info!("{}: {name:?} not changed: read-only client{}", self.session.who(), crate::quiet_log::more(n));
                }
                Err(code)
            }
        }
    }
}

impl Host for Uploads<'_> {
    type Transfer = Upload;

    fn open(&mut self, name: &str, first_len: u32) -> Result<Upload, StatusCode> {
        let lock = self.admit_change(name)?;
        let temp = self.server.library.temp().map_err(|e| {
            log::error!("cannot create a temp file: {e}");
            StatusCode::IN_USE
        })?;
        // Only an upload in large chunks, written by a thread of its own,
        // tells a stream what it wrote.
        let temp_path = temp.path().to_owned();
        let stream = (self.server.config.streaming && first_len >= THREADED_MIN_CHUNK)
            .then(|| Stream::new(name, self.session.id));
        let sink = Sink::open(temp, first_len, &self.sink_threads, stream.clone());
        let stream = stream.filter(|_| sink.is_threaded()).map(|s| Streamed {
            guard: streams::Guard(s),
            temp: temp_path,
            accepted: 0,
        });
        Ok(Upload { sink, lock, _open: OpenUpload::new(self.server), chunks: ChunkList::default(), stream })
    }

    /// A large chunk is read straight into a buffer that then goes to the
    /// sink thread as it is.
    fn chunk_buffer(&mut self, upload: &mut Upload, _len: u32) -> Option<Vec<u8>> {
        upload.sink.buffer()
    }

    fn checked(&mut self, upload: &mut Upload, digest: &Digest, len: usize) {
        upload.chunks.checked(digest, len);
        if let Some(s) = &upload.stream {
            s.guard.0.checked(digest, len);
        }
    }

    fn append(&mut self, name: &str, upload: &mut Upload, payload: Payload<'_>) -> Result<(), StatusCode> {
        let (len, written) = match payload {
            Payload::Borrowed(bytes) => (bytes.len(), upload.sink.append(bytes)),
            Payload::Owned(buf) => (buf.len(), upload.sink.append_owned(buf)),
        };
        if written.is_ok() {
            Metrics::add(&self.server.metrics.bytes_in, len as u64);
            if let Some(s) = &mut upload.stream {
                let before = s.accepted;
                s.accepted += len as u64;
                if before < streams::OFFER_AFTER && s.accepted >= streams::OFFER_AFTER {
                    streams::offer(self.server, &s.guard.0, &s.temp);
                }
            }
        }
        written.map_err(|e| {
            log::error!("{name:?}: cannot write temp file: {e}");
            StatusCode::IN_USE
        })
    }

    /// Answered later: the upload joins this connection's next group
    /// commit, its data flushed to the disk then.
    fn commit(&mut self, name: &str, upload: Upload, file: Assembled) -> Reply {
        let Upload { sink, lock, _open, chunks, stream } = upload;
        let started = Instant::now();
        let temp = match sink.finish() {
            Ok(temp) => temp,
            Err(e) => {
                log::error!("{}: cannot write {name:?}: {e}", self.session.who());
                return StatusCode::IN_USE.into();
            }
        };
        // Kept by content whether or not the commit goes through: they are
        // the digests of these bytes either way.
        if let Some(digests) = chunks.finish(file.size) {
            self.server.chunk_digests.keep(temp.strong(), digests);
        }
        let change = Pending::Upload { path: name.to_owned(), temp, md5: file.md5, size: file.size };
        let stream = stream.map(|s| s.guard);
        if let Some(s) = &stream {
            s.0.finishing();
        }
        self.defer(Job { ticket: 0, change, lock, _open: Some(_open), started, stream })
    }

    fn discard(&mut self, name: &str, _upload: Upload, why: Ended) {
        let who = self.session.who();
        match why {
            Ended::Verdict(reply) => log::info!("{who}: upload of {name:?} discarded: {reply}"),
            Ended::PeerAbort => log::info!("{who}: upload of {name:?} aborted by the client"),
            Ended::Idle => log::info!(
                "{who}: upload of {name:?} aborted: no message of its own for {:?}; lock released",
                self.server.config.dead_peer
            ),
            Ended::HostFailed(_) | Ended::ConnectionClosed => {}
        }
    }

    /// The stale-change rule needs to know whether the client has the
    /// version it overwrites; without the rule there is nothing to decide
    /// and no reason to wait.
    fn must_settle(&mut self, name: &str) -> bool {
        self.server.library.conflict_copies() && self.session.has_outgoing(name)
    }

    /// Answered later, in this connection's next group commit; a lock
    /// another transfer holds is 0x0040 now.
    fn delete(&mut self, name: &str) -> Reply {
        if let Err(refused) = self.may_change(name) {
            return refused.into();
        }
        let Some(lock) = try_lock_owned(self.server.library.locks(), name, self.session.id) else {
            return StatusCode::LOCKED.into();
        };
        let change = Pending::Delete { path: name.to_owned() };
        self.defer(Job { ticket: 0, change, lock, _open: None, started: Instant::now(), stream: None })
    }

    /// COPY [ext]: an upload of content the server holds at `from`, under
    /// `name`'s lock and the same refusals as an upload's first message;
    /// answered later, in this connection's next group commit.
    fn copy(&mut self, from: &str, name: &str, digest: &Digest) -> Reply {
        let lock = match self.admit_change(name) {
            Ok(lock) => lock,
            Err(refused) => return refused.into(),
        };
        let change = Pending::Copy { path: name.to_owned(), from: from.to_owned(), md5: *digest };
        self.defer(Job { ticket: 0, change, lock, _open: None, started: Instant::now(), stream: None })
    }

    /// The client takes COPY, and so does this server.
    fn offer_copy(&mut self) -> StatusCode {
        self.session.takes_copy.store(true, Ordering::Relaxed);
        StatusCode::OK
    }

    /// [ext] A listing acknowledged: what the client's next session is sent
    /// the changes since (0x0020 for any listing but the one this session
    /// was sent); "every path next time"; or "what changed since that
    /// listing, now", but for the versions this session received (its own
    /// uploads and deliveries), sent as a META-DATA transfer. A legacy
    /// session was offered none of it: 0x0100, as for any reserved name.
    fn index(&mut self, request: IndexRequest) -> StatusCode {
        let (Some(client), Some(listed)) = (self.session.client_id, self.session.listing()) else {
            return StatusCode::BAD_REQUEST;
        };
        let mut acks = self.server.acks();
        match request {
            IndexRequest::Everything => {
                log::info!("{}: will be sent every path next time", self.session.who());
                acks.forget(&client);
                StatusCode::OK
            }
            IndexRequest::Ack { store, upto } if acks.acknowledge(client, store, upto, listed.upto) => {
                log::debug!("{}: acknowledged the listing up to version {upto}", self.session.who());
                StatusCode::OK
            }
            IndexRequest::More { store, upto } if store == acks.store() && upto == listed.upto => {
                drop(acks);
                let at = std::time::Instant::now();
                if self.session.more_too_soon(at) {
                    return StatusCode::NO_FILE;
                }
                let (text, now) = {
                    let seen = self.session.seen.lock().unwrap_or_else(PoisonError::into_inner);
                    self.server.library.snapshot_skipping(upto, &|e| seen.has_received(&e.path, e.version))
                };
                if now < upto {
                    return StatusCode::NO_FILE;
                }
                log::debug!("{}: META-DATA of what it lacks of the changes since version {upto}", self.session.who());
                self.session.set_more(text, Listing { store, upto: now, since: Some(upto) }, at);
                self.server.wake(self.session);
                StatusCode::OK
            }
            IndexRequest::Ack { .. } | IndexRequest::More { .. } => StatusCode::NO_FILE,
        }
    }

    fn request(&mut self, name: &str) -> StatusCode {
        let reply = self.server.library.request(name);
        if reply == StatusCode::OK {
            self.after_reply.push(AfterReply::Queue(name.to_owned()));
        }
        reply
    }

    /// A repeated HELLO changes nothing.
    fn hello(&mut self) -> StatusCode {
        StatusCode::OK
    }
}
