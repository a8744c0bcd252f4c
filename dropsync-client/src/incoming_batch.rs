//! Group commit of deliveries: files that arrive whole while more of the
//! server's bytes are waiting are installed together, their fsyncs side by
//! side (one journal commit of the file system for many files rather than
//! one each), then renamed into place one by one in the order they came.
//! Each reply still waits for its own file to be durable and in place.
//! A COPY [ext] takes its turn among them, and a DELETE of its source
//! right behind it makes the two one rename (`Deliveries::rename_here`).

use std::time::{Duration, Instant};

use dropsync_core::receiving::Reply;
use dropsync_core::reconcile::Content;
use dropsync_proto::{Digest, StatusCode};

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

/// A COPY [ext] waiting for its turn, with the DELETE of its source when
/// that came right behind it.
#[derive(Debug)]
struct CopyWaiting {
    ticket: u64,
    from: String,
    name: String,
    digest: Digest,
    started: Instant,
    then_delete: Option<u64>,
}

/// What waits for the group commit, in the order it came.
#[derive(Debug)]
enum Waiting {
    File(Arrived),
    Copy(CopyWaiting),
}

impl Waiting {
    fn arrived(&self) -> Instant {
        match self {
            Waiting::File(a) => a.arrived,
            Waiting::Copy(c) => c.started,
        }
    }
}

/// The files waiting, and the replies of the last group commit.
#[derive(Debug, Default)]
pub(super) struct Batch {
    waiting: Vec<Waiting>,
    next_ticket: u64,
    replies: Vec<(u64, StatusCode)>,
    /// How long the last batch took to install.
    last_took: Duration,
}

impl Batch {
    /// Queues a file for the next group commit; its reply waits for it.
    pub(super) fn defer(&mut self, name: &str, temp: TempFile, content: Content, started: Instant) -> Reply {
        let ticket = self.ticket();
        let arrived = Instant::now();
        self.waiting.push(Waiting::File(Arrived { ticket, name: name.to_owned(), temp, content, started, arrived }));
        Reply::Later(ticket)
    }

    /// Queues a COPY of `from` to `name` for its turn.
    pub(super) fn defer_copy(&mut self, from: &str, name: &str, digest: Digest, started: Instant) -> Reply {
        let ticket = self.ticket();
        let (from, name) = (from.to_owned(), name.to_owned());
        self.waiting.push(Waiting::Copy(CopyWaiting { ticket, from, name, digest, started, then_delete: None }));
        Reply::Later(ticket)
    }

    /// A DELETE of `name`: joins the COPY last queued when `name` is its
    /// source (nothing came between them), to be answered with it.
    pub(super) fn join_delete(&mut self, name: &str) -> Option<Reply> {
        let joins = matches!(self.waiting.last(), Some(Waiting::Copy(c)) if c.from == name && c.then_delete.is_none());
        if !joins {
            return None;
        }
        let ticket = self.ticket();
        if let Some(Waiting::Copy(c)) = self.waiting.last_mut() {
            c.then_delete = Some(ticket);
        }
        Some(Reply::Later(ticket))
    }

    fn ticket(&mut self) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1);
        ticket
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
            || first.arrived().elapsed() >= MAX_BATCH_WAIT
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
        let files: Vec<&std::fs::File> = waiting
            .iter()
            .filter_map(|w| match w {
                Waiting::File(a) => Some(&a.temp.file),
                Waiting::Copy(_) => None,
            })
            .collect();
        let mut synced = dropsync_io::sync_many::sync_all(&files).into_iter();
        for waiting in waiting {
            let arrived = match waiting {
                Waiting::File(arrived) => arrived,
                Waiting::Copy(copy) => {
                    self.install_copy(copy);
                    continue;
                }
            };
            let synced = synced.next().unwrap_or_else(|| Err(std::io::Error::other("not synced")));
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

    /// A COPY in its turn: our source renamed when a DELETE of it came
    /// right behind (both answered 0x0001), else copied, then the DELETE.
    fn install_copy(&mut self, copy: CopyWaiting) {
        let CopyWaiting { ticket, from, name, digest, started, then_delete } = copy;
        if let Some(delete) = then_delete {
            if self.rename_here(&from, &name, &digest) {
                self.ended(&name, started);
                self.delivered.push(super::SessionEvent::Delivered { name: from, started });
                self.batch.replies.extend([(ticket, StatusCode::OK), (delete, StatusCode::OK)]);
                return;
            }
        }
        let reply = self.copy_here(&from, &name, &digest, started);
        self.batch.replies.push((ticket, reply));
        if let Some(delete) = then_delete {
            let reply = self.delete_here(&from);
            self.batch.replies.push((delete, reply));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(batch: &mut Batch, from: &str, name: &str) -> Reply {
        batch.defer_copy(from, name, [7; 16], Instant::now())
    }

    fn ticket(reply: Option<Reply>) -> Option<u64> {
        match reply {
            Some(Reply::Later(t)) => Some(t),
            _ => None,
        }
    }

    #[test]
    fn a_delete_joins_only_the_copy_right_before_it_from_the_same_source() {
        let mut b = Batch::default();
        assert_eq!(ticket(b.join_delete("a")), None, "nothing waits");
        let Reply::Later(first) = copy(&mut b, "a", "b") else { panic!("a COPY waits its turn") };
        assert_eq!(ticket(b.join_delete("x")), None, "not its source");
        let joined = ticket(b.join_delete("a")).expect("the DELETE of its source joins it");
        assert_ne!(joined, first, "each has its own reply");
        assert_eq!(ticket(b.join_delete("a")), None, "joined once");
        copy(&mut b, "c", "d");
        copy(&mut b, "e", "f");
        assert_eq!(ticket(b.join_delete("c")), None, "another COPY came between");
        assert!(b.due(false), "due once nothing more is coming");
    }
}
