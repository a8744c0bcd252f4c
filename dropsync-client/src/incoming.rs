//! The receive connection's thread: transfers and DELETEs from the server
//! (PROTOCOL.md sections 4 and 7), each answered with exactly one STATUS.
//!
//! Every name is checked (section 3) before anything touches the disk, so
//! garbage from the wire can neither panic the thread nor write outside the
//! folder. A file arrives in a temp file under `.dropsync/tmp/`, its MD5 is
//! checked by the core [`Receiver`], and it is renamed into place; its
//! stat and content are recorded right after the rename, so the scan that
//! the rename triggers sees an unchanged file and never uploads it back.

use std::fs::{self, File};
use std::io::{self, Write};
use dropsync_io::conn::Conn;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime};

use dropsync_core::open_transfers::Limits;
use dropsync_core::receiving::{Assembled, Config, Ended, Event as ConnEvent, Host, Payload, Receiving, Reply, Step};
use dropsync_core::reconcile::Content;
use dropsync_core::sync_policy::{admit_incoming, ask_again_after, brings_nothing_new};
use dropsync_io::wire::{feed, Fed, FrameReader};
use dropsync_proto::limits::{DEFAULT_MAX_CHUNK, MAX_NAME_LEN};
use dropsync_proto::metadata::parse_document;
use dropsync_proto::name::METADATA_TRANSFER_NAME;
use dropsync_proto::{Digest, StatusCode};

use crate::connect::Timing;
use crate::events::{Event, SessionEvent};
use crate::ignores::IGNORE_FILE;
use crate::folder::{delete_local, keep_if_unaccepted, look};
use crate::paths::{checked_path, remove_empty_parents};
use crate::progress::{Direction, Progress};
use crate::scan::{probe, seen_is_current, FileStat, Probe};
use crate::state::Ctx;

/// Largest META-DATA accepted from the server: it is held in memory to be
/// parsed. 256 MiB is about two million paths.
const MAX_METADATA: u64 = 256 * 1024 * 1024;

/// Most incoming transfers open at once. The server sends one at a time;
/// the limit only keeps a misbehaving peer from exhausting file handles
/// (a transfer beyond it is refused with 0x0080).
const MAX_OPEN_TRANSFERS: usize = 64;

/// Names of transfers aborted for idleness remembered (see
/// `open_transfers::Limits::remember_expired`).
const MAX_EXPIRED_REMEMBERED: usize = 64;

/// Numbers temp files uniquely within this process.
static NEXT_TEMP: AtomicU64 = AtomicU64::new(0);

/// A file being received, removed on drop unless it was renamed into place.
#[derive(Debug)]
struct TempFile {
    path: PathBuf,
    file: File,
    kept: bool,
}

impl TempFile {
    fn create(dir: &Path) -> io::Result<Self> {
        let n = NEXT_TEMP.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!("in-{}-{n}", std::process::id()));
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok(TempFile { path, file, kept: false })
    }

    /// Stamps the file with the time it finished arriving (what META-DATA
    /// records, as the assignment asks); it is made durable before the
    /// rename (section 4: "temp file in the same file system, fsync,
    /// rename"), with the others of its group commit (`batch`).
    fn stamp(&mut self) -> io::Result<()> {
        self.file.set_modified(SystemTime::now())
    }

    /// [`stamp`](Self::stamp), and durable now.
    fn finish(&mut self) -> io::Result<()> {
        self.stamp()?;
        self.file.sync_all()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Where an open transfer's bytes go.
#[derive(Debug)]
enum Sink {
    /// The server's META-DATA, parsed when complete.
    Memory(Vec<u8>),
    /// A file of the folder.
    Temp(TempFile),
}

/// What the client keeps for one open incoming transfer.
#[derive(Debug)]
pub struct Open {
    sink: Sink,
    started: Instant,
    bytes: u64,
}

/// The receive thread: the driver of the connection's [`Receiving`]
/// machine, which holds every rule of it, and its [`Host`] ([`Deliveries`]).
pub struct Incoming {
    rx: Conn,
    tx: Conn,
    conn: Receiving<Open>,
    host: Deliveries,
    timing: Timing,
    /// Told by the control thread once it has reconciled after META-DATA.
    go: mpsc::Receiver<()>,
    wbuf: Vec<u8>,
}

/// The client's side of the machine's [`Host`] calls: the folder, the
/// per-path records, and the events for the control thread.
struct Deliveries {
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    session: u64,
    timing: Timing,
    /// "Delivered" events of the messages handled, posted only after their
    /// replies are on the wire: `--once` may exit as soon as it hears of
    /// the last delivery, and must not leave that delivery unanswered.
    delivered: Vec<SessionEvent>,
    /// The server's META-DATA arrived: no message is handled until the
    /// control thread has reconciled.
    awaiting_go: bool,
    /// The META-DATA could not be read: the session ends.
    fatal: Option<String>,
    /// The terminal progress line of long incoming transfers.
    progress: Progress,
    /// Files received whole, answered [`Reply::Later`]: installed together
    /// (`batch`).
    batch: batch::Batch,
}

/// Why the thread ends.
type Fatal = io::Error;

/// Why a verified file was not installed; either way the reply is 0x0080
/// (section 7).
enum Unwritten {
    /// Our own change of the path is being sent: it wins.
    BeingSent,
    /// The path cannot be written here (asked for again later).
    CannotWrite,
}

impl Incoming {
    /// Starts the receive thread of session `session`.
    pub fn spawn(
        ctx: Arc<Ctx>,
        rx: FrameReader<Conn>,
        tx: Conn,
        events: mpsc::Sender<Event>,
        session: u64,
        timing: Timing,
        go: mpsc::Receiver<()>,
    ) -> io::Result<JoinHandle<()>> {
        let config = Config {
            max_chunk: DEFAULT_MAX_CHUNK,
            max_name_len: MAX_NAME_LEN,
            metadata_name: true,
            limits: Limits {
                max_open: MAX_OPEN_TRANSFERS,
                idle: timing.dead_peer,
                remember_expired: MAX_EXPIRED_REMEMBERED,
            },
            timers: timing.timers(),
            silence: timing.silence(),
        };
        let (rx, decoder) = rx.into_parts();
        let me = Incoming {
            rx,
            tx,
            conn: Receiving::with_decoder(config, Instant::now(), decoder),
            host: Deliveries {
                ctx,
                events,
                session,
                timing,
                delivered: Vec::new(),
                awaiting_go: false,
                fatal: None,
                progress: Progress::new(),
                batch: batch::Batch::default(),
            },
            timing,
            go,
            wbuf: Vec::with_capacity(64),
        };
        thread::Builder::new().name(format!("receive-{session}")).spawn(move || me.run())
    }

    fn run(mut self) {
        let reason = match self.serve() {
            Ok(()) => "server closed the receive connection".to_owned(),
            Err(e) => format!("receive connection: {e}"),
        };
        // Files received whole are installed all the same.
        self.install_batch();
        let _ = self.flush();
        // Partial files go with their temp files; the paths are free again.
        self.conn.close(&mut self.host);
        self.host.post(SessionEvent::Closed { reason });
    }

    fn serve(&mut self) -> Result<(), Fatal> {
        loop {
            let step = self.conn.process(Instant::now(), &mut self.host);
            log_events(&mut self.conn);
            match step {
                Ok(Step::NeedInput) | Ok(Step::Settle { .. }) => {
                    if self.host.batch.due(self.rx.input_ready()) {
                        self.host.install_batch();
                    }
                    // Also those a DELETE or COPY installed first.
                    self.resolve_installed();
                }
                Ok(Step::Paused) => {
                    self.install_batch();
                    self.flush()?;
                    self.await_reconciled()?;
                    continue;
                }
                Err(closed) => return Err(io::Error::new(io::ErrorKind::InvalidData, closed.to_string())),
            }
            self.flush()?;
            match feed(&mut self.rx, &mut self.conn)? {
                Fed::Bytes => {}
                Fed::Closed { mid_message: false } => return Ok(()),
                Fed::Closed { mid_message: true } => return Err(io::ErrorKind::UnexpectedEof.into()),
                Fed::TimedOut => self
                    .conn
                    .handle_timeout(Instant::now(), &mut self.host)
                    .map_err(|closed| io::Error::new(io::ErrorKind::TimedOut, closed.to_string()))?,
            }
        }
    }

    /// Installs the files waiting (`batch`) and gives their replies.
    fn install_batch(&mut self) {
        self.host.install_batch();
        self.resolve_installed();
    }

    /// Gives the replies of the files installed so far.
    fn resolve_installed(&mut self) {
        for (ticket, code) in self.host.batch.take_replies() {
            self.conn.resolve(ticket, code);
        }
    }

    /// Writes the replies, then posts the events that waited for them.
    fn flush(&mut self) -> Result<(), Fatal> {
        if self.conn.poll_transmit(Instant::now(), &mut self.wbuf) {
            let sent = self.tx.write_all(&self.wbuf);
            self.wbuf.clear();
            sent?;
        }
        for what in std::mem::take(&mut self.host.delivered) {
            self.host.post(what);
        }
        Ok(())
    }

    /// After the server's META-DATA: waits until the control thread has
    /// reconciled before reading anything else, keeping the connection
    /// alive meanwhile.
    fn await_reconciled(&mut self) -> Result<(), Fatal> {
        if let Some(why) = self.host.fatal.take() {
            return Err(io::Error::other(why));
        }
        loop {
            match self.go.recv_timeout(self.timing.read_tick()) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Nothing is read meanwhile: what the server sent is
                    // not silence.
                    let now = Instant::now();
                    self.conn.forgive_silence(now);
                    let _ = self.conn.handle_timeout(now, &mut self.host);
                    self.flush()?;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("session ended during reconciliation"))
                }
            }
        }
        self.host.awaiting_go = false;
        // Time spent reconciling is not the server's silence.
        self.conn.forgive_silence(Instant::now());
        Ok(())
    }
}

fn log_events(conn: &mut Receiving<Open>) {
    while let Some(event) = conn.poll_event() {
        match event {
            ConnEvent::LimitReached { max_open } => {
                log::warn!("refusing incoming transfers: {max_open} already open")
            }
            ConnEvent::LateMessage { name } => {
                log::info!("refused incoming {name}: its transfer was aborted for idleness")
            }
            ConnEvent::BadName { name } => {
                log::warn!("refused {name:?} from the server: not a valid name")
            }
            ConnEvent::Rejected(e) => log::warn!("refused a message from the server: {e}"),
            ConnEvent::Unexpected { kind, name } => {
                log::warn!("unexpected {kind:?} of {name:?} from the server, refused")
            }
            // A STATUS is never answered, and nothing here awaits one.
            ConnEvent::StrayStatus(code) => {
                log::warn!("unexpected STATUS {code} on the receive connection, ignored")
            }
        }
    }
}

impl Host for Deliveries {
    type Transfer = Open;

    fn open(&mut self, name: &str, _first_len: u32) -> Result<Open, StatusCode> {
        let sink = if name == METADATA_TRANSFER_NAME {
            Sink::Memory(Vec::new())
        } else if self.ctx.ignores.is_ignored(name) {
            // Ignored here: left as it is (`ignores.rs`).
            log::debug!("refused incoming {name}: ignored here");
            return Err(StatusCode::IN_USE);
        } else {
            self.check_writable(name)?;
            match TempFile::create(&self.ctx.tmp_dir) {
                Ok(t) => Sink::Temp(t),
                Err(e) => {
                    log::warn!("cannot receive {name}: temp file: {e}");
                    self.ctx.shared.lock().incoming.remove(name);
                    return Err(StatusCode::IN_USE);
                }
            }
        };
        Ok(Open { sink, started: Instant::now(), bytes: 0 })
    }

    fn append(&mut self, name: &str, open: &mut Open, payload: Payload<'_>) -> Result<(), StatusCode> {
        let bytes = payload.as_slice();
        match append(&mut open.sink, bytes) {
            Ok(()) => {
                open.bytes += bytes.len() as u64;
                self.progress.update(Direction::Down, name, open.bytes, None, open.started);
                Ok(())
            }
            Err(e) => {
                log::warn!("cannot write incoming {name}: {e}");
                Err(StatusCode::IN_USE)
            }
        }
    }

    fn commit(&mut self, name: &str, open: Open, file: Assembled) -> Reply {
        let reply = match open.sink {
            Sink::Memory(bytes) => return self.on_metadata(&bytes, file, open.started).into(),
            Sink::Temp(mut temp) => {
                if let Err(e) = temp.stamp() {
                    log::warn!("cannot write incoming {name}: temp file: {e}");
                    StatusCode::IN_USE
                } else {
                    let content = Content { md5: file.md5, size: file.size };
                    return self.batch.defer(name, temp, content, open.started);
                }
            }
        };
        self.ended(name, open.started);
        reply.into()
    }

    fn discard(&mut self, name: &str, open: Open, why: Ended) {
        match why {
            Ended::Verdict(reply) => log::warn!("incoming {name} discarded: {reply}"),
            Ended::PeerAbort => log::info!("server aborted the transfer of {name}"),
            Ended::Idle => log::warn!("incoming {name} aborted: no message of it for {:?}", self.timing.dead_peer),
            Ended::HostFailed(_) => {}
            Ended::ConnectionClosed => {
                // The session is over: the path is free again, and no
                // delivery is reported.
                self.ctx.shared.lock().incoming.remove(name);
                return;
            }
        }
        // Dropping the sink removes the partial file.
        drop(open.sink);
        if name != METADATA_TRANSFER_NAME && ask_again_after(why) {
            // The server gave the path up for this client: asked again.
            self.delivered.push(SessionEvent::Unwritable(name.to_owned()));
        }
        self.ended(name, open.started);
    }

    fn refused(&mut self, name: &str, _code: StatusCode) {
        self.delivered.push(SessionEvent::Delivered { name: name.to_owned(), started: Instant::now() });
    }

    fn delete(&mut self, name: &str) -> Reply {
        // Right behind a COPY of it: a rename where the change was made.
        if let Some(reply) = self.batch.join_delete(name) {
            return reply;
        }
        // The files received before it are installed before it.
        self.install_batch();
        self.delete_here(name).into()
    }

    /// COPY [ext] from the server: `name` is to hold what our `from` holds,
    /// the server's version we have. Carried out in its turn in the group
    /// commit (its source may be one of the files received before it, or
    /// a DELETE of its source may follow it: see `install_copy`).
    fn copy(&mut self, from: &str, name: &str, digest: &Digest) -> Reply {
        if self.ctx.ignores.is_ignored(name) {
            log::debug!("refused incoming {name}: ignored here");
            return StatusCode::IN_USE.into();
        }
        if let Err(code) = self.check_writable(name) {
            return code.into();
        }
        self.batch.defer_copy(from, name, *digest, Instant::now())
    }

    fn paused(&self) -> bool {
        self.awaiting_go || self.fatal.is_some()
    }
}

impl Deliveries {
    /// A DELETE from the server, answered.
    fn delete_here(&mut self, name: &str) -> StatusCode {
        let started = Instant::now();
        let reply = self.delete_local(name);
        self.delivered.push(SessionEvent::Delivered { name: name.to_owned(), started });
        reply
    }

    /// COPY [ext] `from` to `name` (checked writable, marked as being
    /// received): copied here (no bytes on the wire) when `from` is in sync
    /// and on disk as recorded; else 0x0020, and the server sends the file.
    fn copy_here(&mut self, from: &str, name: &str, digest: &Digest, started: Instant) -> StatusCode {
        let copied = self.copy_source(from, digest).ok_or_else(|| io::Error::other("not in sync here")).and_then(
            |(source, content, stat)| {
                let mut temp = self.copy_to_temp(&source, stat)?;
                temp.finish()?;
                Ok((temp, content))
            },
        );
        let reply = match copied {
            Ok((temp, content)) => {
                let installed = self.install(name, temp, content);
                self.reply_to_install(name, installed)
            }
            Err(e) => {
                log::debug!("cannot copy {from} to {name} here ({e}): asking for the file");
                // The file itself comes next: this is no delivery yet.
                self.ctx.shared.lock().incoming.remove(name);
                return StatusCode::NO_FILE;
            }
        };
        self.ended(name, started);
        reply
    }

    /// [ext] A COPY of `from` to `name` with the DELETE of `from` right
    /// behind it (a rename where the change was made): our `from` is
    /// renamed to `name`, not a byte copied, when it is in sync and on disk
    /// as recorded, nothing is at `name`, and neither path is being sent.
    /// False: nothing was done; the two are then carried out one by one.
    fn rename_here(&mut self, from: &str, name: &str, digest: &Digest) -> bool {
        let ctx = Arc::clone(&self.ctx);
        if ctx.ignores.is_ignored(from) || from == IGNORE_FILE || name == IGNORE_FILE {
            return false;
        }
        let Some((source, content, stat)) = self.copy_source(from, digest) else { return false };
        let Ok(path) = checked_path(&ctx.root, name, true) else { return false };
        let mut st = ctx.shared.lock();
        let free = matches!(probe(&path), Ok(Probe::Absent))
            && st.record(name).local.is_none()
            && !st.restoring.contains(name)
            && !st.outgoing.contains(name)
            && !st.outgoing.contains(from);
        if !free {
            return false;
        }
        if let Err(e) = fs::rename(&source, &path) {
            log::debug!("cannot rename {from} to {name} here ({e}): copying it");
            return false;
        }
        // Written to between the look and the rename: recorded as not seen
        // (as `install` does when it cannot stat), so the next look sends
        // what it holds now.
        let mtime_ns = match probe(&path) {
            Ok(Probe::File(now)) if now == stat => now.mtime_ns,
            _ => 0,
        };
        st.set_synced(name, content, mtime_ns);
        st.set_deleted(from);
        drop(st);
        remove_empty_parents(&ctx.root, from);
        log::info!("received {name}: {from} renamed ({} bytes not copied)", content.size);
        self.delivered.push(SessionEvent::Written(name.to_owned()));
        true
    }

    /// The reply to a file received whole (or copied here): 0x0001 once
    /// installed; 0x0080 when our own change of it is being sent, or it
    /// cannot be written, which the control thread hears of.
    fn reply_to_install(&mut self, name: &str, installed: Result<(), Unwritten>) -> StatusCode {
        match installed {
            Ok(()) => StatusCode::OK,
            Err(Unwritten::BeingSent) => {
                self.delivered.push(SessionEvent::RefusedWhileSending(name.to_owned()));
                StatusCode::IN_USE
            }
            Err(Unwritten::CannotWrite) => {
                self.delivered.push(SessionEvent::Unwritable(name.to_owned()));
                StatusCode::IN_USE
            }
        }
    }

    /// Our file of `from`, when it holds the server's version of it with
    /// MD5 `digest` as last seen (in sync, stat unchanged and outside the
    /// racy window): its path, content and stat.
    fn copy_source(&self, from: &str, digest: &Digest) -> Option<(PathBuf, Content, FileStat)> {
        let rec = self.ctx.shared.lock().record(from);
        let seen = rec.local.filter(|l| rec.base == Some(l.content) && l.content.md5 == *digest)?;
        let path = checked_path(&self.ctx.root, from, false).ok()?;
        let stat = FileStat::of_seen(&seen);
        let on_disk = matches!(probe(&path), Ok(Probe::File(s)) if s == stat);
        (on_disk && seen_is_current(Some(seen), stat, SystemTime::now())).then_some((path, seen.content, stat))
    }

    /// A temp file holding a copy of `source` (of `stat`): the kernel copies
    /// (copy_file_range; a clone where the file system shares blocks). The
    /// source must not change meanwhile.
    fn copy_to_temp(&self, source: &Path, stat: FileStat) -> io::Result<TempFile> {
        let mut temp = TempFile::create(&self.ctx.tmp_dir)?;
        let copied = io::copy(&mut File::open(source)?, &mut temp.file)?;
        let still = matches!(probe(source), Ok(Probe::File(s)) if s == stat);
        if copied != stat.size || !still {
            return Err(io::Error::other("the source changed while it was copied"));
        }
        Ok(temp)
    }

    fn post(&self, what: SessionEvent) {
        let _ = self.events.send(Event::Session { session: self.session, what });
    }

    /// Section 7: 0x0080 for a path we are uploading or deleting right now,
    /// or one that cannot be written (a folder, a symlink, a symlinked or
    /// file parent). Marks the path as being received.
    fn check_writable(&mut self, name: &str) -> Result<(), StatusCode> {
        let mut st = self.ctx.shared.lock();
        let being_sent = st.outgoing.contains(name);
        let writable = checked_path(&self.ctx.root, name, false)
            .and_then(|path| probe(&path))
            .map_err(|e| e.to_string())
            .and_then(|p| match p {
                Probe::Absent | Probe::File(_) => Ok(()),
                other => Err(format!("the local path is {other:?}")),
            });
        if let Err(code) = admit_incoming(being_sent, writable.is_ok()) {
            drop(st);
            match writable {
                Err(why) => {
                    log::warn!("refused incoming {name}: cannot write it: {why}");
                    self.delivered.push(SessionEvent::Unwritable(name.to_owned()));
                }
                Ok(()) => {
                    log::info!("refused incoming {name}: our own change of it is being sent");
                    self.delivered.push(SessionEvent::RefusedWhileSending(name.to_owned()));
                }
            }
            return Err(code);
        }
        st.incoming.insert(name.to_owned());
        Ok(())
    }

    /// Frees the path of a transfer that ended and reports it.
    fn ended(&mut self, name: &str, started: Instant) {
        self.progress.finish();
        if name != METADATA_TRANSFER_NAME {
            self.ctx.shared.lock().incoming.remove(name);
        }
        self.delivered.push(SessionEvent::Delivered { name: name.to_owned(), started });
    }

    /// The server's META-DATA: hand it to the control thread and answer;
    /// nothing else is handled until it has reconciled.
    fn on_metadata(&mut self, bytes: &[u8], file: Assembled, started: Instant) -> StatusCode {
        let doc = std::str::from_utf8(bytes)
            .map_err(|e| format!("META-DATA is not UTF-8: {e}"))
            .and_then(|text| parse_document(text).map_err(|e| format!("bad META-DATA from server: {e}")));
        match doc {
            Ok(doc) => {
                log::debug!(
                    "server META-DATA: {} entries, {} bytes, md5 {}, in {:?}",
                    doc.entries.len(),
                    file.size,
                    dropsync_proto::digest::to_hex(&file.md5),
                    started.elapsed()
                );
                self.post(SessionEvent::ServerMeta(doc));
                self.awaiting_go = true;
                StatusCode::OK
            }
            Err(why) => {
                self.fatal = Some(why);
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// Renames a verified temp file, durable already, into place (section
    /// 7), keeping local content the server never accepted as a conflict
    /// copy first.
    fn install(&mut self, name: &str, mut temp: TempFile, content: Content) -> Result<(), Unwritten> {
        let ctx = Arc::clone(&self.ctx);
        let fail = |what: &str, e: io::Error| {
            log::warn!("cannot write incoming {name}: {what}: {e}");
            Unwritten::CannotWrite
        };
        let path = checked_path(&ctx.root, name, true).map_err(|e| fail("folder", e))?;
        let seen = ctx.shared.lock().record(name).local;
        let before = look(&path, seen).map_err(|e| fail("local file", e))?;
        let mut st = ctx.shared.lock();
        // Our upload may have started after this transfer did: it wins, and
        // the server keeps this version as a conflict copy (section 7).
        if admit_incoming(st.outgoing.contains(name), true).is_err() {
            log::info!("refused incoming {name} at FINISHED: our own change of it is being sent");
            return Err(Unwritten::BeingSent);
        }
        let restoring = st.restoring.remove(name);
        if brings_nothing_new(content, st.record(name).base, restoring) {
            // The temp file goes with `temp`.
            drop(st);
            log::debug!("{name}: received the version last in common; the local file stays as it is");
            self.delivered.push(SessionEvent::Written(name.to_owned()));
            return Ok(());
        }
        let kept = keep_if_unaccepted(&ctx, &mut st, name, &path, &before, Some(content))
            .map_err(|e| fail("local file", e))?;
        fs::rename(&temp.path, &path).map_err(|e| fail("rename", e))?;
        temp.kept = true;
        let mtime_ns = match probe(&path) {
            Ok(Probe::File(stat)) => stat.mtime_ns,
            _ => 0,
        };
        st.set_synced(name, content, mtime_ns);
        drop(st);
        log::info!("received {name} ({} bytes)", content.size);
        if name == IGNORE_FILE {
            ctx.ignores.reload(&ctx.root);
        }
        self.delivered.push(SessionEvent::Written(name.to_owned()));
        if let Some(copy) = kept {
            self.post(SessionEvent::ConflictCopy(copy));
        }
        Ok(())
    }

    /// Section 7: "Incoming DELETE: delete F, or 0x0020 if absent."
    fn delete_local(&mut self, name: &str) -> StatusCode {
        let ctx = Arc::clone(&self.ctx);
        if ctx.ignores.is_ignored(name) {
            log::debug!("refused DELETE of {name}: ignored here");
            return StatusCode::IN_USE;
        }
        let path = match checked_path(&ctx.root, name, false) {
            Ok(p) => p,
            Err(e) => {
                log::warn!("refused DELETE of {name}: {e}");
                return StatusCode::IN_USE;
            }
        };
        let seen = ctx.shared.lock().record(name).local;
        let before = match look(&path, seen) {
            Ok(b) => b,
            Err(e) => {
                log::warn!("refused DELETE of {name}: {e}");
                return StatusCode::IN_USE;
            }
        };
        let mut st = ctx.shared.lock();
        if let Err(code) = admit_incoming(st.outgoing.contains(name), true) {
            log::info!("refused DELETE of {name}: our own change of it is being sent");
            self.delivered.push(SessionEvent::RefusedWhileSending(name.to_owned()));
            return code;
        }
        match probe(&path) {
            Ok(Probe::File(_)) => {}
            _ => {
                st.set_deleted(name);
                return StatusCode::NO_FILE;
            }
        }
        let kept = match keep_if_unaccepted(&ctx, &mut st, name, &path, &before, None) {
            Ok(kept) => kept,
            Err(e) => {
                log::warn!("refused DELETE of {name}: {e}");
                return StatusCode::IN_USE;
            }
        };
        if let Err(e) = delete_local(&ctx, &mut st, name, &path) {
            log::warn!("cannot delete {name}: {e}");
            return StatusCode::IN_USE;
        }
        drop(st);
        log::info!("deleted {name} (deleted on the server)");
        if name == IGNORE_FILE {
            ctx.ignores.reload(&ctx.root);
        }
        if let Some(copy) = kept {
            self.post(SessionEvent::ConflictCopy(copy));
        }
        StatusCode::OK
    }
}

/// Appends an accepted chunk to a transfer's sink.
fn append(sink: &mut Sink, payload: &[u8]) -> io::Result<()> {
    match sink {
        Sink::Memory(buf) => {
            if (buf.len() + payload.len()) as u64 > MAX_METADATA {
                return Err(io::Error::other(format!("META-DATA larger than {MAX_METADATA} bytes")));
            }
            buf.extend_from_slice(payload);
            Ok(())
        }
        Sink::Temp(t) => t.file.write_all(payload),
    }
}

#[path = "incoming_batch.rs"]
mod batch;
