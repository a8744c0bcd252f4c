//! The sending side of one connection: the operations whose messages go out
//! on it (uploads, DELETEs, REQUESTs), each message encoded, each reply
//! matched, with no I/O. The client's send connection and the server's
//! receive connection (deliveries) are both driven through it; they differ
//! in their [`Source`], which makes a chunk's bytes ready and says their
//! MD5 (the client reads its file, the server hashes a stored blob it then
//! streams).
//!
//! Under it is the [`Mux`]: every operation stop-and-wait on its own,
//! messages of different operations interleaved, replies matched in order
//! (PROTOCOL.md section 4). On top it keeps what the driver attaches to
//! each operation, the FINISHED digest actually sent, and how each ended.
//!
//! The driver's loop: [`poll_transmit`](Sending::poll_transmit) until it
//! returns `None`, writing what [`take_frames`](Sending::take_frames) gives
//! and, after each [`Transmit::Chunk`], that chunk's payload; hand every
//! STATUS to [`handle_reply`](Sending::handle_reply); collect what ended
//! with [`poll_ended`](Sending::poll_ended).

use std::collections::{HashMap, VecDeque};
use std::io;

use dropsync_proto::{encode_chunk_header, Digest, Frame, StatusCode};

use crate::mux::{Mux, MuxReply, OpId, SingleKind, Step};
use crate::sender::{Outcome, Recorded, Sender};
use crate::CoreError;

/// What the driver knows of a file's whole-file MD5 when it adds an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileDigest {
    /// Known (a stored blob's, a file hashed to decide to send it): chunks
    /// may be streamed without passing their bytes through here.
    Known(Digest),
    /// Computed by the [`Source`] from the chunks it reads, and given with
    /// the last one ([`Prepared::file_digest`]).
    FromSource,
    /// Computed here from the chunks' bytes ([`Prepared::payload`] must be
    /// given).
    FromChunks,
}

/// A chunk made ready by a [`Source`].
#[derive(Debug)]
pub struct Prepared<'a> {
    /// The bytes, when the source holds them. Without them the upload must
    /// have a whole-file digest known or computed elsewhere
    /// ([`FileDigest::Known`], [`FileDigest::FromSource`], a stream), and
    /// the driver streams exactly `len` bytes whose MD5 is `digest`.
    pub payload: Option<&'a [u8]>,
    /// How many bytes there are: fewer than asked means the file shrank.
    pub len: u32,
    /// Their MD5, for the FILE_CHUNK header.
    pub digest: Digest,
    /// The whole-file MD5 of a [`FileDigest::FromSource`] upload, once the
    /// source has read the whole file.
    pub file_digest: Option<Digest>,
}

/// Where chunks come from. `Op` is what the driver keeps per operation.
pub trait Source<Op> {
    /// The `len` bytes at `offset` of upload `id` (`name`, kept as `op`)
    /// go on the wire next: make them ready and say their MD5. `Err` (the
    /// file cannot be read) aborts the upload.
    fn prepare(&mut self, id: OpId, name: &str, op: &mut Op, offset: u64, len: u32) -> io::Result<Prepared<'_>>;
}

/// What the driver writes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transmit {
    /// A chunk of upload `id`: its header ends what
    /// [`take_frames`](Sending::take_frames) gives now, and its `len`
    /// payload bytes (the ones its source prepared) must follow it.
    Chunk {
        /// The upload.
        id: OpId,
        /// Where the bytes start in the file.
        offset: u64,
        /// How many.
        len: u32,
    },
}

/// Why an operation ended without a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The peer's reply (or, for an ABORT sent, its 0x0001).
    Reply,
    /// Its source gave a chunk of another length (the file changed under
    /// the upload) before anything of it was on the wire.
    Changed,
    /// Its source could not be read.
    Unreadable(String),
    /// [`Sending::abort`] or [`Sending::abort_all`].
    Aborted,
}

/// An operation that is over.
#[derive(Debug)]
pub struct Ended<Op> {
    /// Its id.
    pub id: OpId,
    /// Its path.
    pub name: String,
    /// What the driver kept for it.
    pub op: Op,
    /// How it ended.
    pub outcome: Outcome,
    /// The whole-file MD5 its FINISHED carried, if one was sent.
    pub sent_digest: Option<Digest>,
    /// What ended it.
    pub cause: Cause,
}

/// What a STATUS did, from [`Sending::handle_reply`].
#[derive(Debug)]
pub enum Replied<Op> {
    /// A keep-alive: not a reply.
    KeepAlive,
    /// A reply that moved operation `id` on (a chunk accepted or to resend).
    Progress {
        /// The operation.
        id: OpId,
    },
    /// A reply that ended an operation.
    Ended(Ended<Op>),
}

struct Op<O> {
    name: String,
    /// A COPY's source path.
    from: Option<String>,
    op: O,
    sent_digest: Option<Digest>,
    /// Why it was given up, when an ABORT had to follow first.
    gave_up: Option<Cause>,
}

/// The sending side of one connection.
pub struct Sending<O> {
    mux: Mux,
    ops: HashMap<OpId, Op<O>>,
    by_name: HashMap<String, usize>,
    frames: Vec<u8>,
    ended: VecDeque<Ended<O>>,
}

impl<O> Sending<O> {
    /// At most `max_in_flight` operations active at once (section 4 [ext]:
    /// `--parallel`, or 1 for a legacy peer).
    pub fn new(max_in_flight: usize) -> Self {
        Sending {
            mux: Mux::new(max_in_flight),
            ops: HashMap::new(),
            by_name: HashMap::new(),
            frames: Vec::new(),
            ended: VecDeque::new(),
        }
    }

    /// Adds an upload of `name`, `size` bytes in chunks of at most
    /// `chunk_size`.
    pub fn add_upload(&mut self, name: String, size: u64, chunk_size: u32, digest: FileDigest, op: O) -> OpId {
        let id = match digest {
            FileDigest::Known(d) => self.mux.add_upload_with_digest(name.clone(), size, chunk_size, d),
            FileDigest::FromSource => self.mux.add_upload_hashed_elsewhere(name.clone(), size, chunk_size),
            FileDigest::FromChunks => self.mux.add_upload(name.clone(), size, chunk_size),
        };
        self.insert(id, name, op)
    }

    /// Adds a transfer of `name`, a file still being written, in chunks of
    /// at most `chunk_size` (the server's streaming deliveries; see
    /// [`Mux::add_stream`]). Its source is asked only for chunks made
    /// available with [`grow`](Self::grow), and must give their MD5s
    /// without the bytes ([`Prepared::payload`] `None`).
    pub fn add_stream(&mut self, name: String, chunk_size: u32, op: O) -> OpId {
        let id = self.mux.add_stream(name.clone(), chunk_size);
        self.insert(id, name, op)
    }

    /// The first `available` bytes of stream `id` may be sent.
    pub fn grow(&mut self, id: OpId, available: u64) {
        self.mux.grow(id, available);
    }

    /// Stream `id` is complete: `size` bytes whose MD5 is `digest`; false
    /// when that cannot be (the caller aborts it).
    pub fn complete(&mut self, id: OpId, size: u64, digest: Digest) -> bool {
        self.mux.complete(id, size, digest)
    }

    /// Adds a DELETE of `name`; `held` is the MD5 of the version the sender
    /// holds, or zeros.
    pub fn add_delete(&mut self, name: String, held: Digest, op: O) -> OpId {
        let id = self.mux.add_single(name.clone(), SingleKind::Delete, held);
        self.insert(id, name, op)
    }

    /// Adds a REQUEST of `name`; `held` as for [`add_delete`](Self::add_delete).
    pub fn add_request(&mut self, name: String, held: Digest, op: O) -> OpId {
        let id = self.mux.add_single(name.clone(), SingleKind::Request, held);
        self.insert(id, name, op)
    }

    /// Adds a COPY [ext] of `from`'s content, whose MD5 is `digest`, to
    /// `name` (send it only to a peer that took the COPY offer).
    pub fn add_copy(&mut self, from: String, name: String, digest: Digest, op: O) -> OpId {
        let id = self.mux.add_single(name.clone(), SingleKind::Copy, digest);
        let id = self.insert(id, name, op);
        if let Some(o) = self.ops.get_mut(&id) {
            o.from = Some(from);
        }
        id
    }

    fn insert(&mut self, id: OpId, name: String, op: O) -> OpId {
        *self.by_name.entry(name.clone()).or_insert(0) += 1;
        self.ops.insert(id, Op { name, from: None, op, sent_digest: None, gave_up: None });
        id
    }

    /// True when an operation on `name` is under way.
    pub fn has(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The operations under way on `name`, oldest first.
    pub fn ids_named(&self, name: &str) -> Vec<OpId> {
        let mut ids: Vec<OpId> = self.ops.iter().filter(|(_, o)| o.name == name).map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids
    }

    /// Operations under way.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when no operation is under way.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// True when no message awaits its reply (operations may still wait
    /// to be sent): a STATUS arriving now would be out of step.
    pub fn is_idle(&self) -> bool {
        self.mux.is_idle()
    }

    /// Messages on the wire awaiting their replies.
    pub fn in_flight(&self) -> usize {
        self.mux.in_flight()
    }

    /// What the driver keeps for operation `id`, with its name.
    pub fn op(&self, id: OpId) -> Option<(&str, &O)> {
        self.ops.get(&id).map(|o| (o.name.as_str(), &o.op))
    }

    /// The same, to change.
    pub fn op_mut(&mut self, id: OpId) -> Option<&mut O> {
        self.ops.get_mut(&id).map(|o| &mut o.op)
    }

    /// The transfer state of upload `id` (size, bytes acknowledged).
    pub fn sender(&self, id: OpId) -> Option<&Sender> {
        self.mux.sender(id)
    }

    /// The chunk of upload `id` that comes after `offset` at most
    /// `chunk_size` bytes long, if the file has bytes there: what a driver
    /// reads (or hashes) ahead while the reply to the chunk before it is
    /// awaited.
    pub fn next_range(&self, id: OpId, offset: u64, chunk_size: u32) -> Option<(u64, u32)> {
        let size = self.mux.sender(id)?.size();
        (offset < size).then(|| (offset, u64::from(chunk_size).min(size - offset) as u32))
    }

    /// Encodes the messages that are ready into the frames buffer, until a
    /// chunk's header, which is returned for its payload to follow; `None`
    /// when nothing more can be sent until a reply comes.
    pub fn poll_transmit(&mut self, source: &mut impl Source<O>) -> Option<Transmit> {
        loop {
            let (id, step) = self.mux.poll_send()?;
            let Some(op) = self.ops.get_mut(&id) else {
                // Every id the mux hands out was inserted with it.
                let _ = self.mux.abort(id);
                continue;
            };
            let name = op.name.as_str();
            match step {
                Step::Chunk { offset, len } => {
                    let recorded = match source.prepare(id, name, &mut op.op, offset, len) {
                        Ok(p) => {
                            if let Some(file) = p.file_digest {
                                let _ = self.mux.set_digest(id, file);
                            }
                            match p.payload {
                                Some(bytes) => self.mux.record_chunk_hashed(id, bytes, p.digest),
                                None => self.mux.record_chunk_digest(id, p.len, p.digest),
                            }
                        }
                        Err(e) => {
                            self.give_up(id, Cause::Unreadable(e.to_string()));
                            continue;
                        }
                    };
                    match recorded {
                        Recorded::Send { digest } => {
                            encode_chunk_header(&digest, name, len, &mut self.frames);
                            return Some(Transmit::Chunk { id, offset, len });
                        }
                        Recorded::WrongLength { .. } | Recorded::NotExpected => self.give_up(id, Cause::Changed),
                    }
                }
                Step::Finished { digest } => {
                    op.sent_digest = Some(digest);
                    Frame::Finished { digest, name }.encode(&mut self.frames);
                }
                Step::Abort => Frame::abort(name).encode(&mut self.frames),
                Step::Delete { digest } => Frame::Delete { digest, name }.encode(&mut self.frames),
                Step::Request { digest } => Frame::Request { digest, name }.encode(&mut self.frames),
                Step::Copy { digest } => {
                    let from = op.from.as_deref().unwrap_or_default();
                    Frame::Copy { digest, from, name }.encode(&mut self.frames);
                }
            }
        }
    }

    /// Moves the encoded messages into `out` (appended).
    pub fn take_frames(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.frames);
    }

    /// Feeds a STATUS from the peer. `Err`: a reply with no message waiting
    /// for it; the connection is out of step and must close.
    pub fn handle_reply(&mut self, code: StatusCode) -> Result<Replied<O>, CoreError> {
        match self.mux.handle_reply(code)? {
            MuxReply::KeepAlive => Ok(Replied::KeepAlive),
            MuxReply::Routed { op, outcome: None } => Ok(Replied::Progress { id: op }),
            MuxReply::Routed { op, outcome: Some(outcome) } => match self.remove(op, outcome, Cause::Reply) {
                Some(ended) => Ok(Replied::Ended(ended)),
                None => Ok(Replied::Progress { id: op }),
            },
        }
    }

    /// Gives up on operation `id` (its file changed, the program stops): an
    /// ABORT follows from [`poll_transmit`](Self::poll_transmit) if part of
    /// it is on the wire; otherwise it ends at once (see
    /// [`poll_ended`](Self::poll_ended)).
    pub fn abort(&mut self, id: OpId) {
        self.give_up(id, Cause::Aborted);
    }

    /// Gives up on every operation (section 9: on shutdown, ABORT for the
    /// outgoing transfers in progress).
    pub fn abort_all(&mut self) {
        for (id, outcome) in self.mux.abort_all() {
            if let Some(ended) = self.remove(id, outcome, Cause::Aborted) {
                self.ended.push_back(ended);
            }
        }
    }

    /// The next operation that ended without a reply (aborted before any
    /// of it was sent, or its source failed).
    pub fn poll_ended(&mut self) -> Option<Ended<O>> {
        self.ended.pop_front()
    }

    fn give_up(&mut self, id: OpId, cause: Cause) {
        match self.mux.abort(id) {
            Some(outcome) => {
                if let Some(ended) = self.remove(id, outcome, cause) {
                    self.ended.push_back(ended);
                }
            }
            // An ABORT follows (or the reply to what is on the wire decides).
            None => {
                if let Some(op) = self.ops.get_mut(&id) {
                    op.gave_up.get_or_insert(cause);
                }
            }
        }
    }

    fn remove(&mut self, id: OpId, outcome: Outcome, cause: Cause) -> Option<Ended<O>> {
        let Op { name, op, sent_digest, gave_up, .. } = self.ops.remove(&id)?;
        let cause = gave_up.unwrap_or(cause);
        if let Some(n) = self.by_name.get_mut(&name) {
            *n -= 1;
            if *n == 0 {
                self.by_name.remove(&name);
            }
        }
        Some(Ended { id, name, op, outcome, sent_digest, cause })
    }
}

#[cfg(test)]
#[path = "sending_tests.rs"]
mod tests;
