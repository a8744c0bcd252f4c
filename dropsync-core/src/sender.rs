//! One outgoing transfer, stop-and-wait (PROTOCOL.md section 4).
//!
//! A [`Sender`] decides what the sending half of one file transfer puts on
//! the wire next: which byte range to send as the next FILE_CHUNK, when to
//! send FINISHED with the whole-file MD5, and when to send ABORT. It waits
//! for the reply to each message before it offers the next one. The caller
//! reads the file: it reads the range a [`SendStep::Chunk`] names, hands the
//! bytes to [`Sender::record_chunk`] (which hashes each byte of the file
//! exactly once, however often a chunk is resent) and sends the frame.
//!
//! Reading of the contract: a 0x0004 reply means the receiver rejected our
//! chunk size, and the same size would fail again (and the third time abort
//! the transfer), so the sender resends at the same offset with half the
//! length (at least 1 byte) and keeps that smaller size for the rest of the
//! transfer.

use std::io::Write as _;

use dropsync_proto::digest::finish;
use dropsync_proto::{md5, Digest, Md5, StatusCode};

use crate::CoreError;

/// Feeds `data` into an incremental MD5.
///
/// `Md5::update` comes from the md-5 crate's `Digest` trait, which
/// dropsync-proto does not re-export and this crate does not depend on; the
/// hasher's `io::Write` impl performs the very same update and never fails,
/// so the result carries no information and is dropped.
fn absorb(hasher: &mut Md5, data: &[u8]) {
    let _ = hasher.write_all(data);
}

/// The next message the transfer wants sent (see [`Sender::poll_send`]).
#[must_use = "the step names a message the caller must send"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendStep {
    /// Read `len` bytes at `offset` of the file, pass them to
    /// [`Sender::record_chunk`], and send them as a FILE_CHUNK.
    Chunk {
        /// Where the chunk starts in the file.
        offset: u64,
        /// How many bytes to read and send (1 ..= the chunk size).
        len: u32,
    },
    /// Send FINISHED with `digest`, the MD5 of the whole file.
    Finished {
        /// MD5 of every byte of the file, as recorded.
        digest: Digest,
    },
    /// Send ABORT (its digest is zeros, section 2).
    Abort,
}

/// What [`Sender::record_chunk`] made of the bytes the caller read.
#[must_use = "only `Send` means the chunk may go on the wire"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Send the bytes now as a FILE_CHUNK with this digest (the MD5 of the
    /// bytes). From here on a reply is awaited.
    Send {
        /// MD5 of the chunk's payload, for the FILE_CHUNK header.
        digest: Digest,
    },
    /// The bytes are not the announced length (the file shrank or grew
    /// while it was being sent). Nothing changed and nothing may be sent;
    /// the caller calls [`Sender::abort`] (or reads again and records again).
    WrongLength {
        /// The length the chunk step announced.
        expected: u32,
        /// The length the caller passed.
        got: usize,
    },
    /// No chunk step is waiting for its bytes (nothing was announced, or it
    /// was already recorded): the call is ignored and nothing may be sent.
    NotExpected,
}

/// How a transfer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver answered FINISHED with 0x0001: the file is committed on
    /// the other side.
    Committed,
    /// The transfer was aborted by us: the receiver answered our ABORT, or
    /// nothing had been sent yet when it was aborted.
    Aborted,
    /// The receiver ended the transfer with this code (0x0008, 0x0010,
    /// 0x0020, 0x0040, 0x0080, 0x0100, or any code the rules do not expect
    /// at that point). No ABORT follows (section 4).
    Refused(StatusCode),
}

/// What a reply did to the transfer (see [`Sender::handle_reply`]).
#[must_use = "the transfer may be over"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyOutcome {
    /// The transfer goes on: call [`Sender::poll_send`] for the next message.
    Continue,
    /// The transfer is over with this outcome; drop the sender.
    Over(Outcome),
}

/// The message a reply is awaited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Chunk { len: u32 },
    Finished,
    Abort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Nothing on the wire: `poll_send` decides the next message.
    Idle,
    /// A chunk step was handed out; its bytes have not been recorded yet.
    Announced {
        len: u32,
    },
    /// A message is on the wire; its reply is awaited.
    Waiting(Sent),
    Over(Outcome),
}

/// The sending half of one transfer of a file of known size.
#[derive(Debug, Clone)]
pub struct Sender {
    size: u64,
    /// Largest chunk to send; halved on each 0x0004.
    chunk_size: u32,
    /// Bytes the receiver has accepted; the next chunk starts here.
    acked: u64,
    /// Bytes fed into `hasher`: every byte below this, exactly once.
    hashed: u64,
    hasher: Md5,
    /// The whole-file MD5 given by the caller ([`Sender::with_digest`]),
    /// or the MD5 of a first chunk that was the whole file; when set,
    /// chunks are not hashed again.
    known_digest: Option<Digest>,
    /// The caller hashes the file on its own and hands the digest over
    /// with [`Sender::set_digest`] ([`Sender::hashed_elsewhere`]).
    digest_elsewhere: bool,
    state: State,
    abort_requested: bool,
    /// True once any message of this transfer has gone on the wire, i.e.
    /// the receiver may have opened the transfer.
    opened: bool,
    /// The file is still being written ([`Sender::growing`]): `size` is
    /// what may be sent so far, and FINISHED waits for
    /// [`complete`](Sender::complete).
    growing: bool,
}

impl Sender {
    /// A transfer of a file of `size` bytes in chunks of at most
    /// `chunk_size` bytes (the client's `<chunk size>` or the server's
    /// configured size). A `chunk_size` of 0 is taken as 1 so the transfer
    /// always makes progress.
    pub fn new(size: u64, chunk_size: u32) -> Self {
        Sender {
            size,
            chunk_size: chunk_size.max(1),
            acked: 0,
            hashed: 0,
            hasher: Md5::default(),
            known_digest: None,
            digest_elsewhere: false,
            state: State::Idle,
            abort_requested: false,
            opened: false,
            growing: false,
        }
    }

    /// The next message to send, or `None` while a reply is awaited or once
    /// the transfer is over.
    ///
    /// Call it again after every [`handle_reply`](Self::handle_reply) and
    /// [`abort`](Self::abort). After a `Chunk` step the caller must call
    /// [`record_chunk`](Self::record_chunk) (or `abort`) before anything
    /// goes on the wire; until then this returns the same `Chunk` again. An
    /// empty file's first step is `Finished` with the MD5 of no bytes.
    #[must_use = "a step names a message to send"]
    pub fn poll_send(&mut self) -> Option<SendStep> {
        match self.state {
            State::Announced { len } => Some(SendStep::Chunk {
                offset: self.acked,
                len,
            }),
            State::Waiting(_) | State::Over(_) => None,
            State::Idle if self.abort_requested => {
                self.state = State::Waiting(Sent::Abort);
                self.opened = true;
                Some(SendStep::Abort)
            }
            // A file still being written goes out in whole chunks only: a
            // short one would be its last.
            State::Idle if self.acked < self.size && (!self.growing || self.whole_chunk_available()) => {
                let remaining = self.size - self.acked;
                let len = u64::from(self.chunk_size).min(remaining) as u32;
                self.state = State::Announced { len };
                Some(SendStep::Chunk {
                    offset: self.acked,
                    len,
                })
            }
            // More bytes, or the end, have not come yet: nothing to send.
            State::Idle if self.growing => None,
            // The caller's digest has not come yet: nothing to send.
            State::Idle if self.digest_elsewhere && self.known_digest.is_none() => None,
            State::Idle => {
                // Every acknowledged chunk was recorded first, so the hash
                // covers the whole file exactly once here.
                let hashed = finish(std::mem::take(&mut self.hasher));
                let digest = self.known_digest.unwrap_or(hashed);
                self.state = State::Waiting(Sent::Finished);
                self.opened = true;
                Some(SendStep::Finished { digest })
            }
        }
    }

    /// A transfer of a file whose whole-file MD5 the caller already knows
    /// (it hashed the file to decide to send it). The FINISHED carries
    /// `digest` and the chunks are not hashed a second time, which saves
    /// one pass over the file per upload. If the file changes under the
    /// transfer without the caller noticing, the receiver's whole-file
    /// check answers 0x0008 and nothing wrong is committed.
    pub fn with_digest(size: u64, chunk_size: u32, digest: Digest) -> Self {
        Sender { known_digest: Some(digest), ..Self::new(size, chunk_size) }
    }

    /// A transfer whose whole-file MD5 the caller computes itself, on
    /// another thread, from the very bytes it sends: chunks are not hashed
    /// for it here, and FINISHED is offered only once the caller has given
    /// the digest with [`set_digest`](Self::set_digest). That takes the
    /// whole-file pass off the thread that reads and sends, which then only
    /// computes each chunk's MD5. (A file of one chunk needs no digest: its
    /// chunk's MD5 is the whole-file MD5.)
    pub fn hashed_elsewhere(size: u64, chunk_size: u32) -> Self {
        Sender { digest_elsewhere: true, ..Self::new(size, chunk_size) }
    }

    fn whole_chunk_available(&self) -> bool {
        self.size - self.acked >= u64::from(self.chunk_size)
    }

    /// A transfer of a file that is still being written (the server's
    /// streaming deliveries, PROTOCOL.md [ext] "Streaming deliveries"): its
    /// bytes become available with [`grow`](Self::grow), whole chunks go
    /// out as they do, and the last chunk and FINISHED only once
    /// [`complete`](Self::complete) has given the final size and whole-file
    /// MD5. Chunks are recorded with
    /// [`record_chunk_digest`](Self::record_chunk_digest) (the caller knows
    /// their MD5s) and not hashed here.
    pub fn growing(chunk_size: u32) -> Self {
        Sender { growing: true, digest_elsewhere: true, ..Self::new(0, chunk_size) }
    }

    /// The first `available` bytes of a [`growing`](Self::growing) file may
    /// be sent (a smaller number than before changes nothing).
    pub fn grow(&mut self, available: u64) {
        if self.growing && available > self.size {
            self.size = available;
        }
    }

    /// A [`growing`](Self::growing) file is complete: `size` bytes whose
    /// MD5 is `digest`. False (and nothing changes) for any other transfer,
    /// or when `size` is less than what was already available: the caller
    /// then aborts the transfer.
    pub fn complete(&mut self, size: u64, digest: Digest) -> bool {
        if !self.growing || size < self.size {
            return false;
        }
        self.growing = false;
        self.size = size;
        self.known_digest = Some(digest);
        true
    }

    /// Gives the whole-file MD5 of a [`hashed_elsewhere`](Self::hashed_elsewhere)
    /// transfer; returns whether it was wanted (not for other transfers,
    /// nor twice).
    pub fn set_digest(&mut self, digest: Digest) -> bool {
        if !self.digest_elsewhere || self.known_digest.is_some() {
            return false;
        }
        self.known_digest = Some(digest);
        true
    }

    /// Records the bytes read for the announced chunk, right before they are
    /// sent. Bytes of the file not hashed before are added to the whole-file
    /// MD5 (a resent or shortened chunk hashes nothing twice). Returns the
    /// chunk's own MD5 for the FILE_CHUNK header when it may be sent.
    pub fn record_chunk(&mut self, payload: &[u8]) -> Recorded {
        self.record(payload, None)
    }

    /// Like [`record_chunk`](Self::record_chunk), with `digest`, the MD5 of
    /// `payload`, computed by the caller ahead of time: a sender can read
    /// and hash chunk N+1 while it waits for the reply to chunk N, so its
    /// hashing overlaps the receiver's instead of following it.
    pub fn record_chunk_hashed(&mut self, payload: &[u8], digest: Digest) -> Recorded {
        self.record(payload, Some(digest))
    }

    /// Like [`record_chunk_hashed`](Self::record_chunk_hashed) without the
    /// bytes, for a transfer whose whole-file MD5 is known
    /// ([`with_digest`](Self::with_digest)): nothing here needs them, so the
    /// caller may stream the payload from its source to the socket without
    /// holding it (it must then send exactly `len` bytes whose MD5 is
    /// `digest`). Without a whole-file MD5 known or to be given by the
    /// caller ([`hashed_elsewhere`](Self::hashed_elsewhere),
    /// [`growing`](Self::growing)) this is `NotExpected`.
    pub fn record_chunk_digest(&mut self, len: u32, digest: Digest) -> Recorded {
        let State::Announced { len: announced } = self.state else {
            return Recorded::NotExpected;
        };
        if self.known_digest.is_none() && !self.digest_elsewhere {
            return Recorded::NotExpected;
        }
        if len != announced {
            return Recorded::WrongLength { expected: announced, got: len as usize };
        }
        self.state = State::Waiting(Sent::Chunk { len });
        self.opened = true;
        Recorded::Send { digest }
    }

    fn record(&mut self, payload: &[u8], digest: Option<Digest>) -> Recorded {
        let State::Announced { len } = self.state else {
            return Recorded::NotExpected;
        };
        if payload.len() != len as usize {
            return Recorded::WrongLength {
                expected: len,
                got: payload.len(),
            };
        }
        let end = self.acked + u64::from(len);
        if self.acked == 0 && end == self.size && self.known_digest.is_none() && !self.growing {
            // One chunk is the whole file: its MD5 is the whole-file MD5,
            // so the file is hashed once, not twice (most small files).
            let digest = digest.unwrap_or_else(|| md5(payload));
            self.known_digest = Some(digest);
            self.state = State::Waiting(Sent::Chunk { len });
            self.opened = true;
            return Recorded::Send { digest };
        }
        if self.hashed < end && self.known_digest.is_none() && !self.digest_elsewhere {
            // `hashed >= acked` always holds: bytes are only acknowledged
            // after they were recorded, and recording hashes up to their end.
            let skip = self.hashed.saturating_sub(self.acked) as usize;
            absorb(&mut self.hasher, &payload[skip..]);
            self.hashed = end;
        }
        self.state = State::Waiting(Sent::Chunk { len });
        self.opened = true;
        Recorded::Send {
            digest: digest.unwrap_or_else(|| md5(payload)),
        }
    }

    /// Handles the STATUS that answers the message on the wire.
    ///
    /// To a chunk: 0x0001 moves on, 0x0002 resends the same chunk, 0x0004
    /// resends at the same offset with half the length. To FINISHED: 0x0001
    /// is `Committed`. To ABORT: 0x0001 is `Aborted`. Any abort code, and
    /// any code the rules do not expect there, ends the transfer as
    /// `Refused(code)`. A keep-alive (0x8000) is not a reply: it is ignored
    /// and answers `Continue`.
    ///
    /// # Errors
    /// [`CoreError::UnexpectedReply`] when no message of this transfer is
    /// waiting for a reply; nothing changes, and the caller should treat
    /// the connection as broken.
    pub fn handle_reply(&mut self, status: StatusCode) -> Result<ReplyOutcome, CoreError> {
        if status == StatusCode::KEEP_ALIVE {
            return Ok(ReplyOutcome::Continue);
        }
        let State::Waiting(sent) = self.state else {
            return Err(CoreError::UnexpectedReply(status.0));
        };
        let over = match (sent, status) {
            (Sent::Chunk { len }, StatusCode::OK) => {
                self.acked += u64::from(len);
                None
            }
            (Sent::Chunk { .. }, StatusCode::RESEND_CHECKSUM) => None,
            (Sent::Chunk { len }, StatusCode::RESEND_SIZE) => {
                self.chunk_size = (len / 2).max(1);
                None
            }
            (Sent::Finished, StatusCode::OK) => Some(Outcome::Committed),
            (Sent::Abort, StatusCode::OK) => Some(Outcome::Aborted),
            (_, code) => Some(Outcome::Refused(code)),
        };
        Ok(match over {
            Some(outcome) => {
                self.state = State::Over(outcome);
                ReplyOutcome::Over(outcome)
            }
            None => {
                self.state = State::Idle;
                ReplyOutcome::Continue
            }
        })
    }

    /// Gives up on the transfer (the file changed or vanished, or the
    /// program is shutting down).
    ///
    /// If nothing has gone on the wire yet, the transfer ends at once and
    /// this returns `Some(Outcome::Aborted)`: the receiver never opened it,
    /// so no ABORT is needed. Otherwise the next [`poll_send`](Self::poll_send)
    /// returns `Abort` — after the reply to the message on the wire, if any
    /// (a refusal in that reply ends the transfer without ABORT). Too late
    /// once FINISHED or ABORT is on the wire, or the transfer is over: then
    /// nothing changes.
    #[must_use = "the operation may have ended at once"]
    pub fn abort(&mut self) -> Option<Outcome> {
        match self.state {
            State::Over(_) | State::Waiting(Sent::Finished | Sent::Abort) => None,
            State::Idle | State::Announced { .. } if !self.opened => {
                self.state = State::Over(Outcome::Aborted);
                Some(Outcome::Aborted)
            }
            State::Idle | State::Announced { .. } | State::Waiting(Sent::Chunk { .. }) => {
                if let State::Announced { .. } = self.state {
                    // The announced chunk was never recorded, so never sent.
                    self.state = State::Idle;
                }
                self.abort_requested = true;
                None
            }
        }
    }

    /// The file's size as given to [`new`](Self::new) (of a
    /// [`growing`](Self::growing) file: the bytes available so far).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes the receiver has accepted so far, for progress reports.
    pub fn bytes_acknowledged(&self) -> u64 {
        self.acked
    }

    /// True while a message of this transfer is on the wire without reply.
    pub fn is_awaiting_reply(&self) -> bool {
        matches!(self.state, State::Waiting(_))
    }

    /// How the transfer ended, or `None` while it goes on.
    pub fn outcome(&self) -> Option<Outcome> {
        match self.state {
            State::Over(outcome) => Some(outcome),
            _ => None,
        }
    }

    /// True once the transfer is over; the sender is then inert.
    pub fn is_over(&self) -> bool {
        self.outcome().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Polls, expecting a chunk, and records the right bytes of `file`.
    fn send_chunk(tx: &mut Sender, file: &[u8]) -> (u64, u32) {
        let Some(SendStep::Chunk { offset, len }) = tx.poll_send() else {
            panic!("expected a chunk");
        };
        let bytes = &file[offset as usize..offset as usize + len as usize];
        assert_eq!(
            tx.record_chunk(bytes),
            Recorded::Send { digest: md5(bytes) }
        );
        (offset, len)
    }

    fn reply(tx: &mut Sender, code: StatusCode) -> ReplyOutcome {
        match tx.handle_reply(code) {
            Ok(r) => r,
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    #[test]
    fn chunks_then_finished_then_committed() {
        let file = b"0123456789";
        let mut tx = Sender::new(10, 4);
        assert_eq!(send_chunk(&mut tx, file), (0, 4));
        assert_eq!(tx.poll_send(), None, "stop-and-wait");
        assert_eq!(reply(&mut tx, StatusCode::OK), ReplyOutcome::Continue);
        assert_eq!(send_chunk(&mut tx, file), (4, 4));
        let _ = reply(&mut tx, StatusCode::OK);
        assert_eq!(send_chunk(&mut tx, file), (8, 2));
        let _ = reply(&mut tx, StatusCode::OK);
        assert_eq!(
            tx.poll_send(),
            Some(SendStep::Finished { digest: md5(file) })
        );
        assert_eq!(
            reply(&mut tx, StatusCode::OK),
            ReplyOutcome::Over(Outcome::Committed)
        );
        assert_eq!(tx.poll_send(), None);
        assert_eq!(tx.outcome(), Some(Outcome::Committed));
    }

    #[test]
    fn empty_file_starts_with_finished() {
        let mut tx = Sender::new(0, 4);
        assert_eq!(
            tx.poll_send(),
            Some(SendStep::Finished { digest: md5(b"") })
        );
        assert_eq!(
            reply(&mut tx, StatusCode::OK),
            ReplyOutcome::Over(Outcome::Committed)
        );
    }

    #[test]
    fn bad_checksum_resends_same_chunk_without_rehashing() {
        let file = b"abcdef";
        let mut tx = Sender::new(6, 3);
        assert_eq!(send_chunk(&mut tx, file), (0, 3));
        let _ = reply(&mut tx, StatusCode::RESEND_CHECKSUM);
        assert_eq!(send_chunk(&mut tx, file), (0, 3));
        let _ = reply(&mut tx, StatusCode::OK);
        assert_eq!(send_chunk(&mut tx, file), (3, 3));
        let _ = reply(&mut tx, StatusCode::OK);
        assert_eq!(
            tx.poll_send(),
            Some(SendStep::Finished { digest: md5(file) })
        );
    }

    #[test]
    fn invalid_size_halves_the_length_and_keeps_it() {
        let file = [9u8; 20];
        let mut tx = Sender::new(20, 8);
        assert_eq!(send_chunk(&mut tx, &file), (0, 8));
        let _ = reply(&mut tx, StatusCode::RESEND_SIZE);
        assert_eq!(send_chunk(&mut tx, &file), (0, 4));
        let _ = reply(&mut tx, StatusCode::OK);
        assert_eq!(
            send_chunk(&mut tx, &file),
            (4, 4),
            "the smaller size is kept"
        );
        let _ = reply(&mut tx, StatusCode::RESEND_SIZE);
        assert_eq!(send_chunk(&mut tx, &file), (4, 2));
        let _ = reply(&mut tx, StatusCode::RESEND_SIZE);
        assert_eq!(send_chunk(&mut tx, &file), (4, 1));
        let _ = reply(&mut tx, StatusCode::RESEND_SIZE);
        assert_eq!(send_chunk(&mut tx, &file), (4, 1), "never below one byte");
    }

    #[test]
    fn halving_hashes_each_byte_once() {
        let file: Vec<u8> = (0..=255).collect();
        let mut tx = Sender::new(256, 100);
        let _ = send_chunk(&mut tx, &file);
        let _ = reply(&mut tx, StatusCode::RESEND_SIZE);
        loop {
            match tx.poll_send() {
                Some(SendStep::Chunk { offset, len }) => {
                    assert_eq!(len, 50.min(256 - offset as u32));
                    let bytes = &file[offset as usize..(offset + u64::from(len)) as usize];
                    assert!(matches!(tx.record_chunk(bytes), Recorded::Send { .. }));
                    let _ = reply(&mut tx, StatusCode::OK);
                }
                Some(SendStep::Finished { digest }) => {
                    assert_eq!(digest, md5(&file));
                    break;
                }
                other => panic!("unexpected step {other:?}"),
            }
        }
        assert_eq!(
            reply(&mut tx, StatusCode::OK),
            ReplyOutcome::Over(Outcome::Committed)
        );
    }

    #[test]
    fn refusals_end_the_transfer_without_abort() {
        for code in [
            0x0008, 0x0010, 0x0020, 0x0040, 0x0080, 0x0100, 0x0200, 0x0000,
        ] {
            let code = StatusCode(code);
            let mut tx = Sender::new(5, 5);
            let _ = send_chunk(&mut tx, b"hello");
            assert_eq!(
                reply(&mut tx, code),
                ReplyOutcome::Over(Outcome::Refused(code))
            );
            assert_eq!(tx.poll_send(), None);
            assert_eq!(tx.abort(), None);
            assert_eq!(tx.poll_send(), None);
        }
    }

    #[test]
    fn finished_answered_with_mismatch_is_refused() {
        let mut tx = Sender::new(0, 4);
        let _ = tx.poll_send();
        assert_eq!(
            reply(&mut tx, StatusCode::ABORT_CHECKSUM),
            ReplyOutcome::Over(Outcome::Refused(StatusCode::ABORT_CHECKSUM))
        );
    }

    #[test]
    fn abort_before_anything_is_sent_ends_at_once() {
        let mut tx = Sender::new(10, 4);
        assert_eq!(tx.abort(), Some(Outcome::Aborted));
        assert_eq!(tx.poll_send(), None);

        let mut tx = Sender::new(10, 4);
        let _ = tx.poll_send(); // announced, never recorded: never sent
        assert_eq!(tx.abort(), Some(Outcome::Aborted));
        assert_eq!(tx.poll_send(), None);
    }

    #[test]
    fn abort_mid_transfer_waits_for_the_reply_then_sends_abort() {
        let mut tx = Sender::new(10, 4);
        let _ = send_chunk(&mut tx, b"0123456789");
        assert_eq!(tx.abort(), None);
        assert_eq!(tx.poll_send(), None, "the chunk's reply comes first");
        let _ = reply(&mut tx, StatusCode::OK);
        assert_eq!(tx.poll_send(), Some(SendStep::Abort));
        assert_eq!(tx.poll_send(), None);
        assert_eq!(
            reply(&mut tx, StatusCode::OK),
            ReplyOutcome::Over(Outcome::Aborted)
        );
    }

    #[test]
    fn short_read_is_reported_then_aborted() {
        let mut tx = Sender::new(10, 4);
        let _ = send_chunk(&mut tx, b"0123456789");
        let _ = reply(&mut tx, StatusCode::OK);
        let _ = tx.poll_send();
        assert_eq!(
            tx.record_chunk(b"45"),
            Recorded::WrongLength {
                expected: 4,
                got: 2
            }
        );
        assert_eq!(
            tx.poll_send(),
            Some(SendStep::Chunk { offset: 4, len: 4 }),
            "unchanged"
        );
        assert_eq!(tx.abort(), None);
        assert_eq!(tx.poll_send(), Some(SendStep::Abort));
    }

    #[test]
    fn abort_after_finished_is_too_late() {
        let mut tx = Sender::new(0, 4);
        let _ = tx.poll_send();
        assert_eq!(tx.abort(), None);
        assert_eq!(
            reply(&mut tx, StatusCode::OK),
            ReplyOutcome::Over(Outcome::Committed)
        );
    }

    #[test]
    fn a_known_file_digest_lets_chunks_be_recorded_by_length_and_digest() {
        let data = b"0123456789";
        let mut tx = Sender::with_digest(10, 4, md5(data));
        // Without a known whole-file digest it is refused.
        let mut other = Sender::new(10, 4);
        let _ = other.poll_send();
        assert_eq!(other.record_chunk_digest(4, md5(b"0123")), Recorded::NotExpected);
        let mut sent = Vec::new();
        loop {
            match tx.poll_send() {
                Some(SendStep::Chunk { offset, len }) => {
                    let piece = &data[offset as usize..(offset + u64::from(len)) as usize];
                    assert_eq!(tx.record_chunk_digest(len + 1, md5(piece)), Recorded::WrongLength { expected: len, got: len as usize + 1 });
                    assert_eq!(tx.record_chunk_digest(len, md5(piece)), Recorded::Send { digest: md5(piece) });
                    sent.extend_from_slice(piece);
                    let _ = reply(&mut tx, StatusCode::OK);
                }
                Some(SendStep::Finished { digest }) => {
                    assert_eq!(digest, md5(data));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(sent, data);
    }

    #[test]
    fn misuse_is_answered_not_panicked() {
        let mut tx = Sender::new(4, 4);
        assert_eq!(tx.record_chunk(b"abcd"), Recorded::NotExpected);
        assert!(matches!(
            tx.handle_reply(StatusCode::OK),
            Err(CoreError::UnexpectedReply(1))
        ));
        assert_eq!(
            tx.handle_reply(StatusCode::KEEP_ALIVE).ok(),
            Some(ReplyOutcome::Continue)
        );
        let _ = tx.poll_send();
        assert!(
            tx.handle_reply(StatusCode::OK).is_err(),
            "announced is not sent"
        );
        assert!(matches!(tx.record_chunk(b"abcd"), Recorded::Send { .. }));
        assert_eq!(tx.record_chunk(b"abcd"), Recorded::NotExpected);
        assert_eq!(
            Sender::new(3, 0).poll_send(),
            Some(SendStep::Chunk { offset: 0, len: 1 })
        );
    }

    #[derive(Debug, Clone, Copy)]
    enum Action {
        Reply(u16),
        Abort,
        ShortRead,
        KeepAlive,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            8 => Just(Action::Reply(0x0001)),
            2 => Just(Action::Reply(0x0002)),
            2 => Just(Action::Reply(0x0004)),
            1 => prop::sample::select(vec![0x0008u16, 0x0010, 0x0020, 0x0040, 0x0080, 0x0100, 0x0300])
                .prop_map(Action::Reply),
            1 => Just(Action::Abort),
            1 => Just(Action::ShortRead),
            1 => Just(Action::KeepAlive),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the replies, chunks stay inside the file, only one message
        /// is ever on the wire, offsets never go back, nothing is offered
        /// after the end, and a commit carries the MD5 of the whole file.
        #[test]
        fn sender_is_safe_under_any_replies(
            file in proptest::collection::vec(any::<u8>(), 0..200),
            chunk_size in 0u32..64,
            actions in proptest::collection::vec(action(), 0..80),
            elsewhere in any::<bool>(),
        ) {
            let mut tx = if elsewhere {
                Sender::hashed_elsewhere(file.len() as u64, chunk_size)
            } else {
                Sender::new(file.len() as u64, chunk_size)
            };
            let mut last_offset = 0u64;
            let mut finished_digest = None;
            for act in actions {
                if tx.is_over() { break; }
                let mut step = tx.poll_send();
                if step.is_none() && !tx.is_awaiting_reply() && !tx.is_over() {
                    // Only a digest computed elsewhere is ever waited for.
                    prop_assert!(elsewhere);
                    prop_assert_eq!(tx.bytes_acknowledged(), file.len() as u64);
                    prop_assert!(tx.set_digest(md5(&file)));
                    step = tx.poll_send();
                }
                match step {
                    Some(SendStep::Chunk { offset, len }) => {
                        prop_assert!(len >= 1 && len <= chunk_size.max(1));
                        prop_assert!(offset + u64::from(len) <= file.len() as u64);
                        prop_assert!(offset >= last_offset);
                        last_offset = offset;
                        let bytes = &file[offset as usize..(offset + u64::from(len)) as usize];
                        if let Action::ShortRead = act {
                            let r = tx.record_chunk(&bytes[1..]);
                            prop_assert!(matches!(r, Recorded::WrongLength { .. }), "short read must be refused");
                            let _ = tx.abort();
                            continue;
                        }
                        prop_assert_eq!(tx.record_chunk(bytes), Recorded::Send { digest: md5(bytes) });
                    }
                    Some(SendStep::Finished { digest }) => finished_digest = Some(digest),
                    Some(SendStep::Abort) | None => {}
                }
                prop_assert!(tx.is_over() || tx.is_awaiting_reply());
                prop_assert_eq!(tx.poll_send(), None, "stop-and-wait");
                match act {
                    Action::Reply(code) => {
                        let awaiting = tx.is_awaiting_reply();
                        let r = tx.handle_reply(StatusCode(code));
                        prop_assert_eq!(r.is_ok(), awaiting);
                        if let Ok(ReplyOutcome::Over(Outcome::Committed)) = r {
                            prop_assert_eq!(finished_digest, Some(md5(&file)));
                        }
                    }
                    Action::Abort => { let _ = tx.abort(); }
                    Action::ShortRead | Action::KeepAlive => {
                        prop_assert_eq!(
                            tx.handle_reply(StatusCode::KEEP_ALIVE).ok(),
                            Some(ReplyOutcome::Continue)
                        );
                    }
                }
            }
            if tx.is_over() {
                prop_assert_eq!(tx.poll_send(), None);
            }
        }

        /// Against a receiver that asks for resends at random (but never more
        /// than the abort thresholds), the transfer always commits, with the
        /// MD5 of the whole file however the chunks were split and resent.
        #[test]
        fn resends_never_corrupt_the_whole_file_digest(
            file in proptest::collection::vec(any::<u8>(), 0..300),
            chunk_size in 1u32..64,
            resends in proptest::collection::vec(0u8..3, 0..4),
        ) {
            let mut tx = Sender::new(file.len() as u64, chunk_size);
            let mut resends = resends.into_iter();
            let mut steps = 0;
            loop {
                steps += 1;
                prop_assert!(steps < 1000, "no progress");
                match tx.poll_send() {
                    Some(SendStep::Chunk { offset, len }) => {
                        let bytes = &file[offset as usize..(offset + u64::from(len)) as usize];
                        prop_assert!(matches!(tx.record_chunk(bytes), Recorded::Send { .. }), "chunk must be sendable");
                        let code = match resends.next() {
                            Some(1) => StatusCode::RESEND_CHECKSUM,
                            Some(2) => StatusCode::RESEND_SIZE,
                            _ => StatusCode::OK,
                        };
                        prop_assert_eq!(tx.handle_reply(code).ok(), Some(ReplyOutcome::Continue));
                    }
                    Some(SendStep::Finished { digest }) => {
                        prop_assert_eq!(digest, md5(&file));
                        prop_assert_eq!(
                            tx.handle_reply(StatusCode::OK).ok(),
                            Some(ReplyOutcome::Over(Outcome::Committed))
                        );
                        break;
                    }
                    other => prop_assert!(false, "unexpected step {:?}", other),
                }
            }
        }
    }

    #[test]
    fn a_digest_hashed_elsewhere_is_waited_for() {
        let data = b"0123456789";
        let mut s = Sender::hashed_elsewhere(10, 4);
        let mut waited = false;
        loop {
            match s.poll_send() {
                Some(SendStep::Chunk { offset, len }) => {
                    let piece = &data[offset as usize..(offset + u64::from(len)) as usize];
                    assert!(matches!(s.record_chunk(piece), Recorded::Send { .. }));
                }
                Some(SendStep::Finished { digest }) => {
                    assert_eq!(digest, md5(data));
                    break;
                }
                other => {
                    assert_eq!(other, None, "only FINISHED waits");
                    assert_eq!(s.bytes_acknowledged(), 10);
                    assert!(!waited, "asked once");
                    waited = true;
                    assert!(s.set_digest(md5(data)));
                    assert!(!s.set_digest([0; 16]), "not twice");
                    continue;
                }
            }
            let _ = s.handle_reply(StatusCode::OK);
        }
        assert!(waited && s.hashed == 0);
        assert_eq!(s.handle_reply(StatusCode::OK).ok(), Some(ReplyOutcome::Over(Outcome::Committed)));
        assert!(!Sender::new(4, 4).set_digest([0; 16]), "only for a transfer hashed elsewhere");
        // An abort still goes out while the digest is awaited.
        let mut a = Sender::hashed_elsewhere(2, 4);
        let _ = a.poll_send();
        let _ = a.record_chunk(b"ab");
        let _ = a.handle_reply(StatusCode::OK);
        assert_eq!(a.poll_send(), Some(SendStep::Finished { digest: md5(b"ab") }), "one chunk: its own MD5");
    }

    #[test]
    fn a_one_chunk_file_is_hashed_once() {
        let mut s = Sender::new(4, 8);
        assert_eq!(s.poll_send(), Some(SendStep::Chunk { offset: 0, len: 4 }));
        assert_eq!(s.record_chunk(b"abcd"), Recorded::Send { digest: md5(b"abcd") });
        assert_eq!((s.hashed, s.known_digest), (0, Some(md5(b"abcd"))), "the chunk's MD5 is the file's");
        assert_eq!(s.handle_reply(StatusCode::OK).ok(), Some(ReplyOutcome::Continue));
        assert_eq!(s.poll_send(), Some(SendStep::Finished { digest: md5(b"abcd") }));
    }

    #[test]
    fn known_digest_is_sent_without_hashing_again() {
        let data = b"0123456789";
        let claimed = md5(data);
        let mut s = Sender::with_digest(10, 4, claimed);
        while let Some(step) = s.poll_send() {
            match step {
                SendStep::Chunk { offset, len } => {
                    let piece = &data[offset as usize..(offset + u64::from(len)) as usize];
                    assert!(matches!(s.record_chunk(piece), Recorded::Send { .. }));
                }
                SendStep::Finished { digest } => {
                    assert_eq!(digest, claimed);
                    // No pass was made over the chunks for it.
                    assert_eq!(s.hashed, 0);
                }
                SendStep::Abort => unreachable!(),
            }
            let _ = s.handle_reply(StatusCode::OK);
        }
        assert_eq!(s.outcome(), Some(Outcome::Committed));
    }

    /// Drives a growing transfer of `data` to the end: the file becomes
    /// available in the steps `grows` (clamped, increasing), then complete.
    /// Returns the chunks sent, in order, and the FINISHED digest.
    fn stream(data: &[u8], chunk: u32, grows: &[usize]) -> (Vec<(u64, u32)>, Option<Digest>) {
        let mut s = Sender::growing(chunk);
        let mut sent = Vec::new();
        let mut finished = None;
        let mut steps = grows.iter().map(|g| (*g).min(data.len())).collect::<Vec<_>>();
        steps.sort_unstable();
        let mut steps = steps.into_iter();
        let mut completed = false;
        for _ in 0..10_000 {
            match s.poll_send() {
                Some(SendStep::Chunk { offset, len }) => {
                    let end = offset + u64::from(len);
                    assert!(end <= s.size(), "only bytes made available are sent");
                    assert!(completed || len == chunk, "a short chunk before the end would be the last");
                    let piece = &data[offset as usize..end as usize];
                    assert_eq!(s.record_chunk_digest(len, md5(piece)), Recorded::Send { digest: md5(piece) });
                    sent.push((offset, len));
                    assert_eq!(reply(&mut s, StatusCode::OK), ReplyOutcome::Continue);
                }
                Some(SendStep::Finished { digest }) => {
                    assert!(completed, "FINISHED only once the file is complete");
                    finished = Some(digest);
                    assert_eq!(reply(&mut s, StatusCode::OK), ReplyOutcome::Over(Outcome::Committed));
                    break;
                }
                Some(SendStep::Abort) => panic!("nothing asked for an ABORT"),
                None => match steps.next() {
                    Some(available) => s.grow(available as u64),
                    None => {
                        assert!(!completed, "a complete file that sends nothing more is stuck");
                        assert!(s.complete(data.len() as u64, md5(data)));
                        completed = true;
                    }
                },
            }
        }
        (sent, finished)
    }

    #[test]
    fn a_growing_file_goes_out_in_whole_chunks_and_finishes_once_complete() {
        let data = b"0123456789";
        let (sent, finished) = stream(data, 4, &[3, 5, 9]);
        assert_eq!(sent, vec![(0, 4), (4, 4), (8, 2)]);
        assert_eq!(finished, Some(md5(data)));
        // Growing backwards, completing short, or completing twice are no-ops.
        let mut s = Sender::growing(4);
        s.grow(8);
        s.grow(2);
        assert_eq!(s.size(), 8);
        assert!(!s.complete(7, md5(b"x")), "bytes made available cannot vanish");
        assert!(s.complete(8, md5(b"01234567")));
        assert!(!s.complete(9, md5(b"x")));
        // Other transfers do not grow.
        let mut fixed = Sender::new(4, 4);
        fixed.grow(100);
        assert_eq!(fixed.size(), 4);
        assert!(!fixed.complete(4, md5(b"0123")));
    }

    #[test]
    fn a_growing_file_aborted_before_anything_went_out_ends_at_once() {
        let mut s = Sender::growing(4);
        assert_eq!(s.poll_send(), None, "nothing available yet");
        assert_eq!(s.abort(), Some(Outcome::Aborted));
        let mut s = Sender::growing(4);
        s.grow(4);
        let Some(SendStep::Chunk { len, .. }) = s.poll_send() else { panic!("a whole chunk is available") };
        assert!(matches!(s.record_chunk_digest(len, md5(b"0123")), Recorded::Send { .. }));
        assert_eq!(s.abort(), None, "a chunk is on the wire: an ABORT follows its reply");
        assert_eq!(reply(&mut s, StatusCode::OK), ReplyOutcome::Continue);
        assert_eq!(s.poll_send(), Some(SendStep::Abort));
    }

    proptest! {
        /// However the file grows, every byte goes out once, in order, in
        /// whole chunks but the last, and FINISHED carries the digest given
        /// at the end.
        #[test]
        fn a_growing_file_is_sent_whole_and_in_order(
            data in proptest::collection::vec(any::<u8>(), 0..200),
            chunk in 1u32..40,
            grows in proptest::collection::vec(0usize..220, 0..12),
        ) {
            let (sent, finished) = stream(&data, chunk, &grows);
            let mut next = 0u64;
            for (offset, len) in &sent {
                prop_assert_eq!(*offset, next);
                next += u64::from(*len);
            }
            prop_assert_eq!(next, data.len() as u64);
            prop_assert_eq!(finished, Some(md5(&data)));
        }
    }
}
