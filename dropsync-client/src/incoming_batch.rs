//! Group commit of deliveries: files that arrive whole while more of the
//! server's bytes are waiting are installed together, their fsyncs side by
//! side (one journal commit of the file system for many files rather than
//! one each), then renamed into place one by one in the order they came.
//! Each reply still waits for its own file to be durable and in place.

use std::time::{Duration, Instant};

use dropsync_core::receiving::Reply;
use dropsync_core::reconcile::Content;
use dropsync_proto::StatusCode;

use super::{Deliveries, TempFile};

/// At most this many files wait for their group commit...
const MAX_BATCH: usize = 256;
/// ...and the first of them waits at most this long for the others.
const MAX_BATCH_WAIT: Duration = Duration::from_millis(5);
/// A batch installed quicker than this says waiting for more gains
/// nothing.
const CHEAP_INSTALL: Duration = Duration::from_micros(300);

/// A file received whole and verified, not installed yet.
#[derive(Debug)]
struct Arrived {
    ticket: u64,
    name: String,
    temp: TempFile,
    content: Content,
    started: Instant,
    arrived: Instant,
}

/// The files waiting, and the replies of the last group commit.
#[derive(Debug, Default)]
pub(super) struct Batch {
    waiting: Vec<Arrived>,
    next_ticket: u64,
    replies: Vec<(u64, StatusCode)>,
    /// How long the last batch took to install.
    last_took: Duration,
}

impl Batch {
    /// Queues a file for the next group commit; its reply waits for it.
    pub(super) fn defer(&mut self, name: &str, temp: TempFile, content: Content, started: Instant) -> Reply {
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        let arrived = Instant::now();
        self.waiting.push(Arrived { ticket, name: name.to_owned(), temp, content, started, arrived });
        Reply::Later(ticket)
    }

    /// Whether the files waiting are installed now: when no more of the
    /// server's bytes are on their way (`more_coming` false), when there
    /// are [`MAX_BATCH`] of them, when the first has waited
    /// [`MAX_BATCH_WAIT`], or at once when installs cost next to nothing
    /// (a RAM disk: waiting would only hold the replies).
    pub(super) fn due(&self, more_coming: bool) -> bool {
        let Some(first) = self.waiting.first() else { return false };
        !more_coming
            || self.last_took < CHEAP_INSTALL
            || self.waiting.len() >= MAX_BATCH
            || first.arrived.elapsed() >= MAX_BATCH_WAIT
    }

    /// The replies of the files installed since the last call, by ticket.
    pub(super) fn take_replies(&mut self) -> Vec<(u64, StatusCode)> {
        std::mem::take(&mut self.replies)
    }
}

impl Deliveries {
    /// Installs the files waiting: durable together, then each in place,
    /// its reply kept for [`Batch::take_replies`].
    pub(super) fn install_batch(&mut self) {
        let waiting = std::mem::take(&mut self.batch.waiting);
        if waiting.is_empty() {
            return;
        }
        let began = Instant::now();
        let files: Vec<&std::fs::File> = waiting.iter().map(|a| &a.temp.file).collect();
        let synced = dropsync_io::sync_many::sync_all(&files);
        for (arrived, synced) in waiting.into_iter().zip(synced) {
            let Arrived { ticket, name, temp, content, started, .. } = arrived;
            let reply = match synced {
                Ok(()) => {
                    let installed = self.install(&name, temp, content);
                    self.reply_to_install(&name, installed)
                }
                Err(e) => {
                    log::warn!("cannot write incoming {name}: temp file: {e}");
                    drop(temp);
                    self.reply_to_install(&name, Err(super::Unwritten::CannotWrite))
                }
            };
            self.ended(&name, started);
            self.batch.replies.push((ticket, reply));
        }
        self.batch.last_took = began.elapsed();
    }
}
