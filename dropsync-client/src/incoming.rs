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
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Instant, SystemTime};

use dropsync_core::liveness::{Due, Liveness};
use dropsync_core::open_transfers::{Begin, Limits, OpenTransfers, Refusal};
use dropsync_core::receiver::{ChunkVerdict, FinishVerdict, HeaderVerdict, Receiver};
use dropsync_core::reconcile::Content;
use dropsync_io::wire::{is_timeout_error, write_status, FrameReader, Msg};
use dropsync_proto::limits::DEFAULT_MAX_CHUNK;
use dropsync_proto::metadata::parse_document;
use dropsync_proto::name::{validate_name, METADATA_TRANSFER_NAME};
use dropsync_proto::{Digest, MessageType, StatusCode};

use crate::progress::{Direction, Progress};
use crate::connect::Timing;
use crate::events::{Event, SessionEvent};
use crate::folder::{delete_local, keep_if_unaccepted, look};
use crate::paths::checked_path;
use crate::scan::{probe, Probe};
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
    /// records, as the assignment asks) and makes it durable before the
    /// rename (section 4: "temp file in the same file system, fsync, rename").
    fn finish(&mut self) -> io::Result<()> {
        self.file.set_modified(SystemTime::now())?;
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

/// What the client keeps for one open incoming transfer, beside its
/// receiver.
#[derive(Debug)]
struct Open {
    sink: Sink,
    started: Instant,
}

/// The receive thread's state.
pub struct Incoming {
    ctx: Arc<Ctx>,
    rx: FrameReader<TcpStream>,
    tx: TcpStream,
    events: mpsc::Sender<Event>,
    session: u64,
    timing: Timing,
    /// Told by the control thread once it has reconciled after META-DATA.
    go: mpsc::Receiver<()>,
    /// Open transfers by name (the server may interleave them, section 4),
    /// with section 9's limits.
    open: OpenTransfers<Open>,
    /// Keep-alive and dead-peer clocks of the receive connection.
    link: Liveness,
    /// When the message being handled arrived.
    msg_at: Instant,
    /// A chunk payload, copied out of the reader's buffer.
    payload: Vec<u8>,
    /// "Delivered" events of the message being handled, posted only after
    /// its reply is on the wire: `--once` may exit as soon as it hears of
    /// the last delivery, and must not leave that delivery unanswered.
    delivered: Vec<SessionEvent>,
    /// The terminal progress line of long incoming transfers.
    progress: Progress,
}

/// Why a message could not be handled; the thread ends with it.
type Fatal = io::Error;

impl Incoming {
    /// Starts the receive thread of session `session`.
    pub fn spawn(
        ctx: Arc<Ctx>,
        rx: FrameReader<TcpStream>,
        tx: TcpStream,
        events: mpsc::Sender<Event>,
        session: u64,
        timing: Timing,
        go: mpsc::Receiver<()>,
    ) -> io::Result<JoinHandle<()>> {
        let now = Instant::now();
        let me = Incoming {
            ctx,
            rx,
            tx,
            events,
            session,
            timing,
            go,
            open: OpenTransfers::new(Limits {
                max_open: MAX_OPEN_TRANSFERS,
                idle: timing.dead_peer,
                remember_expired: MAX_EXPIRED_REMEMBERED,
            }),
            link: Liveness::new(now, timing.timers(), timing.silence()),
            msg_at: now,
            payload: Vec::new(),
            delivered: Vec::new(),
            progress: Progress::new(),
        };
        thread::Builder::new().name(format!("receive-{session}")).spawn(move || me.run())
    }

    fn run(mut self) {
        let reason = match self.serve() {
            Ok(()) => "server closed the receive connection".to_owned(),
            Err(e) => format!("receive connection: {e}"),
        };
        // Partial files go with their TempFile; the paths are free again.
        let names: Vec<String> = self.open.drain().into_iter().map(|(name, _)| name).collect();
        let mut st = self.ctx.shared.lock();
        for name in &names {
            st.incoming.remove(name);
        }
        drop(st);
        self.post(SessionEvent::Closed { reason });
    }

    fn post(&self, what: SessionEvent) {
        let _ = self.events.send(Event::Session { session: self.session, what });
    }

    /// Posts the "Delivered" events held back until their replies were
    /// written (see `delivered`).
    fn post_delivered(&mut self) {
        for what in std::mem::take(&mut self.delivered) {
            self.post(what);
        }
    }

    fn serve(&mut self) -> Result<(), Fatal> {
        loop {
            let msg = match self.rx.read_msg() {
                Ok(Some(msg)) => msg,
                Ok(None) => return Ok(()),
                Err(e) if is_timeout_error(&e) => {
                    self.tick()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            self.msg_at = Instant::now();
            self.link.on_received(self.msg_at);
            self.handle(msg)?;
            self.expire_idle();
            self.post_delivered();
        }
    }

    /// Time passed without a message: keep-alive due? peer silent too long
    /// (never for a legacy session, section 1)? a transfer idle too long?
    fn tick(&mut self) -> Result<(), Fatal> {
        if let Due::PeerGone(gone) = self.link.poll(Instant::now()) {
            return Err(io::Error::new(io::ErrorKind::TimedOut, gone.to_string()));
        }
        self.expire_idle();
        self.post_delivered();
        self.keepalive_if_due()
    }

    /// Section 9's idle-transfer rule (`OpenTransfers::expire`): a transfer
    /// with no message of its own for the dead-peer time is aborted, even
    /// while keep-alives flow; its next message gets 0x0080.
    fn expire_idle(&mut self) {
        let now = Instant::now();
        if !matches!(self.open.poll_timeout(), Some(at) if at <= now) {
            return;
        }
        for (name, open) in self.open.expire(now) {
            log::warn!("incoming {name} aborted: no message of it for {:?}", self.timing.dead_peer);
            // Dropping it removes the partial file.
            drop(open.sink);
            self.ended(&name, open.started);
        }
    }

    fn keepalive_if_due(&mut self) -> Result<(), Fatal> {
        if self.link.poll(Instant::now()) == Due::KeepAlive {
            self.reply(StatusCode::KEEP_ALIVE)?;
        }
        Ok(())
    }

    fn reply(&mut self, code: StatusCode) -> Result<(), Fatal> {
        write_status(&mut self.tx, code)?;
        self.link.on_sent(Instant::now());
        Ok(())
    }

    fn handle(&mut self, msg: Msg) -> Result<(), Fatal> {
        match msg {
            Msg::Status(StatusCode::KEEP_ALIVE) => Ok(()),
            Msg::Status(code) => {
                // A STATUS is never answered, and nothing here awaits one.
                log::warn!("unexpected STATUS {code} on the receive connection, ignored");
                Ok(())
            }
            Msg::Hello { .. } => self.reply(StatusCode::BAD_REQUEST),
            Msg::Rejected(e) => {
                log::warn!("refused a message from the server: {e}");
                self.reply(StatusCode::BAD_REQUEST)
            }
            Msg::Chunk { digest, name, len } => self.on_chunk(&digest, name, len),
            Msg::Named { kind: MessageType::Finished, digest, name } => self.on_finished(&digest, name),
            Msg::Named { kind: MessageType::Abort, name, .. } => self.on_abort(&name),
            Msg::Named { kind: MessageType::Delete, name, .. } => self.on_delete(name),
            Msg::Named { kind, name, .. } => {
                log::warn!("unexpected {kind:?} of {name:?} from the server, refused");
                self.reply(StatusCode::BAD_REQUEST)
            }
        }
    }

    /// Section 3: a name from the wire must be valid before it is used.
    fn name_ok(name: &str) -> bool {
        match validate_name(name, true) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("refused {name:?} from the server: {e}");
                false
            }
        }
    }

    /// Opens a transfer of `name` if this message is its first, or says
    /// which STATUS refuses it: 0x0080 beyond [`MAX_OPEN_TRANSFERS`], or for
    /// the late message of a transfer aborted for idleness (section 9).
    fn open_transfer(&mut self, name: &str) -> Result<(), StatusCode> {
        let started = Instant::now();
        match self.open.begin(name, started) {
            Begin::Open => return Ok(()),
            Begin::Refused(code) => {
                match self.open.last_refusal() {
                    Some(Refusal::Limit) => log::warn!("refused incoming {name}: {MAX_OPEN_TRANSFERS} transfers already open"),
                    _ => log::info!("refused incoming {name}: its transfer was aborted for idleness"),
                }
                return Err(code);
            }
            Begin::New => {}
        }
        let sink = if name == METADATA_TRANSFER_NAME {
            Sink::Memory(Vec::new())
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
        self.open.insert(name, Receiver::new(DEFAULT_MAX_CHUNK), Open { sink, started }, started);
        Ok(())
    }

    /// Section 7: 0x0080 for a path we are uploading or deleting right now,
    /// or one that cannot be written (a folder, a symlink, a symlinked or
    /// file parent). Marks the path as being received.
    fn check_writable(&self, name: &str) -> Result<(), StatusCode> {
        let mut st = self.ctx.shared.lock();
        if st.outgoing.contains(name) {
            log::info!("refused incoming {name}: our own change of it is being sent");
            return Err(StatusCode::IN_USE);
        }
        let writable = checked_path(&self.ctx.root, name, false)
            .and_then(|path| probe(&path))
            .map_err(|e| e.to_string())
            .and_then(|p| match p {
                Probe::Absent | Probe::File(_) => Ok(()),
                other => Err(format!("the local path is {other:?}")),
            });
        if let Err(why) = writable {
            log::warn!("refused incoming {name}: cannot write it: {why}");
            return Err(StatusCode::IN_USE);
        }
        st.incoming.insert(name.to_owned());
        Ok(())
    }

    /// Ends the open transfer of `name` (whatever happened to it).
    fn close(&mut self, name: &str) {
        let started = self.open.remove(name).map_or_else(Instant::now, |(_, o)| o.started);
        self.ended(name, started);
    }

    /// Frees the path of a transfer that ended and reports it.
    fn ended(&mut self, name: &str, started: Instant) {
        self.progress.finish();
        if name != METADATA_TRANSFER_NAME {
            self.ctx.shared.lock().incoming.remove(name);
        }
        self.delivered.push(SessionEvent::Delivered { name: name.to_owned(), started });
    }

    /// Reads a chunk payload into `self.payload`, sending keep-alives if it
    /// is slow to come.
    fn read_payload(&mut self, len: u32) -> Result<(), Fatal> {
        let mut had = self.rx.buffered();
        loop {
            match self.rx.read_payload(len) {
                Ok(p) => {
                    self.payload.clear();
                    self.payload.extend_from_slice(p);
                    self.link.on_received(Instant::now());
                    return Ok(());
                }
                Err(e) if is_timeout_error(&e) => {
                    // A large chunk on a slow link: bytes still arriving
                    // are not silence, even without a whole message.
                    if self.rx.buffered() != had {
                        had = self.rx.buffered();
                        self.link.on_received(Instant::now());
                    }
                    self.tick()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Discards a chunk payload without buffering it.
    fn skip_payload(&mut self, len: u32) -> Result<(), Fatal> {
        match self.rx.skip(u64::from(len)) {
            // A timed-out skip finishes during the next read (wire.rs).
            Err(e) if is_timeout_error(&e) => Ok(()),
            other => other,
        }
    }

    fn on_chunk(&mut self, digest: &Digest, name: String, len: u32) -> Result<(), Fatal> {
        if !Self::name_ok(&name) {
            self.skip_payload(len)?;
            return self.reply(StatusCode::BAD_REQUEST);
        }
        if let Err(code) = self.open_transfer(&name) {
            self.skip_payload(len)?;
            self.delivered.push(SessionEvent::Delivered { name, started: Instant::now() });
            return self.reply(code);
        }
        let Some((rx, _)) = self.open.get_mut(&name) else { return self.reply(StatusCode::IN_USE) };
        let header = rx.handle_chunk_header(len);
        if header != HeaderVerdict::ReadPayload {
            self.skip_payload(len)?;
            let reply = header.reply().unwrap_or(StatusCode::BAD_REQUEST);
            if !matches!(header, HeaderVerdict::Resend { .. }) {
                self.close(&name);
            }
            return self.reply(reply);
        }
        self.read_payload(len)?;
        let Some((rx, open)) = self.open.get_mut(&name) else { return self.reply(StatusCode::IN_USE) };
        let reply = match rx.handle_chunk(digest, &self.payload) {
            ChunkVerdict::Append { reply } => match append(&mut open.sink, &self.payload) {
                Ok(()) => {
                    self.progress.update(Direction::Down, &name, rx.bytes_received(), None, open.started);
                    reply
                }
                Err(e) => {
                    log::warn!("cannot write incoming {name}: {e}");
                    self.close(&name);
                    StatusCode::IN_USE
                }
            },
            ChunkVerdict::Resend { reply } => reply,
            verdict => {
                self.close(&name);
                verdict.reply().unwrap_or(StatusCode::BAD_REQUEST)
            }
        };
        self.reply(reply)
    }

    fn on_finished(&mut self, digest: &Digest, name: String) -> Result<(), Fatal> {
        if !Self::name_ok(&name) {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        // A FINISHED with no chunk before it opens a transfer: an empty file.
        if let Err(code) = self.open_transfer(&name) {
            self.delivered.push(SessionEvent::Delivered { name, started: Instant::now() });
            return self.reply(code);
        }
        let Some((mut rx, open)) = self.open.remove(&name) else { return self.reply(StatusCode::IN_USE) };
        let verdict = rx.handle_finished(digest);
        let started = open.started;
        let reply = match (verdict, open.sink) {
            (FinishVerdict::Commit { size, digest, .. }, Sink::Memory(bytes)) => {
                return self.on_metadata(&bytes, size, &digest, started);
            }
            (FinishVerdict::Commit { size, digest, .. }, Sink::Temp(temp)) => {
                match self.install(&name, temp, Content { md5: digest, size }) {
                    Ok(()) => StatusCode::OK,
                    Err(code) => code,
                }
            }
            (verdict, _) => {
                log::warn!("incoming {name} discarded: {}", verdict.reply().unwrap_or(StatusCode::BAD_REQUEST));
                verdict.reply().unwrap_or(StatusCode::BAD_REQUEST)
            }
        };
        self.ended(&name, started);
        self.reply(reply)
    }

    /// The server's META-DATA: hand it to the control thread, answer, and
    /// wait until it has reconciled before reading anything else.
    fn on_metadata(&mut self, bytes: &[u8], size: u64, digest: &Digest, started: Instant) -> Result<(), Fatal> {
        let text = std::str::from_utf8(bytes).map_err(|e| io::Error::other(format!("META-DATA is not UTF-8: {e}")))?;
        let doc = parse_document(text).map_err(|e| io::Error::other(format!("bad META-DATA from server: {e}")))?;
        log::debug!(
            "server META-DATA: {} entries, {size} bytes, md5 {}, in {:?}",
            doc.entries.len(),
            dropsync_proto::digest::to_hex(digest),
            started.elapsed()
        );
        self.post(SessionEvent::ServerMeta(doc));
        self.reply(StatusCode::OK)?;
        loop {
            match self.go.recv_timeout(self.timing.read_tick()) {
                Ok(()) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => self.keepalive_if_due()?,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other("session ended during reconciliation"))
                }
            }
        }
        // Time spent reconciling is not the server's silence.
        self.link.on_received(Instant::now());
        Ok(())
    }

    /// Renames a verified temp file into place (section 7), keeping local
    /// content the server never accepted as a conflict copy first.
    fn install(&mut self, name: &str, mut temp: TempFile, content: Content) -> Result<(), StatusCode> {
        let ctx = Arc::clone(&self.ctx);
        let fail = |what: &str, e: io::Error| {
            log::warn!("cannot write incoming {name}: {what}: {e}");
            StatusCode::IN_USE
        };
        let path = checked_path(&ctx.root, name, true).map_err(|e| fail("folder", e))?;
        temp.finish().map_err(|e| fail("temp file", e))?;
        let seen = ctx.shared.lock().record(name).local;
        let before = look(&path, seen).map_err(|e| fail("local file", e))?;
        let mut st = ctx.shared.lock();
        if st.outgoing.contains(name) {
            // Our upload started after this transfer did: it wins, and the
            // server keeps this version as a conflict copy (section 7).
            log::info!("refused incoming {name} at FINISHED: our own change of it is being sent");
            return Err(StatusCode::IN_USE);
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
        if let Some(copy) = kept {
            self.post(SessionEvent::ConflictCopy(copy));
        }
        Ok(())
    }

    fn on_abort(&mut self, name: &str) -> Result<(), Fatal> {
        // An ABORT naming no open transfer is answered OK and changes nothing.
        if let Some(open) = self.open.abort(name) {
            drop(open.sink);
            log::info!("server aborted the transfer of {name}");
            self.ended(name, open.started);
        }
        self.reply(StatusCode::OK)
    }

    fn on_delete(&mut self, name: String) -> Result<(), Fatal> {
        if !Self::name_ok(&name) || name == METADATA_TRANSFER_NAME {
            return self.reply(StatusCode::BAD_REQUEST);
        }
        if self.open.get_mut(&name).is_some() {
            self.close(&name);
        }
        let reply = self.delete(&name);
        self.delivered.push(SessionEvent::Delivered { name, started: self.msg_at });
        self.reply(reply)
    }

    /// Section 7: "Incoming DELETE: delete F, or 0x0020 if absent."
    fn delete(&mut self, name: &str) -> StatusCode {
        let ctx = Arc::clone(&self.ctx);
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
        if st.outgoing.contains(name) {
            log::info!("refused DELETE of {name}: our own change of it is being sent");
            return StatusCode::IN_USE;
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
