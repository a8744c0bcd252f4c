//! What the client's threads tell the control thread, over one channel.
//!
//! The control thread owns every decision; the other threads (the
//! file-system watcher, the signal handler, and per session the receive
//! thread and the reply thread) report to it. Session events carry the
//! session's number so that a late report from a session already over is
//! recognised and dropped.

use std::path::PathBuf;
use std::time::Instant;

use dropsync_proto::metadata::Document;

use crate::outgoing::Done;

/// One report to the control thread.
#[derive(Debug)]
pub enum Event {
    /// Paths the watcher saw change (files or folders, absolute).
    Changed(Vec<PathBuf>),
    /// Files closed after being written (absolute): done, so they go out
    /// at once instead of after the quiet time.
    Closed(Vec<PathBuf>),
    /// Files written to (absolute), by a writer that holds them open: they
    /// wait for its close, or a longer quiet time.
    Written(Vec<PathBuf>),
    /// The watcher saw `from` renamed to `to` (absolute; also reported as
    /// changes): the new name may go out as a COPY of the old one.
    Moved {
        /// The old path.
        from: PathBuf,
        /// The new path.
        to: PathBuf,
    },
    /// The watcher lost events (queue overflow, error): rescan everything.
    RescanNeeded,
    /// SIGINT or SIGTERM.
    Signal,
    /// A report from the threads of session number `session`.
    Session {
        /// Which session.
        session: u64,
        /// What happened.
        what: SessionEvent,
    },
}

/// A report from one session's threads.
#[derive(Debug)]
pub enum SessionEvent {
    /// The server's META-DATA arrived (receive thread). The receive thread
    /// then waits for the go-ahead before it reads anything else, so that
    /// reconciliation sees a folder nobody else is writing to.
    ServerMeta(Document),
    /// An operation on the send connection ended (the reply thread has
    /// already recorded it in the shared state, see `outgoing::settle`).
    Done(Done),
    /// An incoming transfer or DELETE of `name` ended, whatever its outcome;
    /// its first message arrived at `started`. This answers a REQUEST sent
    /// before `started`.
    Delivered {
        /// The path.
        name: String,
        /// When its first message arrived.
        started: Instant,
    },
    /// An incoming transfer of `name` was refused (0x0080) because the path
    /// could not be written here, or ended here without being installed
    /// (`sync_policy::ask_again_after`); the server gives it up for this
    /// client, so the session asks for it again later.
    Unwritable(String),
    /// An incoming transfer or DELETE of `name` was refused (0x0080)
    /// because our own change of it was being sent: asked for once that
    /// change has its reply (`SyncPolicy::refused_while_sending`).
    RefusedWhileSending(String),
    /// An incoming transfer of `name` was written into the folder.
    Written(String),
    /// The receive thread made a conflict copy named `name`: upload it.
    ConflictCopy(String),
    /// A connection of the session ended or must be dropped.
    Closed {
        /// Why, for the log.
        reason: String,
    },
}
