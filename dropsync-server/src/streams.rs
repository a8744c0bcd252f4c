//! [ext] Streaming deliveries (docs/PROTOCOL.md, "Streaming deliveries";
//! issue 19's B2, what Dropbox calls streaming sync): a large upload is
//! offered to the other clients' senders while it arrives, so that they
//! receive it side by side with the upload instead of after it. A
//! delivery of it sends the chunks already written to the upload's temp
//! file, waits for more, and sends its last chunk and FINISHED only once
//! the upload has committed (with the version that commit made); if the
//! upload ends any other way (aborted, refused, identical to what the path
//! holds), the delivery ends with ABORT and the client drops what it got.
//! Nothing half-written replaces a file anywhere: the client writes a
//! delivery to a temp file and renames it into place at FINISHED, as ever.
//!
//! A bad uploader only hurts itself: a delivery that waits [`STALL`] for the
//! upload's next chunk (or that long in all while other work waits for its
//! client, or [`COMMIT_WAIT`] for the commit) gives up (ABORT), and the
//! client gets the path as usual once it is committed (the commit queues it for every client, and
//! a streamed delivery that arrived makes that queued one a skip).

use std::collections::VecDeque;
use std::fs::File;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use dropsync_core::locks::SessionId;
use dropsync_proto::Digest;

use crate::server::Server;
use crate::session::Session;

/// An upload is offered once this many of its bytes are accepted: a
/// smaller one is over before a delivery of it gets far, and would only
/// make the delivery twice (B3's small files never stream).
pub const OFFER_AFTER: u64 = 8 << 20;

/// A streaming delivery that has had nothing to send this long (its upload
/// wrote no whole chunk more) gives up on it (ABORT).
pub const STALL: Duration = Duration::from_secs(2);

/// A complete upload whose commit keeps a streamed delivery that has sent
/// all it could waiting this long (a slow disk, a busy bucket) is given up
/// by it.
pub const COMMIT_WAIT: Duration = Duration::from_secs(30);

/// Streams offered to one session and not taken yet: an older offer makes
/// way (its path is delivered as usual once committed).
pub const MAX_OFFERED: usize = 4;

/// Sessions one upload is offered to (each delivery holds a descriptor of
/// the temp file); the others get the path once it is committed.
pub const MAX_WATCHERS: usize = 64;

/// Most chunk digests kept per stream (64 MiB of chunks at 1 KiB, 64 GiB
/// at 1 MiB); past them, a delivery hashes its chunks itself.
const MAX_DIGESTS: usize = 1 << 16;

/// How an upload being streamed ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Committed as this version, of this size and whole-file MD5.
    Committed {
        /// The version the commit made.
        version: u64,
        /// Its size.
        size: u64,
        /// Its whole-file MD5.
        md5: Digest,
    },
    /// Anything else: its deliveries ABORT.
    Failed,
}

/// An upload in progress that deliveries may follow.
#[derive(Debug)]
pub struct Stream {
    /// The path being uploaded.
    path: String,
    /// The session uploading it (never offered its own upload).
    uploader: SessionId,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes written to the temp file so far (all of them checked).
    written: u64,
    /// The uploader's chunk size (its first chunk's), and the MD5 of each
    /// of its chunks checked so far while they all have that size.
    chunk: u32,
    digests: Vec<Digest>,
    /// A chunk of another size came: only the digests before it are kept.
    digests_end: bool,
    /// Its FINISHED checked out: it is being committed.
    finishing: bool,
    end: Option<End>,
    /// The senders following it, woken when it grows or ends.
    watchers: Vec<(SessionId, Weak<Session>)>,
}

/// Where a stream is, for a delivery following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes that may be sent.
    pub written: u64,
    /// The upload is complete and being committed: no more bytes come.
    pub finishing: bool,
    /// How it ended, once it did.
    pub end: Option<End>,
}

impl Stream {
    /// A stream of the upload of `path` by session `uploader`.
    pub fn new(path: &str, uploader: SessionId) -> Arc<Self> {
        Arc::new(Stream { path: path.to_owned(), uploader, state: Mutex::new(State::default()) })
    }

    /// The path being uploaded.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A chunk of `len` bytes whose MD5 is `digest` checked out (before it
    /// is written).
    pub fn checked(&self, digest: &Digest, len: usize) {
        let mut s = self.state();
        let Ok(len) = u32::try_from(len) else {
            s.digests_end = true;
            return;
        };
        if s.digests.is_empty() && !s.digests_end {
            s.chunk = len;
        }
        if s.digests_end || len != s.chunk || s.digests.len() >= MAX_DIGESTS {
            s.digests_end = true;
            return;
        }
        s.digests.push(*digest);
    }

    /// `len` more bytes are in the temp file: deliveries may send them.
    pub fn wrote(&self, len: usize) {
        let watchers = {
            let mut s = self.state();
            s.written += len as u64;
            live(&s.watchers)
        };
        wake(&watchers);
    }

    /// The whole upload is written and checked: it is being committed
    /// (which may take a while on a disk), and is not stalled.
    pub fn finishing(&self) {
        self.state().finishing = true;
    }

    /// The upload ended: deliveries finish (a commit) or ABORT. Only the
    /// first end counts.
    pub fn end(&self, end: End) {
        let watchers = {
            let mut s = self.state();
            if s.end.is_some() {
                return;
            }
            s.end = Some(end);
            live(&std::mem::take(&mut s.watchers))
        };
        wake(&watchers);
    }

    /// Where it is now.
    pub fn progress(&self) -> Progress {
        let s = self.state();
        Progress { written: s.written, finishing: s.finishing, end: s.end }
    }

    /// The MD5 of the `len` bytes at `offset`, when they are one of the
    /// uploader's chunks (checked when they arrived).
    pub fn chunk_digest(&self, offset: u64, len: u32) -> Option<Digest> {
        let s = self.state();
        let chunk = u64::from(s.chunk);
        if chunk == 0 || len != s.chunk || !offset.is_multiple_of(chunk) {
            return None;
        }
        s.digests.get(usize::try_from(offset / chunk).ok()?).copied()
    }

    /// Adds `session` to those woken as it grows; false once it ended or
    /// has [`MAX_WATCHERS`].
    fn watch(&self, session: &Arc<Session>) -> bool {
        let mut s = self.state();
        s.watchers.retain(|(_, w)| w.strong_count() > 0);
        if s.end.is_some() || s.watchers.len() >= MAX_WATCHERS {
            return false;
        }
        s.watchers.push((session.id, Arc::downgrade(session)));
        true
    }

    /// Session `id` follows it no more (its delivery ended, or its offer
    /// made way): it is not woken any more, nor counted.
    pub fn unwatch(&self, id: SessionId) {
        self.state().watchers.retain(|(w, _)| *w != id);
    }
}

fn live(watchers: &[(SessionId, Weak<Session>)]) -> Vec<Arc<Session>> {
    watchers.iter().filter_map(|(_, w)| w.upgrade()).collect()
}

fn wake(sessions: &[Arc<Session>]) {
    for s in sessions {
        s.stream_moved();
    }
}

/// Ends its stream as failed when dropped, unless it was ended before:
/// however an upload ends (refused, aborted, its connection gone), its
/// deliveries do not wait for it.
#[derive(Debug)]
pub struct Guard(pub Arc<Stream>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.end(End::Failed);
    }
}

/// A stream offered to one session: the stream, and the session's own
/// descriptor of the upload's temp file (opened while it is there: the
/// commit renames it).
#[derive(Debug)]
pub struct Offer {
    /// The upload.
    pub stream: Arc<Stream>,
    /// Its temp file, to read from.
    pub file: File,
}

/// Offers `stream` (its temp file at `temp`) to every other session that
/// said HELLO, up to [`MAX_WATCHERS`] of them, and wakes their senders.
pub fn offer(server: &Server, stream: &Arc<Stream>, temp: &Path) {
    for session in server.all_sessions() {
        if session.id == stream.uploader || session.is_legacy() || session.is_closed() {
            continue;
        }
        let Ok(file) = File::open(temp) else {
            // Committed or gone meanwhile: it is delivered as usual.
            return;
        };
        if !stream.watch(&session) {
            return;
        }
        session.offer_stream(Offer { stream: stream.clone(), file });
        server.wake(&session);
    }
}

/// The offers one session has not taken yet, oldest first.
#[derive(Debug, Default)]
pub struct Offers(Mutex<VecDeque<Offer>>);

impl Offers {
    /// Adds an offer; the oldest makes way beyond [`MAX_OFFERED`] and is
    /// returned.
    pub fn push(&self, offer: Offer) -> Option<Offer> {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let out = if q.len() >= MAX_OFFERED { q.pop_front() } else { None };
        q.push_back(offer);
        out
    }

    /// The oldest offer whose upload is still under way (those that ended
    /// are dropped: their paths are delivered as usual).
    pub fn take(&self) -> Option<Offer> {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(offer) = q.pop_front() {
            if offer.stream.progress().end.is_none() {
                return Some(offer);
            }
        }
        None
    }

    /// True when no offer of an upload still under way waits (those whose
    /// upload ended are dropped here too).
    pub fn is_empty(&self) -> bool {
        let mut q = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        q.retain(|o| o.stream.progress().end.is_none());
        q.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_proto::md5;

    #[test]
    fn chunk_digests_are_kept_while_the_chunks_have_one_size() {
        let s = Stream::new("f", 1);
        s.checked(&md5(b"aaaa"), 4);
        s.checked(&md5(b"bbbb"), 4);
        s.checked(&md5(b"cc"), 2);
        s.checked(&md5(b"dddd"), 4);
        assert_eq!(s.chunk_digest(0, 4), Some(md5(b"aaaa")));
        assert_eq!(s.chunk_digest(4, 4), Some(md5(b"bbbb")));
        assert_eq!(s.chunk_digest(8, 2), None, "a chunk of another size ends the list");
        assert_eq!(s.chunk_digest(12, 4), None);
        assert_eq!(s.chunk_digest(2, 4), None, "not a chunk's offset");
    }

    #[test]
    fn a_stream_ends_once_and_its_guard_fails_it_unless_it_ended() {
        let s = Stream::new("f", 1);
        s.wrote(10);
        assert_eq!(s.progress(), Progress { written: 10, finishing: false, end: None });
        let committed = End::Committed { version: 7, size: 10, md5: md5(b"x") };
        s.end(committed);
        drop(Guard(s.clone()));
        assert_eq!(s.progress().end, Some(committed));
        let t = Stream::new("g", 1);
        drop(Guard(t.clone()));
        assert_eq!(t.progress().end, Some(End::Failed));
    }
}
