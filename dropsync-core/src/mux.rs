//! Several operations interleaved on one connection (PROTOCOL.md section 4
//! [ext]), which is what parallel uploads use.
//!
//! Each operation is stop-and-wait on its own — an upload (a [`Sender`]) or
//! a single-message DELETE or REQUEST — but messages of different operations
//! may follow each other without waiting. Since the peer replies in the
//! order messages were sent, the [`Mux`] keeps the ids of the messages on
//! the wire in send order and gives each STATUS to the oldest of them.
//!
//! Only the first `max_in_flight` operations are active; the rest wait in
//! the order they were added, so at most `max_in_flight` messages are ever
//! on the wire. Active operations take turns (round robin), so one large
//! file does not hold back the small ones behind it. An operation whose name
//! equals that of an earlier operation still in the mux waits for it to end:
//! the receiver keys transfers by name, so two operations on one path must
//! never interleave.

use std::collections::VecDeque;

use dropsync_proto::{Digest, StatusCode};

use crate::sender::{Outcome, Recorded, ReplyOutcome, SendStep, Sender};
use crate::CoreError;

/// Names one operation of a [`Mux`]; ids are never reused within one mux.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(u64);

impl OpId {
    /// The number behind the id, for logs.
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Which single-message operation to send: one message, one reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SingleKind {
    /// DELETE (Delete File).
    Delete,
    /// REQUEST (Request File Update).
    Request,
    /// COPY [ext] (the source path is kept by the caller, `sending`).
    Copy,
}

/// The next message to send for one operation (see [`Mux::poll_send`]).
/// The operation's name is [`Mux::name`].
#[must_use = "the step names a message the caller must send"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Read `len` bytes at `offset`, pass them to [`Mux::record_chunk`],
    /// and send them as a FILE_CHUNK.
    Chunk {
        /// Where the chunk starts in the file.
        offset: u64,
        /// How many bytes to read and send.
        len: u32,
    },
    /// Send FINISHED with the whole file's MD5.
    Finished {
        /// MD5 of the whole file.
        digest: Digest,
    },
    /// Send ABORT.
    Abort,
    /// Send DELETE with this digest (the version held, or zeros).
    Delete {
        /// MD5 of the version the sender holds, or zeros.
        digest: Digest,
    },
    /// Send REQUEST with this digest (the version held, or zeros).
    Request {
        /// MD5 of the version the sender holds, or zeros.
        digest: Digest,
    },
    /// Send COPY [ext] with this digest (the content's MD5).
    Copy {
        /// MD5 of the content.
        digest: Digest,
    },
}

impl From<SendStep> for Step {
    fn from(step: SendStep) -> Self {
        match step {
            SendStep::Chunk { offset, len } => Step::Chunk { offset, len },
            SendStep::Finished { digest } => Step::Finished { digest },
            SendStep::Abort => Step::Abort,
        }
    }
}

/// What a STATUS did (see [`Mux::handle_reply`]).
#[must_use = "an operation may have ended"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuxReply {
    /// The STATUS answered the oldest message on the wire, of operation
    /// `op`. `outcome` is `Some` when that ended the operation (it is then
    /// gone from the mux). For DELETE and REQUEST the outcome is
    /// `Committed` for 0x0001 and `Refused(code)` for any other reply.
    Routed {
        /// The operation the reply belongs to.
        op: OpId,
        /// How the operation ended, if it did.
        outcome: Option<Outcome>,
    },
    /// A keep-alive (0x8000): not a reply (section 4); nothing changed.
    KeepAlive,
}

#[derive(Debug, Clone)]
enum Work {
    Upload(Sender),
    Single {
        kind: SingleKind,
        digest: Digest,
        sent: bool,
    },
}

#[derive(Debug, Clone)]
struct Op {
    id: OpId,
    name: String,
    work: Work,
    /// An earlier operation has the same name: this one waits for it (kept
    /// up to date as operations end, so finding the active operations
    /// compares no names).
    waits: bool,
}

/// The sending side of one connection: every operation whose messages go
/// out on it, and the order in which their replies will come back.
#[derive(Debug, Clone)]
pub struct Mux {
    max_in_flight: usize,
    next_id: u64,
    /// Operations not yet over, in the order they were added.
    ops: Vec<Op>,
    /// Operations with a message on the wire, oldest first: the owner of
    /// each STATUS to come, in order.
    outstanding: VecDeque<OpId>,
    /// The operation served last, where the round robin resumes.
    last_served: Option<OpId>,
    /// An upload whose chunk step was handed out but not yet recorded.
    announced: Option<OpId>,
}

impl Mux {
    /// A mux that lets at most `max_in_flight` operations have a message on
    /// the wire at once (0 is taken as 1, so work always progresses).
    pub fn new(max_in_flight: usize) -> Self {
        Mux {
            max_in_flight: max_in_flight.max(1),
            next_id: 0,
            ops: Vec::new(),
            outstanding: VecDeque::new(),
            last_served: None,
            announced: None,
        }
    }

    /// Queues an upload of `name`, a file of `size` bytes, in chunks of at
    /// most `chunk_size` bytes. Call [`poll_send`](Self::poll_send) after.
    pub fn add_upload(&mut self, name: String, size: u64, chunk_size: u32) -> OpId {
        self.push(name, Work::Upload(Sender::new(size, chunk_size)))
    }

    /// Like [`add_upload`](Self::add_upload) for a file whose whole-file MD5
    /// the caller already knows (see [`Sender::with_digest`]).
    pub fn add_upload_with_digest(&mut self, name: String, size: u64, chunk_size: u32, digest: Digest) -> OpId {
        self.push(name, Work::Upload(Sender::with_digest(size, chunk_size, digest)))
    }

    /// Like [`add_upload`](Self::add_upload) for a file the caller hashes
    /// itself (see [`Sender::hashed_elsewhere`]); its FINISHED waits for
    /// [`set_digest`](Self::set_digest).
    pub fn add_upload_hashed_elsewhere(&mut self, name: String, size: u64, chunk_size: u32) -> OpId {
        self.push(name, Work::Upload(Sender::hashed_elsewhere(size, chunk_size)))
    }

    /// Queues a transfer of `name`, a file still being written, in chunks
    /// of at most `chunk_size` bytes (see [`Sender::growing`]): it sends
    /// what [`grow`](Self::grow) makes available, and ends once
    /// [`complete`](Self::complete).
    pub fn add_stream(&mut self, name: String, chunk_size: u32) -> OpId {
        self.push(name, Work::Upload(Sender::growing(chunk_size)))
    }

    /// The first `available` bytes of stream `id` may be sent (see
    /// [`Sender::grow`]); call [`poll_send`](Self::poll_send) after.
    pub fn grow(&mut self, id: OpId, available: u64) {
        if let Some(s) = self.upload_mut(id) {
            s.grow(available);
        }
    }

    /// Stream `id` is complete (see [`Sender::complete`]); false when it
    /// is not a stream, or is shorter than what it made available.
    pub fn complete(&mut self, id: OpId, size: u64, digest: Digest) -> bool {
        self.upload_mut(id).is_some_and(|s| s.complete(size, digest))
    }

    /// Gives upload `id` its whole-file MD5 (see [`Sender::set_digest`]);
    /// call [`poll_send`](Self::poll_send) after.
    pub fn set_digest(&mut self, id: OpId, digest: Digest) -> bool {
        self.upload_mut(id).is_some_and(|s| s.set_digest(digest))
    }

    /// Queues a DELETE or REQUEST of `name` with `digest` (the MD5 of the
    /// version held, or zeros). Call [`poll_send`](Self::poll_send) after.
    pub fn add_single(&mut self, name: String, kind: SingleKind, digest: Digest) -> OpId {
        self.push(
            name,
            Work::Single {
                kind,
                digest,
                sent: false,
            },
        )
    }

    fn push(&mut self, name: String, work: Work) -> OpId {
        let id = OpId(self.next_id);
        self.next_id += 1;
        let waits = self.ops.iter().any(|o| o.name == name);
        self.ops.push(Op { id, name, work, waits });
        id
    }

    /// The next message to send and the operation it belongs to, or `None`
    /// when every active operation waits for a reply (or there is none).
    ///
    /// Messages must go on the wire in the order this hands them out. Call
    /// it in a loop until `None`, and again after every
    /// [`handle_reply`](Self::handle_reply), `add_*` and
    /// [`abort`](Self::abort). After a `Chunk` step the caller must call
    /// [`record_chunk`](Self::record_chunk) (or `abort`) for it before the
    /// next call; until then this returns that same step again.
    #[must_use = "a step names a message to send"]
    pub fn poll_send(&mut self) -> Option<(OpId, Step)> {
        if let Some(id) = self.announced {
            self.announced = None;
            if let Some(step) = self.upload_mut(id).and_then(Sender::poll_send) {
                return Some(self.register(id, step.into()));
            }
        }
        let active = self.active();
        if active.is_empty() {
            return None;
        }
        let resume = self.last_served.map_or(0, |last| {
            active
                .iter()
                .position(|&i| self.ops[i].id > last)
                .unwrap_or(0)
        });
        for k in 0..active.len() {
            let i = active[(resume + k) % active.len()];
            let op = &mut self.ops[i];
            let step = match &mut op.work {
                Work::Upload(sender) => sender.poll_send().map(Step::from),
                Work::Single { sent: true, .. } => None,
                Work::Single { kind, digest, sent } => {
                    *sent = true;
                    Some(match kind {
                        SingleKind::Delete => Step::Delete { digest: *digest },
                        SingleKind::Request => Step::Request { digest: *digest },
                        SingleKind::Copy => Step::Copy { digest: *digest },
                    })
                }
            };
            if let Some(step) = step {
                let id = op.id;
                self.last_served = Some(id);
                return Some(self.register(id, step));
            }
        }
        None
    }

    /// Notes a step handed out: a chunk goes on the wire only once its
    /// bytes are recorded, every other message at once.
    fn register(&mut self, id: OpId, step: Step) -> (OpId, Step) {
        match step {
            Step::Chunk { .. } => self.announced = Some(id),
            _ => self.outstanding.push_back(id),
        }
        (id, step)
    }

    /// Records the bytes read for the chunk step just handed out for `id`
    /// (see [`Sender::record_chunk`]). Only `Recorded::Send` puts the chunk
    /// on the wire; on `WrongLength` the caller calls [`abort`](Self::abort)
    /// (or reads again). Any other `id` gets `NotExpected`.
    pub fn record_chunk(&mut self, id: OpId, payload: &[u8]) -> Recorded {
        self.record_chunk_inner(id, payload, None)
    }

    /// Like [`record_chunk`](Self::record_chunk), with the payload's MD5
    /// already computed by the caller (see [`Sender::record_chunk_hashed`]).
    pub fn record_chunk_hashed(&mut self, id: OpId, payload: &[u8], digest: Digest) -> Recorded {
        self.record_chunk_inner(id, payload, Some(digest))
    }

    /// Like [`record_chunk_hashed`](Self::record_chunk_hashed) with only the
    /// chunk's length, for an upload added with
    /// [`add_upload_with_digest`](Self::add_upload_with_digest) (see
    /// [`Sender::record_chunk_digest`]): the caller streams the payload.
    pub fn record_chunk_digest(&mut self, id: OpId, len: u32, digest: Digest) -> Recorded {
        self.record_with(id, |sender| sender.record_chunk_digest(len, digest))
    }

    fn record_chunk_inner(&mut self, id: OpId, payload: &[u8], digest: Option<Digest>) -> Recorded {
        self.record_with(id, |sender| match digest {
            Some(d) => sender.record_chunk_hashed(payload, d),
            None => sender.record_chunk(payload),
        })
    }

    fn record_with(&mut self, id: OpId, record: impl FnOnce(&mut Sender) -> Recorded) -> Recorded {
        if self.announced != Some(id) {
            return Recorded::NotExpected;
        }
        let Some(sender) = self.upload_mut(id) else {
            self.announced = None;
            return Recorded::NotExpected;
        };
        let recorded = record(sender);
        if let Recorded::Send { .. } = recorded {
            self.announced = None;
            self.outstanding.push_back(id);
        }
        recorded
    }

    /// Gives up on operation `id` (its file changed or vanished, or the
    /// program is shutting down).
    ///
    /// Returns `Some(Outcome::Aborted)` when the operation ended at once
    /// because nothing of it had gone on the wire (it is then gone); `None`
    /// when an ABORT will follow from [`poll_send`](Self::poll_send), when
    /// it is too late (FINISHED, ABORT, DELETE or REQUEST already on the
    /// wire: the reply decides), or when `id` is unknown.
    #[must_use = "the operation may have ended at once"]
    pub fn abort(&mut self, id: OpId) -> Option<Outcome> {
        let i = self.index(id)?;
        let ended = match &mut self.ops[i].work {
            Work::Upload(sender) => sender.abort(),
            Work::Single { sent: false, .. } => Some(Outcome::Aborted),
            Work::Single { sent: true, .. } => None,
        };
        if self.announced == Some(id) {
            // The announced chunk was never recorded, so never sent.
            self.announced = None;
        }
        if ended.is_some() {
            self.remove_op(i);
        }
        ended
    }

    /// Aborts every operation, for shutdown (section 9: "sends ABORT for its
    /// outgoing transfers in progress"). Returns the operations that ended
    /// at once; the rest end through [`handle_reply`](Self::handle_reply).
    #[must_use = "the operation may have ended at once"]
    pub fn abort_all(&mut self) -> Vec<(OpId, Outcome)> {
        let ids: Vec<OpId> = self.ops.iter().map(|op| op.id).collect();
        ids.into_iter()
            .filter_map(|id| self.abort(id).map(|outcome| (id, outcome)))
            .collect()
    }

    /// Routes a STATUS to the oldest message on the wire.
    ///
    /// A keep-alive (0x8000) is not a reply and comes back as
    /// [`MuxReply::KeepAlive`], so the caller may pass every STATUS here.
    ///
    /// # Errors
    /// [`CoreError::UnexpectedReply`] when no message is waiting for a
    /// reply: the peer broke the one-reply-per-message rule, and the caller
    /// should close the connection.
    pub fn handle_reply(&mut self, status: StatusCode) -> Result<MuxReply, CoreError> {
        if status == StatusCode::KEEP_ALIVE {
            return Ok(MuxReply::KeepAlive);
        }
        let Some(id) = self.outstanding.pop_front() else {
            return Err(CoreError::UnexpectedReply(status.0));
        };
        // Operations leave the mux only once over, and an operation with a
        // message on the wire is not over, so the lookup cannot fail; if it
        // did, the reply has no owner.
        let Some(i) = self.index(id) else {
            return Err(CoreError::UnexpectedReply(status.0));
        };
        let outcome = match &mut self.ops[i].work {
            Work::Upload(sender) => match sender.handle_reply(status)? {
                ReplyOutcome::Continue => None,
                ReplyOutcome::Over(outcome) => Some(outcome),
            },
            Work::Single { .. } if status == StatusCode::OK => Some(Outcome::Committed),
            Work::Single { .. } => Some(Outcome::Refused(status)),
        };
        if outcome.is_some() {
            self.remove_op(i);
        }
        Ok(MuxReply::Routed { op: id, outcome })
    }

    /// The file name of operation `id`, for building its frames; `None`
    /// once it is over.
    pub fn name(&self, id: OpId) -> Option<&str> {
        self.index(id).map(|i| self.ops[i].name.as_str())
    }

    /// The upload's sender, for progress reports; `None` for other
    /// operations and once over.
    pub fn sender(&self, id: OpId) -> Option<&Sender> {
        match &self.ops[self.index(id)?].work {
            Work::Upload(sender) => Some(sender),
            Work::Single { .. } => None,
        }
    }

    /// Operations not yet over, active or waiting.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True when every operation added has ended.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// True when no message is waiting for a reply (operations may still
    /// wait to send): a STATUS arriving now would be unexpected.
    pub fn is_idle(&self) -> bool {
        self.outstanding.is_empty()
    }

    /// Messages on the wire without a reply yet (at most `max_in_flight`).
    pub fn in_flight(&self) -> usize {
        self.outstanding.len()
    }

    fn index(&self, id: OpId) -> Option<usize> {
        // `ops` is sorted by id: ids grow and removal keeps the order.
        self.ops.binary_search_by_key(&id, |op| op.id).ok()
    }

    fn upload_mut(&mut self, id: OpId) -> Option<&mut Sender> {
        let i = self.index(id)?;
        match &mut self.ops[i].work {
            Work::Upload(sender) => Some(sender),
            Work::Single { .. } => None,
        }
    }

    /// Indices of the active operations, oldest first: the first
    /// `max_in_flight` operations whose name no earlier operation has.
    fn active(&self) -> Vec<usize> {
        self.ops.iter().enumerate().filter(|(_, op)| !op.waits).map(|(i, _)| i).take(self.max_in_flight).collect()
    }

    /// Removes the operation at `i`; the next one with its name, if any,
    /// stops waiting.
    fn remove_op(&mut self, i: usize) {
        let op = self.ops.remove(i);
        if !op.waits {
            if let Some(next) = self.ops[i..].iter_mut().find(|o| o.name == op.name) {
                next.waits = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_proto::{md5, ZERO_DIGEST};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn routed(mux: &mut Mux, code: StatusCode) -> (OpId, Option<Outcome>) {
        match mux.handle_reply(code) {
            Ok(MuxReply::Routed { op, outcome }) => (op, outcome),
            other => panic!("expected a routed reply, got {other:?}"),
        }
    }

    /// Polls one step; records chunks with bytes from `files`.
    fn send(mux: &mut Mux, files: &HashMap<OpId, Vec<u8>>) -> Option<(OpId, Step)> {
        let (id, step) = mux.poll_send()?;
        if let Step::Chunk { offset, len } = step {
            let file = &files[&id];
            let bytes = &file[offset as usize..(offset + u64::from(len)) as usize];
            assert!(matches!(mux.record_chunk(id, bytes), Recorded::Send { .. }));
        }
        Some((id, step))
    }

    #[test]
    fn uploads_interleave_round_robin_and_replies_route_in_order() {
        let mut mux = Mux::new(4);
        let a = mux.add_upload("a".into(), 4, 2);
        let b = mux.add_upload("b".into(), 4, 2);
        let files = HashMap::from([(a, b"aaaa".to_vec()), (b, b"bbbb".to_vec())]);
        assert_eq!(
            send(&mut mux, &files),
            Some((a, Step::Chunk { offset: 0, len: 2 }))
        );
        assert_eq!(
            send(&mut mux, &files),
            Some((b, Step::Chunk { offset: 0, len: 2 }))
        );
        assert_eq!(mux.poll_send(), None, "both wait for a reply");
        assert_eq!(mux.in_flight(), 2);
        assert_eq!(routed(&mut mux, StatusCode::OK), (a, None));
        assert_eq!(
            send(&mut mux, &files),
            Some((a, Step::Chunk { offset: 2, len: 2 }))
        );
        assert_eq!(routed(&mut mux, StatusCode::RESEND_CHECKSUM), (b, None));
        assert_eq!(
            send(&mut mux, &files),
            Some((b, Step::Chunk { offset: 0, len: 2 }))
        );
        assert_eq!(routed(&mut mux, StatusCode::OK), (a, None));
        assert_eq!(routed(&mut mux, StatusCode::OK), (b, None));
        assert_eq!(
            send(&mut mux, &files),
            Some((
                a,
                Step::Finished {
                    digest: md5(b"aaaa")
                }
            ))
        );
        assert_eq!(
            send(&mut mux, &files),
            Some((b, Step::Chunk { offset: 2, len: 2 }))
        );
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (a, Some(Outcome::Committed))
        );
        assert_eq!(mux.name(a), None);
        assert_eq!(routed(&mut mux, StatusCode::OK), (b, None));
        assert_eq!(
            send(&mut mux, &files),
            Some((
                b,
                Step::Finished {
                    digest: md5(b"bbbb")
                }
            ))
        );
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (b, Some(Outcome::Committed))
        );
        assert!(mux.is_empty() && mux.is_idle());
    }

    #[test]
    fn only_the_first_max_in_flight_are_active_fifo() {
        let mut mux = Mux::new(2);
        let ids: Vec<OpId> = (0..4)
            .map(|i| mux.add_single(format!("f{i}"), SingleKind::Delete, ZERO_DIGEST))
            .collect();
        assert_eq!(
            mux.poll_send(),
            Some((
                ids[0],
                Step::Delete {
                    digest: ZERO_DIGEST
                }
            ))
        );
        assert_eq!(
            mux.poll_send(),
            Some((
                ids[1],
                Step::Delete {
                    digest: ZERO_DIGEST
                }
            ))
        );
        assert_eq!(mux.poll_send(), None);
        assert_eq!(
            routed(&mut mux, StatusCode::NO_FILE),
            (ids[0], Some(Outcome::Refused(StatusCode::NO_FILE)))
        );
        assert_eq!(
            mux.poll_send(),
            Some((
                ids[2],
                Step::Delete {
                    digest: ZERO_DIGEST
                }
            ))
        );
        assert_eq!(mux.poll_send(), None);
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (ids[1], Some(Outcome::Committed))
        );
        assert_eq!(
            mux.poll_send(),
            Some((
                ids[3],
                Step::Delete {
                    digest: ZERO_DIGEST
                }
            ))
        );
        assert_eq!(mux.len(), 2);
    }

    #[test]
    fn same_name_waits_for_the_earlier_operation() {
        let mut mux = Mux::new(4);
        let up = mux.add_upload("f".into(), 0, 8);
        let del = mux.add_single("f".into(), SingleKind::Delete, md5(b""));
        let other = mux.add_single("g".into(), SingleKind::Request, ZERO_DIGEST);
        assert_eq!(
            mux.poll_send(),
            Some((up, Step::Finished { digest: md5(b"") }))
        );
        assert_eq!(
            mux.poll_send(),
            Some((
                other,
                Step::Request {
                    digest: ZERO_DIGEST
                }
            ))
        );
        assert_eq!(
            mux.poll_send(),
            None,
            "the DELETE of f waits for the upload of f"
        );
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (up, Some(Outcome::Committed))
        );
        assert_eq!(
            mux.poll_send(),
            Some((del, Step::Delete { digest: md5(b"") }))
        );
    }

    #[test]
    fn unexpected_reply_and_keep_alive() {
        let mut mux = Mux::new(1);
        assert!(matches!(
            mux.handle_reply(StatusCode::OK),
            Err(CoreError::UnexpectedReply(1))
        ));
        assert_eq!(
            mux.handle_reply(StatusCode::KEEP_ALIVE).ok(),
            Some(MuxReply::KeepAlive)
        );
        let id = mux.add_single("f".into(), SingleKind::Request, ZERO_DIGEST);
        let _ = mux.poll_send();
        assert_eq!(
            mux.handle_reply(StatusCode::KEEP_ALIVE).ok(),
            Some(MuxReply::KeepAlive)
        );
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (id, Some(Outcome::Committed))
        );
        assert!(mux.handle_reply(StatusCode::OK).is_err());
    }

    #[test]
    fn announced_chunk_is_not_outstanding_until_recorded() {
        let mut mux = Mux::new(2);
        let a = mux.add_upload("a".into(), 3, 8);
        let b = mux.add_single("b".into(), SingleKind::Delete, ZERO_DIGEST);
        let step = Step::Chunk { offset: 0, len: 3 };
        assert_eq!(mux.poll_send(), Some((a, step)));
        assert_eq!(mux.poll_send(), Some((a, step)), "same step until recorded");
        assert!(mux.is_idle());
        assert_eq!(mux.record_chunk(b, b"abc"), Recorded::NotExpected);
        assert_eq!(
            mux.record_chunk(a, b"ab"),
            Recorded::WrongLength {
                expected: 3,
                got: 2
            }
        );
        assert_eq!(
            mux.record_chunk(a, b"abc"),
            Recorded::Send {
                digest: md5(b"abc")
            }
        );
        assert_eq!(mux.in_flight(), 1);
        assert_eq!(
            mux.poll_send(),
            Some((
                b,
                Step::Delete {
                    digest: ZERO_DIGEST
                }
            ))
        );
        assert_eq!(routed(&mut mux, StatusCode::OK), (a, None));
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (b, Some(Outcome::Committed))
        );
    }

    #[test]
    fn abort_ends_unsent_work_at_once_and_sends_abort_otherwise() {
        let mut mux = Mux::new(1);
        let a = mux.add_upload("a".into(), 4, 2);
        let queued = mux.add_upload("q".into(), 4, 2);
        let single = mux.add_single("s".into(), SingleKind::Delete, ZERO_DIGEST);
        let files = HashMap::from([(a, b"aaaa".to_vec())]);
        let _ = send(&mut mux, &files);
        assert_eq!(mux.abort(queued), Some(Outcome::Aborted));
        assert_eq!(mux.abort(a), None);
        assert_eq!(mux.poll_send(), None);
        assert_eq!(routed(&mut mux, StatusCode::OK), (a, None));
        assert_eq!(mux.poll_send(), Some((a, Step::Abort)));
        assert_eq!(
            routed(&mut mux, StatusCode::OK),
            (a, Some(Outcome::Aborted))
        );
        assert_eq!(mux.abort_all(), vec![(single, Outcome::Aborted)]);
        assert!(mux.is_empty());
        assert_eq!(mux.abort(single), None, "unknown id");
    }

    #[test]
    fn abort_of_an_announced_chunk_frees_the_connection() {
        let mut mux = Mux::new(2);
        let a = mux.add_upload("a".into(), 3, 8);
        let b = mux.add_single("b".into(), SingleKind::Request, ZERO_DIGEST);
        let _ = mux.poll_send();
        assert_eq!(
            mux.abort(a),
            Some(Outcome::Aborted),
            "nothing of a was sent"
        );
        assert_eq!(
            mux.poll_send(),
            Some((
                b,
                Step::Request {
                    digest: ZERO_DIGEST
                }
            ))
        );
    }

    #[derive(Debug, Clone)]
    enum Cmd {
        AddUpload { name: u8, size: u16, chunk: u8 },
        AddSingle { name: u8, delete: bool },
        Poll,
        Reply(u16),
        Abort(u8),
        AbortAll,
    }

    fn cmd() -> impl Strategy<Value = Cmd> {
        prop_oneof![
            2 => (0u8..6, 0u16..40, 0u8..10).prop_map(|(name, size, chunk)| Cmd::AddUpload { name, size, chunk }),
            1 => (0u8..6, any::<bool>()).prop_map(|(name, delete)| Cmd::AddSingle { name, delete }),
            6 => Just(Cmd::Poll),
            6 => prop::sample::select(vec![0x0001u16, 0x0001, 0x0001, 0x0002, 0x0004, 0x0008, 0x0040, 0x0020])
                .prop_map(Cmd::Reply),
            1 => any::<u8>().prop_map(Cmd::Abort),
            1 => Just(Cmd::AbortAll),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever is added, aborted and replied: never more than
        /// `max_in_flight` messages on the wire, at most one per operation,
        /// only active operations send, two operations on one name never
        /// overlap, each operation ends exactly once, and once replies stop
        /// being refused everything drains.
        #[test]
        fn mux_keeps_its_invariants(
            max in 0usize..4,
            cmds in proptest::collection::vec(cmd(), 0..80),
        ) {
            let mut mux = Mux::new(max);
            let mut added: Vec<(OpId, String)> = Vec::new();
            let mut ended: HashMap<OpId, Outcome> = HashMap::new();
            let mut wire: VecDeque<OpId> = VecDeque::new();
            let end = |ended: &mut HashMap<OpId, Outcome>, id: OpId, o: Outcome| {
                prop_assert!(ended.insert(id, o).is_none(), "{:?} ended twice", id);
                Ok(())
            };
            for c in cmds.into_iter().chain(std::iter::once(Cmd::Poll)) {
                match c {
                    Cmd::AddUpload { name, size, chunk } => {
                        let id = mux.add_upload(format!("n{name}"), u64::from(size), u32::from(chunk));
                        added.push((id, format!("n{name}")));
                    }
                    Cmd::AddSingle { name, delete } => {
                        let kind = if delete { SingleKind::Delete } else { SingleKind::Request };
                        let id = mux.add_single(format!("n{name}"), kind, ZERO_DIGEST);
                        added.push((id, format!("n{name}")));
                    }
                    Cmd::Poll => {
                        while let Some((id, step)) = mux.poll_send() {
                            prop_assert!(!wire.contains(&id), "two messages of one op on the wire");
                            // Active: among the first max(1) live ops whose name no earlier live op has.
                            let live: Vec<&(OpId, String)> =
                                added.iter().filter(|(i, _)| !ended.contains_key(i)).collect();
                            let eligible: Vec<OpId> = live
                                .iter()
                                .enumerate()
                                .filter(|(k, (_, n))| live[..*k].iter().all(|(_, m)| m != n))
                                .map(|(_, (i, _))| *i)
                                .collect();
                            let pos = eligible.iter().position(|i| *i == id);
                            prop_assert!(pos.is_some(), "ended op or same-name op sent");
                            prop_assert!(pos < Some(max.max(1)), "inactive op sent");
                            if let Step::Chunk { len, .. } = step {
                                let bytes = vec![0u8; len as usize];
                                prop_assert!(matches!(mux.record_chunk(id, &bytes), Recorded::Send { .. }), "record");
                            }
                            wire.push_back(id);
                            prop_assert!(wire.len() <= max.max(1));
                        }
                    }
                    Cmd::Reply(code) => match mux.handle_reply(StatusCode(code)) {
                        Ok(MuxReply::Routed { op, outcome }) => {
                            prop_assert_eq!(Some(op), wire.pop_front());
                            if let Some(o) = outcome { end(&mut ended, op, o)?; }
                        }
                        Ok(MuxReply::KeepAlive) => prop_assert!(false, "not sent"),
                        Err(_) => prop_assert!(wire.is_empty()),
                    },
                    Cmd::Abort(k) => {
                        if let Some(&(id, _)) = added.get(usize::from(k) % added.len().max(1)) {
                            if let Some(o) = mux.abort(id) {
                                prop_assert!(!wire.contains(&id));
                                end(&mut ended, id, o)?;
                            }
                        }
                    }
                    Cmd::AbortAll => {
                        for (id, o) in mux.abort_all() {
                            prop_assert!(!wire.contains(&id));
                            end(&mut ended, id, o)?;
                        }
                    }
                }
                prop_assert_eq!(mux.in_flight(), wire.len());
                prop_assert_eq!(mux.len(), added.len() - ended.len());
            }
            // Drain with a perfect peer: every operation ends.
            let mut rounds = 0;
            while !mux.is_empty() {
                rounds += 1;
                prop_assert!(rounds < 10_000, "mux does not drain");
                while let Some((id, step)) = mux.poll_send() {
                    if let Step::Chunk { len, .. } = step {
                        let bytes = vec![0u8; len as usize];
                        prop_assert!(matches!(mux.record_chunk(id, &bytes), Recorded::Send { .. }), "record");
                    }
                    wire.push_back(id);
                }
                prop_assert!(!wire.is_empty(), "stalled with work left");
                if let Ok(MuxReply::Routed { op, outcome: Some(o) }) = mux.handle_reply(StatusCode::OK) {
                    end(&mut ended, op, o)?;
                }
                wire.pop_front();
            }
            prop_assert_eq!(ended.len(), added.len());
        }
    }
}
