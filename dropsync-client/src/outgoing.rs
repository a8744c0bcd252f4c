//! The send connection: uploads, DELETEs and REQUESTs, driven through
//! core's [`Sending`] machine (stop-and-wait per operation, up to
//! `--parallel` operations interleaved, replies matched in order,
//! PROTOCOL.md section 4).
//!
//! This file only moves bytes: it reads the chunk ranges the machine asks for
//! from the open file, writes frames, feeds replies back, and checks that a
//! file being uploaded is not changing under it (its stat is compared after
//! every accepted chunk; a change ABORTs the upload, which the control
//! thread retries once the file is quiet).
//!
//! One thread owns it (`send_thread.rs`): the control thread hands it
//! operations and the reply thread the server's replies, and it sends what
//! each unblocked (the next chunk) at once, so a busy control thread never
//! slows a transfer, and an operation's end is recorded the moment its
//! reply is read (see [`settle`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use dropsync_io::conn::Conn;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;

use dropsync_core::meta_client::LocalSeen;
use dropsync_core::liveness::{Due, Gone, Liveness};
use dropsync_core::mux::OpId;
use dropsync_core::reconcile::Content;
use dropsync_core::sender::Outcome;
use dropsync_core::sending::{Cause, Ended, FileDigest, Prepared, Replied, Sending, Source, Transmit};
use dropsync_core::CoreError;
use dropsync_io::wire::write_frame;
use dropsync_proto::md5_pair::{md5_chunk_into, FileMd5};
use dropsync_proto::{Digest, Frame, StatusCode};

use crate::progress::{Direction, Progress};
use crate::scan::{probe, FileStat, Probe};
use crate::state::Ctx;

/// Messages are gathered into one write up to this size, and a chunk
/// payload this large is written straight from its buffer instead.
const GATHER_MAX: usize = 64 * 1024;

/// Records in the shared state what an ended operation means, at once:
/// the path is no longer being sent (so an incoming transfer of it is
/// accepted again), and an accepted change becomes the base.
pub fn settle(ctx: &Ctx, done: &Done) {
    let mut st = ctx.shared.lock();
    match done {
        Done::Upload { name, stat, content, outcome } => {
            st.outgoing.remove(name);
            match (outcome, content) {
                (Outcome::Committed, Some(content)) => st.set_synced(name, *content, stat.mtime_ns),
                // Section 7: the local state is recorded anyway (when the
                // content is known; else the control thread looks first).
                (Outcome::Refused(_), Some(content)) => {
                    st.set_local(name, Some(LocalSeen { mtime_ns: stat.mtime_ns, content: *content }))
                }
                _ => {}
            }
        }
        Done::Copy { name, stat, content, outcome, .. } => {
            st.outgoing.remove(name);
            if *outcome == Outcome::Committed {
                st.set_synced(name, *content, stat.mtime_ns);
            }
        }
        Done::Delete { name, outcome } => {
            st.outgoing.remove(name);
            if *outcome == Outcome::Committed {
                st.set_deleted(name);
            }
        }
        Done::Request { .. } => {}
    }
}

/// An operation on the send connection, as the control thread sees it end.
#[derive(Debug)]
pub enum Done {
    /// An upload ended.
    Upload {
        /// The path.
        name: String,
        /// The stat the file had when the upload started.
        stat: FileStat,
        /// When committed, the content the server now has (the digest of
        /// the bytes actually sent). Otherwise the content the upload
        /// started from, or what its FINISHED claimed; `None` when the file
        /// was never hashed whole (an upload of a path the server never had
        /// is not hashed before it starts, see [`Outgoing::add_upload`]).
        content: Option<Content>,
        /// How it ended.
        outcome: Outcome,
    },
    /// A COPY [ext] was answered (or dropped before it was sent).
    Copy {
        /// The path.
        name: String,
        /// The path it named as the content's.
        from: String,
        /// The file's stat when it was judged.
        stat: FileStat,
        /// The content it names.
        content: Content,
        /// How it ended.
        outcome: Outcome,
    },
    /// A DELETE was answered (or dropped before it was sent: `Aborted`).
    Delete {
        /// The path.
        name: String,
        /// How it ended.
        outcome: Outcome,
    },
    /// A REQUEST was answered (or dropped before it was sent: `Aborted`).
    Request {
        /// The path.
        name: String,
        /// How it ended.
        outcome: Outcome,
    },
}

#[derive(Debug)]
enum Kind {
    Upload {
        file: File,
        path: PathBuf,
        stat: FileStat,
        /// The content hashed before the upload, if it was.
        hashed: Option<Content>,
        /// The whole-file MD5, computed in the same pass as each chunk's
        /// own MD5 as chunks are read, for a file of more than one chunk
        /// that was not hashed before.
        file_md5: Option<FileMd5>,
    },
    Copy {
        from: String,
        stat: FileStat,
        content: Content,
    },
    Delete,
    Request,
}

/// What the client keeps for one operation on the send connection.
#[derive(Debug)]
struct Op {
    kind: Kind,
    started: Instant,
}

/// The sending half of the send connection: core's [`Sending`] machine
/// (the mux, frames, replies matched), its [`Reader`] of chunks, and the
/// socket it writes to.
pub struct Outgoing {
    sock: Conn,
    sending: Sending<Op>,
    reader: Reader,
    chunk_size: u32,
    /// Keep-alive and dead-peer clocks of the send connection: the replies
    /// thread reports what arrives, writes here report what leaves.
    link: Liveness,
    frame: Vec<u8>,
    progress: Progress,
}

/// Reads and hashes chunks of the files being uploaded, for the machine.
#[derive(Debug, Default)]
struct Reader {
    /// The chunk just prepared, which the driver writes next.
    chunk: Vec<u8>,
    /// The next chunk of each upload, read and hashed while the reply to
    /// the current one is awaited (see [`Outgoing::prefetch`]).
    prefetched: HashMap<OpId, Prefetched>,
    /// A chunk buffer to read ahead into: buffers go round between this,
    /// `chunk` and `prefetched` instead of being allocated per chunk (a
    /// fresh 1 MiB buffer costs 256 page faults).
    spare: Vec<u8>,
}

/// A chunk read and hashed ahead of time.
#[derive(Debug)]
struct Prefetched {
    offset: u64,
    data: Vec<u8>,
    digest: Digest,
    file_digest: Option<Digest>,
}

impl Source<Op> for Reader {
    fn prepare(&mut self, id: OpId, _name: &str, op: &mut Op, offset: u64, len: u32) -> io::Result<Prepared<'_>> {
        let Kind::Upload { file, file_md5, stat, .. } = &mut op.kind else {
            return Err(io::Error::other("a chunk of a DELETE or REQUEST"));
        };
        let ready = self.prefetched.remove(&id).filter(|p| p.offset == offset && p.data.len() == len as usize);
        let (digest, file_digest) = match ready {
            Some(p) => {
                self.spare = std::mem::replace(&mut self.chunk, p.data);
                (p.digest, p.file_digest)
            }
            None => {
                read_at(file, offset, len, &mut self.chunk)?;
                hash_chunk(file_md5, stat.size, offset, &self.chunk)
            }
        };
        Ok(Prepared { payload: Some(&self.chunk), len: self.chunk.len() as u32, digest, file_digest })
    }
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing").field("operations", &self.sending.len()).finish_non_exhaustive()
    }
}

impl Outgoing {
    /// Drives `sock`, with at most `parallel` operations in flight and
    /// chunks of at most `chunk_size` bytes.
    pub fn new(sock: Conn, parallel: usize, chunk_size: u32, link: Liveness) -> Self {
        Outgoing {
            sock,
            sending: Sending::new(parallel),
            reader: Reader::default(),
            chunk_size,
            link,
            frame: Vec::new(),
            progress: Progress::new(),
        }
    }

    /// Largest chunk sent.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// True when a file of `size` bytes goes out in more than one chunk.
    fn spans_chunks(&self, size: u64) -> bool {
        size > u64::from(self.chunk_size)
    }

    /// True when no operation is under way.
    pub fn is_empty(&self) -> bool {
        self.sending.is_empty()
    }

    /// Queues an upload of `name` from the open `file`, which had `stat`
    /// when it was opened.
    ///
    /// With `trusted` content (the file was hashed to decide to send it),
    /// the FINISHED carries its digest and the chunks are not hashed a
    /// second time. Without (a path the server never had, which is sent
    /// whatever its content, or a retry after the server's 0x0008, so a
    /// stale digest can never make an upload fail twice), the whole-file
    /// digest is computed from the chunks as they are read; no pass over
    /// the file delays the first chunk.
    pub fn add_upload(&mut self, name: String, file: File, path: PathBuf, stat: FileStat, trusted: Option<Content>) {
        let mut file_md5 = None;
        let digest = match trusted {
            Some(content) => FileDigest::Known(content.md5),
            None if self.spans_chunks(stat.size) => {
                file_md5 = Some(FileMd5::default());
                FileDigest::FromSource
            }
            // One chunk: its MD5 is the whole-file MD5.
            None => FileDigest::FromChunks,
        };
        let size = stat.size;
        let kind = Kind::Upload { file, path, stat, hashed: trusted, file_md5 };
        self.sending.add_upload(name, size, self.chunk_size, digest, Op { kind, started: Instant::now() });
    }

    /// Queues a DELETE of `name`, whose last version we held is `held`.
    pub fn add_delete(&mut self, name: String, held: Digest) {
        self.sending.add_delete(name, held, Op { kind: Kind::Delete, started: Instant::now() });
    }

    /// Queues a COPY [ext] of `from`'s content, which `name`'s file (of
    /// `stat`) holds too: sent only in a session whose COPY offer the
    /// server took. A 0x0020 means the server's `from` is not that content
    /// any more: the file is uploaded instead.
    pub fn add_copy(&mut self, name: String, from: String, stat: FileStat, content: Content) {
        let kind = Kind::Copy { from: from.clone(), stat, content };
        self.sending.add_copy(from, name, content.md5, Op { kind, started: Instant::now() });
    }

    /// Queues a REQUEST of `name`; `held` is the version we hold, or zeros.
    pub fn add_request(&mut self, name: String, held: Digest) {
        self.sending.add_request(name, held, Op { kind: Kind::Request, started: Instant::now() });
    }

    /// Sends every message the machine has ready. Returns the operations
    /// that ended without a reply (an upload whose file changed before
    /// anything of it was sent).
    ///
    /// Small messages are gathered and written together (many small files
    /// make one write and one wake-up of the server, not two per file); a
    /// large chunk goes out at once in a writev of its header and payload,
    /// and so does everything gathered before a chunk whose next one is
    /// read ahead, so the server is never kept waiting by that read.
    pub fn pump(&mut self) -> io::Result<Vec<Done>> {
        self.frame.clear();
        while let Some(Transmit::Chunk { id, offset, len }) = self.sending.poll_transmit(&mut self.reader) {
            self.sending.take_frames(&mut self.frame);
            if self.reader.chunk.len() >= GATHER_MAX {
                // Header and payload in one writev: the payload is not
                // copied into the frame buffer first.
                write_all_vectored(&mut self.sock, &self.frame, &self.reader.chunk)?;
                self.frame.clear();
                self.link.on_sent(Instant::now());
            } else {
                self.frame.extend_from_slice(&self.reader.chunk);
            }
            if let Some((next, next_len)) = self.sending.next_range(id, offset + u64::from(len), self.chunk_size) {
                self.flush()?;
                self.prefetch(id, next, next_len);
            }
            if self.frame.len() >= GATHER_MAX {
                self.flush()?;
            }
        }
        self.sending.take_frames(&mut self.frame);
        self.flush()?;
        let mut done = Vec::new();
        while let Some(ended) = self.sending.poll_ended() {
            done.extend(self.end(ended));
        }
        Ok(done)
    }

    /// Writes the gathered messages.
    fn flush(&mut self) -> io::Result<()> {
        if !self.frame.is_empty() {
            self.sock.write_all(&self.frame)?;
            self.frame.clear();
            self.link.on_sent(Instant::now());
        }
        Ok(())
    }

    /// Reads and hashes the chunk of upload `id` at `offset` (`len` bytes),
    /// right after the previous chunk went on the wire: while the server
    /// checks that one, the client prepares the next (its chunk MD5 and,
    /// when the whole-file digest is not known yet, that pass too), so the
    /// client's and the server's MD5 passes run side by side on two cores
    /// instead of one after the other. A resend, a halved chunk or a
    /// changed file simply finds no match and reads again.
    fn prefetch(&mut self, id: OpId, offset: u64, len: u32) {
        let reader = &mut self.reader;
        let mut data = reader.prefetched.remove(&id).map_or_else(|| std::mem::take(&mut reader.spare), |p| p.data);
        let Some(Op { kind: Kind::Upload { file, file_md5, stat, .. }, .. }) = self.sending.op_mut(id) else {
            reader.spare = data;
            return;
        };
        if read_at(file, offset, len, &mut data).is_ok() {
            let (digest, file_digest) = hash_chunk(file_md5, stat.size, offset, &data);
            reader.prefetched.insert(id, Prefetched { offset, data, digest, file_digest });
        }
    }

    /// Feeds a STATUS reply to the machine; returns the operation it ended,
    /// if any. An upload still going on has its file's stat checked, and is
    /// aborted if the file changed.
    ///
    /// # Errors
    /// A reply with no message waiting for it: the connection is out of
    /// step and must be dropped.
    pub fn handle_reply(&mut self, code: StatusCode) -> Result<Option<Done>, CoreError> {
        match self.sending.handle_reply(code)? {
            Replied::KeepAlive => Ok(None),
            Replied::Ended(ended) => Ok(self.end(ended)),
            Replied::Progress { id } => {
                let mut one_chunk = false;
                if let (Some((name, op)), Some(s)) = (self.sending.op(id), self.sending.sender(id)) {
                    self.progress.update(Direction::Up, name, s.bytes_acknowledged(), Some(s.size()), op.started);
                    one_chunk = !self.spans_chunks(s.size());
                }
                // A file sent in one chunk cannot be torn between versions
                // (its FINISHED carries the MD5 of that one read), so it is
                // not looked at again; a later change is a change like any.
                if !one_chunk && self.changed_under_upload(id) {
                    self.sending.abort(id);
                    if let Some(ended) = self.sending.poll_ended() {
                        return Ok(self.end(ended));
                    }
                }
                Ok(None)
            }
        }
    }

    /// True when the file of upload `id` no longer has the stat it had when
    /// the upload started ("stat before/after").
    fn changed_under_upload(&self, id: OpId) -> bool {
        let Some((name, Op { kind: Kind::Upload { path, stat, .. }, .. })) = self.sending.op(id) else {
            return false;
        };
        let changed = !matches!(probe(path), Ok(Probe::File(now)) if now == *stat);
        if changed {
            log::info!("{name} changed while it was being sent; aborting, will retry");
        }
        changed
    }

    /// Aborts everything for shutdown (section 9); returns what ended at
    /// once. ABORTs for uploads in progress go out with the next `pump`.
    pub fn abort_all(&mut self) -> Vec<Done> {
        self.sending.abort_all();
        let mut done = Vec::new();
        while let Some(ended) = self.sending.poll_ended() {
            done.extend(self.end(ended));
        }
        done
    }

    fn end(&mut self, ended: Ended<Op>) -> Option<Done> {
        if let Some(p) = self.reader.prefetched.remove(&ended.id) {
            self.reader.spare = p.data;
        }
        self.progress.finish();
        let Ended { name, op, outcome, sent_digest, cause, .. } = ended;
        match cause {
            Cause::Changed => log::info!("{name} changed while it was being sent; will retry"),
            Cause::Unreadable(why) => log::warn!("cannot read {name}: {why}; will retry"),
            Cause::Reply | Cause::Aborted => {}
        }
        Some(match op.kind {
            Kind::Upload { stat, hashed, .. } => {
                let sent = sent_digest.map(|md5| Content { md5, size: stat.size });
                let content = match outcome {
                    Outcome::Committed => sent,
                    _ => hashed.or(sent),
                };
                Done::Upload { name, stat, content, outcome }
            }
            Kind::Copy { from, stat, content } => Done::Copy { name, from, stat, content, outcome },
            Kind::Delete => Done::Delete { name, outcome },
            Kind::Request => Done::Request { name, outcome },
        })
    }

    /// Sends a keep-alive if one is due (section 9).
    pub fn keepalive_if_due(&mut self) -> io::Result<()> {
        if self.link.poll(Instant::now()) == Due::KeepAlive {
            write_frame(&mut self.sock, &Frame::Status(StatusCode::KEEP_ALIVE), &mut self.frame)?;
            self.link.on_sent(Instant::now());
        }
        Ok(())
    }

    /// When the send connection's clocks next have something to say.
    pub fn link_timeout(&self) -> Instant {
        self.link.poll_timeout()
    }

    /// Replies (or any bytes) arrived at `now`; then whether the server
    /// is gone: silent too long, or, in a legacy session, a reply awaited
    /// too long (sections 1 and 9).
    pub fn check_link(&mut self, now: Instant, received: bool) -> Option<Gone> {
        if received {
            self.link.on_received(now);
        }
        let awaiting = !self.is_empty();
        self.link.set_awaiting(now, awaiting);
        match self.link.poll(now) {
            Due::PeerGone(gone) => Some(gone),
            _ => None,
        }
    }
}

/// The MD5 of `chunk`, read at `offset` of an upload of a file of `size`
/// bytes, and the whole-file MD5 once it is known. If the upload computes
/// its whole-file MD5 as it reads (`file_md5`) and that stands at `offset`,
/// the chunk feeds it in the same pass (two digests for about the price of
/// one, `dropsync_proto::md5_pair`); once it covers the file, that digest
/// is returned for FINISHED. A resent or shortened chunk was hashed for the
/// file already.
///
/// The caller sends these very bytes (a read-ahead that goes unused is read
/// again; should the file have changed in between, the server's whole-file
/// check refuses the upload with 0x0008, and it is tried again).
fn hash_chunk(file_md5: &mut Option<FileMd5>, size: u64, offset: u64, chunk: &[u8]) -> (Digest, Option<Digest>) {
    let Some(fm) = file_md5.as_mut().filter(|fm| fm.len() == offset) else {
        return (dropsync_proto::md5(chunk), None);
    };
    let digest = md5_chunk_into(chunk, fm);
    let file = (fm.len() >= size).then(|| fm.finish());
    (digest, file)
}

/// Writes all of `head` then all of `body`, as few writev calls as the
/// socket allows.
fn write_all_vectored(w: &mut impl Write, head: &[u8], body: &[u8]) -> io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let n = match w.write_vectored(&[io::IoSlice::new(head), io::IoSlice::new(body)]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

/// Reads up to `len` bytes at `offset` into `buf` (fewer at end of file).
fn read_at(file: &File, offset: u64, len: u32, buf: &mut Vec<u8>) -> io::Result<()> {
    buf.resize(len as usize, 0);
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `step` bytes per call, and only from the
    /// first non-empty slice: every partial-write case of a writev.
    struct Trickle {
        got: Vec<u8>,
        step: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.step);
            self.got.extend_from_slice(&buf[..n]);
            Ok(n)
        }

        fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
            let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &b[..]);
            self.write(first)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn vectored_writes_survive_partial_writes() {
        for step in [1, 2, 3, 7, 100] {
            let mut w = Trickle { got: Vec::new(), step };
            write_all_vectored(&mut w, b"header", b"payload bytes").unwrap();
            assert_eq!(w.got, b"headerpayload bytes", "step {step}");
        }
        let mut w = Trickle { got: Vec::new(), step: 4 };
        write_all_vectored(&mut w, b"", b"").unwrap();
        write_all_vectored(&mut w, b"", b"x").unwrap();
        assert_eq!(w.got, b"x");
    }
}
