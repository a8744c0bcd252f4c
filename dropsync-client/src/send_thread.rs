//! The send connection's one owner: a thread that holds [`Outgoing`]
//! (core's sending machine, the reader of the files being uploaded, and the
//! socket's writing half) and is the only one to touch it. The control
//! thread hands it operations, the reply thread hands it the server's
//! replies, both through one channel; it sends what each unblocks, keeps
//! the connection's clocks, and reports every operation that ends.
//!
//! So no thread waits on another's file reads, hashing or socket writes:
//! the control thread only queues work and counts what is under way
//! ([`SendHandle`]).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use dropsync_core::reconcile::Content;
use dropsync_proto::{Digest, StatusCode};

use crate::events::{Event, SessionEvent};
use crate::outgoing::{settle, Done, Outgoing};
use crate::scan::FileStat;
use crate::state::Ctx;

/// Longest the thread sleeps without looking at the connection's clocks.
const MAX_WAIT: Duration = Duration::from_secs(1);

/// Work for the send thread.
pub enum Command {
    /// Upload `name` from the open `file` (see `Outgoing::add_upload`).
    Upload {
        /// The path.
        name: String,
        /// The open file.
        file: File,
        /// Its local path.
        path: PathBuf,
        /// Its stat when opened.
        stat: FileStat,
        /// Its content, when it was hashed to decide to send it.
        trusted: Option<Content>,
    },
    /// COPY [ext] `from`'s content to `name` (see `Outgoing::add_copy`).
    Copy {
        /// The path.
        name: String,
        /// The path the server has the content at.
        from: String,
        /// The file's stat when it was judged.
        stat: FileStat,
        /// Its content.
        content: Content,
        /// The DELETE of `from` to send right behind it (a rename), with
        /// the MD5 of our last version of `from`.
        then_delete: Option<Digest>,
    },
    /// DELETE `name`, whose last version we held is `held`.
    Delete {
        /// The path.
        name: String,
        /// MD5 of our last version.
        held: Digest,
    },
    /// REQUEST `name`.
    Request {
        /// The path.
        name: String,
        /// MD5 of the version we hold, or zeros.
        held: Digest,
    },
    /// STATUS frames (keep-alives included) read at `at`; none when only
    /// part of one arrived (bytes still count as hearing from the server).
    Replies {
        /// The codes, in order.
        codes: Vec<StatusCode>,
        /// When they were read.
        at: Instant,
    },
    /// Section 9: ABORT every transfer in progress; take no more.
    AbortAll,
    /// The session is over.
    Stop,
}

/// What the control thread keeps of the send connection: a way to queue
/// work, and counts of what is under way (kept by both threads, so asking
/// never waits).
#[derive(Debug, Clone)]
pub struct SendHandle {
    tx: mpsc::Sender<Command>,
    counts: Arc<Counts>,
}

/// Operations under way, and those of them that are uploads of files
/// larger than one chunk.
#[derive(Debug)]
struct Counts {
    ops: AtomicUsize,
    large: AtomicUsize,
    chunk_size: u32,
}

impl SendHandle {
    /// A sender for [`Command`]s (the reply thread's).
    pub fn commands(&self) -> mpsc::Sender<Command> {
        self.tx.clone()
    }

    /// Queues an upload.
    pub fn add_upload(&self, name: String, file: File, path: PathBuf, stat: FileStat, trusted: Option<Content>) {
        self.counts.ops.fetch_add(1, Ordering::SeqCst);
        if self.spans_chunks(stat.size) {
            self.counts.large.fetch_add(1, Ordering::SeqCst);
        }
        let _ = self.tx.send(Command::Upload { name, file, path, stat, trusted });
    }

    /// Queues a COPY, and the DELETE of its source behind it in the same
    /// write when `then_delete` holds our last version's MD5 (a rename).
    pub fn add_copy(&self, name: String, from: String, stat: FileStat, content: Content, then_delete: Option<Digest>) {
        let ops = if then_delete.is_some() { 2 } else { 1 };
        self.counts.ops.fetch_add(ops, Ordering::SeqCst);
        let _ = self.tx.send(Command::Copy { name, from, stat, content, then_delete });
    }

    /// Queues a DELETE.
    pub fn add_delete(&self, name: String, held: Digest) {
        self.counts.ops.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Command::Delete { name, held });
    }

    /// Queues a REQUEST.
    pub fn add_request(&self, name: String, held: Digest) {
        self.counts.ops.fetch_add(1, Ordering::SeqCst);
        let _ = self.tx.send(Command::Request { name, held });
    }

    /// The control thread has taken in that `done` ended (counted here, not
    /// when the send thread saw it end: until its event is handled, the
    /// operation still counts, so `--once` cannot end before it).
    pub fn ended(&self, done: &Done) {
        self.counts.ops.fetch_sub(1, Ordering::SeqCst);
        if let Done::Upload { stat, .. } = done {
            if self.spans_chunks(stat.size) {
                self.counts.large.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Section 9: ABORT what is in progress.
    pub fn abort_all(&self) {
        let _ = self.tx.send(Command::AbortAll);
    }

    /// Ends the send thread.
    pub fn stop(&self) {
        let _ = self.tx.send(Command::Stop);
    }

    /// Operations queued or under way.
    pub fn len(&self) -> usize {
        self.counts.ops.load(Ordering::SeqCst)
    }

    /// True when nothing is queued or under way.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Uploads of files larger than one chunk queued or under way (the
    /// ones bounded by `--parallel`: each holds a read-ahead buffer).
    pub fn multi_chunk_uploads(&self) -> usize {
        self.counts.large.load(Ordering::SeqCst)
    }

    /// True when a file of `size` bytes goes out in more than one chunk.
    pub fn spans_chunks(&self, size: u64) -> bool {
        size > u64::from(self.counts.chunk_size)
    }
}

/// Starts the send thread of session `session` over `out`.
pub fn spawn(
    out: Outgoing,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    session: u64,
) -> std::io::Result<(SendHandle, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let counts = Arc::new(Counts { ops: AtomicUsize::new(0), large: AtomicUsize::new(0), chunk_size: out.chunk_size() });
    let handle = SendHandle { tx, counts };
    let thread = thread::Builder::new().name(format!("send-{session}")).spawn(move || {
        let post = |what| {
            let _ = events.send(Event::Session { session, what });
        };
        run(out, &rx, &ctx, &post);
    })?;
    Ok((handle, thread))
}

/// The thread's loop, until the session stops it. When the connection
/// breaks (a failed write, the server silent too long), that is reported
/// once and nothing more is sent, but replies still come in and are taken
/// in until the session stops: a commit's 0x0001 read after a long pause
/// (the process stopped, the clock jumped) still makes its upload the base.
fn run(mut out: Outgoing, rx: &mpsc::Receiver<Command>, ctx: &Ctx, post: &impl Fn(SessionEvent)) {
    let mut broken = false;
    let fail = |why: String, broken: &mut bool| {
        if !std::mem::replace(broken, true) {
            post(SessionEvent::Closed { reason: why });
        }
    };
    loop {
        // Once broken, the clocks say nothing more: only commands matter.
        let wait = if broken { MAX_WAIT } else { out.link_timeout().saturating_duration_since(Instant::now()).min(MAX_WAIT) };
        let first = match rx.recv_timeout(wait) {
            Ok(cmd) => Some(cmd),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut done = Vec::new();
        let mut stop = false;
        // Every command already waiting is applied before anything is
        // sent, so what they unblock goes out together (one write for many
        // small files).
        for cmd in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            match cmd {
                Command::Upload { name, file, path, stat, trusted } => out.add_upload(name, file, path, stat, trusted),
                Command::Copy { name, from, stat, content, then_delete } => {
                    out.add_copy(name, from.clone(), stat, content);
                    if let Some(held) = then_delete {
                        out.add_delete(from, held);
                    }
                }
                Command::Delete { name, held } => out.add_delete(name, held),
                Command::Request { name, held } => out.add_request(name, held),
                Command::Replies { codes, at } => {
                    let _ = out.check_link(at, true);
                    for code in codes.into_iter().filter(|&c| c != StatusCode::KEEP_ALIVE) {
                        match out.handle_reply(code) {
                            Ok(ended) => done.extend(ended),
                            Err(e) => fail(format!("server broke the protocol: {e}"), &mut broken),
                        }
                    }
                }
                Command::AbortAll => done.extend(out.abort_all()),
                // What came before it is still taken in.
                Command::Stop => stop = true,
            }
        }
        if !broken && !stop {
            match out.pump() {
                Ok(more) => done.extend(more),
                Err(e) => fail(format!("send connection: {e}"), &mut broken),
            }
        }
        for d in done {
            settle(ctx, &d);
            post(SessionEvent::Done(d));
        }
        if stop {
            return;
        }
        if !broken {
            if let Err(e) = out.keepalive_if_due() {
                fail(format!("send connection: {e}"), &mut broken);
            } else if let Some(gone) = out.check_link(Instant::now(), false) {
                fail(format!("send connection: {gone}"), &mut broken);
            }
        }
    }
}
