//! One incoming transfer, exactly as PROTOCOL.md section 4 lays it down.
//!
//! A [`Receiver`] is the receiving half of one transfer of one file: it is
//! told about each FILE_CHUNK header, chunk, FINISHED and ABORT of that
//! transfer and answers with a verdict — the STATUS to reply and what to do
//! with the data (read or skip the payload, append it to the temp file,
//! commit, discard). It never reads, writes or allocates a payload itself:
//! the caller owns the socket and the temp file. It keeps the whole-file MD5
//! incrementally over the accepted payloads, so the caller never has to read
//! its temp file back to check FINISHED.

use dropsync_proto::md5_pair::{md5_chunk_into, FileMd5};
use dropsync_proto::{Digest, StatusCode, ZERO_DIGEST};

/// A FINISHED digest of 16 zero bytes: "no whole-file digest given"
/// (section 4); the assembled file is accepted as if it had matched.
pub const NO_FILE_DIGEST: Digest = ZERO_DIGEST;

/// Invalid chunk sizes that end a transfer: "the third invalid chunk in one
/// transfer gets 0x0010 and aborts it" (section 4). The count is per
/// transfer, not consecutive, so a sender cannot probe sizes forever.
pub const INVALID_SIZES_TO_ABORT: u32 = 3;

/// Checksum mismatches that end a transfer: "the third mismatch in one
/// transfer gets 0x0008 and aborts it" (section 4). Counted per transfer, so a
/// link that corrupts every other chunk cannot keep a transfer (and its file
/// lock) alive forever.
pub const BAD_CHECKSUMS_TO_ABORT: u32 = 3;

/// What to do with a FILE_CHUNK whose header has been parsed but whose
/// payload has not been read yet (see [`Receiver::handle_chunk_header`]).
#[must_use = "the caller must read or skip the payload and send the reply"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderVerdict {
    /// The size is valid: read the payload and pass it to
    /// [`Receiver::handle_chunk`]. No reply yet.
    ReadPayload,
    /// The size is invalid (0 or above the maximum): read and discard the
    /// payload without ever allocating it, then send `reply` (0x0004). The
    /// transfer stays open; the sender tries again.
    Resend {
        /// The STATUS to send: 0x0004.
        reply: StatusCode,
    },
    /// The third invalid size of this transfer: read and discard the
    /// payload, send `reply` (0x0010), drop the temp file and release the
    /// file's lock. The transfer is over.
    Discard {
        /// The STATUS to send: 0x0010.
        reply: StatusCode,
    },
    /// The transfer was already over (committed, aborted or refused) and
    /// nothing changed. The payload still has to be skipped. A chunk naming
    /// F after its transfer ended opens a *new* transfer (section 4), so a
    /// caller that gets this kept a finished receiver by mistake and should
    /// hand the frame to a fresh one instead.
    Closed,
}

impl HeaderVerdict {
    /// The STATUS to send now, if any (`ReadPayload` replies only after
    /// [`Receiver::handle_chunk`]; `Closed` leaves the reply to the caller).
    pub fn reply(&self) -> Option<StatusCode> {
        match *self {
            HeaderVerdict::Resend { reply } | HeaderVerdict::Discard { reply } => Some(reply),
            HeaderVerdict::ReadPayload | HeaderVerdict::Closed => None,
        }
    }
}

/// What to do with a chunk whose payload has been read
/// (see [`Receiver::handle_chunk`]).
#[must_use = "the caller must act on the chunk and send the reply"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkVerdict {
    /// The MD5 matched: append the payload to the temp file, then send
    /// `reply` (0x0001).
    Append {
        /// The STATUS to send: 0x0001.
        reply: StatusCode,
    },
    /// The chunk is dropped (MD5 mismatch, 0x0002; or an invalid size that
    /// was not caught at the header, 0x0004); send `reply`. The transfer
    /// stays open and the sender sends the chunk again.
    Resend {
        /// The STATUS to send: 0x0002 or 0x0004.
        reply: StatusCode,
    },
    /// The third mismatch (0x0008) or third invalid size (0x0010) of this
    /// transfer: drop the chunk and the temp file, release the file's lock,
    /// send `reply`. The transfer is over.
    Discard {
        /// The STATUS to send: 0x0008 or 0x0010.
        reply: StatusCode,
    },
    /// The transfer was already over; nothing changed. See
    /// [`HeaderVerdict::Closed`].
    Closed,
}

impl ChunkVerdict {
    /// The STATUS to send, if any (`Closed` leaves it to the caller).
    pub fn reply(&self) -> Option<StatusCode> {
        match *self {
            ChunkVerdict::Append { reply }
            | ChunkVerdict::Resend { reply }
            | ChunkVerdict::Discard { reply } => Some(reply),
            ChunkVerdict::Closed => None,
        }
    }
}

/// How a transfer ends, for FINISHED and ABORT (see
/// [`Receiver::handle_finished`] and [`Receiver::handle_abort`]).
#[must_use = "the caller must commit or discard the temp file and send the reply"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishVerdict {
    /// The whole-file MD5 matched: make the temp file replace the old
    /// version atomically (fsync, rename), then send `reply` (0x0001).
    Commit {
        /// The STATUS to send: 0x0001.
        reply: StatusCode,
        /// Bytes in the committed file, for META-DATA.
        size: u64,
        /// MD5 of the committed file, for META-DATA.
        digest: Digest,
    },
    /// Drop the temp file, release the file's lock, send `reply`: 0x0008
    /// after a whole-file mismatch, 0x0001 for an ABORT.
    Discard {
        /// The STATUS to send.
        reply: StatusCode,
    },
    /// The transfer was already over; nothing changed. A FINISHED after the
    /// end opens a new (empty-file) transfer, so the caller should hand it
    /// to a fresh receiver; an ABORT naming no open transfer is answered
    /// 0x0001 and changes nothing (section 4).
    Closed,
}

impl FinishVerdict {
    /// The STATUS to send, if any (`Closed` leaves it to the caller).
    pub fn reply(&self) -> Option<StatusCode> {
        match *self {
            FinishVerdict::Commit { reply, .. } | FinishVerdict::Discard { reply } => Some(reply),
            FinishVerdict::Closed => None,
        }
    }
}

/// The receiving half of one transfer. Created when the first message naming
/// a file opens a transfer (after the caller has taken the file's lock) and
/// dropped once a verdict says the transfer is over.
///
/// It holds only counters and the running MD5, so a connection can keep one
/// per open transfer cheaply.
#[derive(Debug, Clone)]
pub struct Receiver {
    max_chunk: u32,
    /// MD5 of every accepted payload, in order: the assembled file so far.
    /// Each payload's own MD5 is computed in the same pass
    /// (`dropsync_proto::md5_pair`): the two digests cost about one.
    file_md5: FileMd5,
    bytes: u64,
    invalid_sizes: u32,
    bad_checksums: u32,
    over: bool,
}

impl Receiver {
    /// A transfer that accepts chunk payloads of 1 ..= `max_chunk` bytes
    /// (the receiver's configured maximum, 16 MiB by default, see
    /// `dropsync_proto::limits::DEFAULT_MAX_CHUNK`). A `max_chunk` of 0
    /// accepts no chunk at all: only an empty file can get through.
    pub fn new(max_chunk: u32) -> Self {
        Receiver {
            max_chunk,
            file_md5: FileMd5::default(),
            bytes: 0,
            invalid_sizes: 0,
            bad_checksums: 0,
            over: false,
        }
    }

    /// Checks a FILE_CHUNK's declared size *before* its payload is read, so
    /// an oversized chunk is skipped without ever being buffered.
    ///
    /// Valid sizes are 1 ..= `max_chunk`. An invalid one counts towards
    /// [`INVALID_SIZES_TO_ABORT`]; the verdict says whether to read or skip
    /// the payload and what to reply.
    pub fn handle_chunk_header(&mut self, payload_len: u32) -> HeaderVerdict {
        if self.over {
            return HeaderVerdict::Closed;
        }
        if self.size_is_valid(u64::from(payload_len)) {
            return HeaderVerdict::ReadPayload;
        }
        match self.count_invalid_size() {
            Some(reply) => HeaderVerdict::Discard { reply },
            None => HeaderVerdict::Resend {
                reply: StatusCode::RESEND_SIZE,
            },
        }
    }

    /// Checks a chunk's payload against its MD5.
    ///
    /// A match adds the payload to the whole-file MD5 and the byte count and
    /// tells the caller to append it. A mismatch drops the chunk and counts
    /// towards [`BAD_CHECKSUMS_TO_ABORT`]. The size is checked again here, so
    /// a caller that parsed the whole frame without
    /// [`handle_chunk_header`](Self::handle_chunk_header) still gets the
    /// section 4 answer; after a `ReadPayload` header verdict for the same
    /// chunk the size is valid and is not counted twice.
    pub fn handle_chunk(&mut self, digest: &Digest, payload: &[u8]) -> ChunkVerdict {
        if self.over {
            return ChunkVerdict::Closed;
        }
        if !self.size_is_valid(payload.len() as u64) {
            return match self.count_invalid_size() {
                Some(reply) => ChunkVerdict::Discard { reply },
                None => ChunkVerdict::Resend {
                    reply: StatusCode::RESEND_SIZE,
                },
            };
        }
        // Hashed into the whole-file MD5 in the same pass; taken back out
        // (the state restored) if the chunk is not accepted.
        let before = self.file_md5.clone();
        if md5_chunk_into(payload, &mut self.file_md5) != *digest {
            self.file_md5 = before;
            self.bad_checksums += 1;
            if self.bad_checksums >= BAD_CHECKSUMS_TO_ABORT {
                self.over = true;
                return ChunkVerdict::Discard {
                    reply: StatusCode::ABORT_CHECKSUM,
                };
            }
            return ChunkVerdict::Resend {
                reply: StatusCode::RESEND_CHECKSUM,
            };
        }
        self.bytes = self.bytes.saturating_add(payload.len() as u64);
        ChunkVerdict::Append {
            reply: StatusCode::OK,
        }
    }

    /// Ends the transfer on FINISHED: the whole-file MD5 of the accepted
    /// payloads must equal `digest`, or the data is discarded with 0x0008.
    ///
    /// A FINISHED with no chunk before it is an empty file, whose MD5 is
    /// that of no bytes at all. A `digest` of 16 zero bytes means "no
    /// whole-file digest given" (section 4: the assignment does not say
    /// which digest FINISHED carries): what the verified chunks assembled
    /// is committed, with its actual MD5.
    pub fn handle_finished(&mut self, digest: &Digest) -> FinishVerdict {
        if self.over {
            return FinishVerdict::Closed;
        }
        self.over = true;
        let actual = self.file_md5.finish();
        if actual == *digest || *digest == NO_FILE_DIGEST {
            FinishVerdict::Commit {
                reply: StatusCode::OK,
                size: self.bytes,
                digest: actual,
            }
        } else {
            FinishVerdict::Discard {
                reply: StatusCode::ABORT_CHECKSUM,
            }
        }
    }

    /// Ends the transfer on ABORT: the partial data is discarded and the
    /// reply is 0x0001, so a half-received file never replaces the previous
    /// version.
    pub fn handle_abort(&mut self) -> FinishVerdict {
        if self.over {
            return FinishVerdict::Closed;
        }
        self.over = true;
        FinishVerdict::Discard {
            reply: StatusCode::OK,
        }
    }

    /// Bytes accepted so far (the length of the temp file), for progress
    /// reports and logs.
    pub fn bytes_received(&self) -> u64 {
        self.bytes
    }

    /// True once a verdict has ended the transfer (commit, discard); every
    /// later event answers `Closed`. The caller then drops the receiver.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// The largest chunk payload this transfer accepts.
    pub fn max_chunk(&self) -> u32 {
        self.max_chunk
    }

    fn size_is_valid(&self, len: u64) -> bool {
        (1..=u64::from(self.max_chunk)).contains(&len)
    }

    /// Counts one invalid size; `Some(0x0010)` when that ends the transfer.
    fn count_invalid_size(&mut self) -> Option<StatusCode> {
        self.invalid_sizes += 1;
        if self.invalid_sizes >= INVALID_SIZES_TO_ABORT {
            self.over = true;
            Some(StatusCode::ABORT_SIZE)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_proto::md5;
    use proptest::prelude::*;

    const MAX: u32 = 8;

    fn good(rx: &mut Receiver, data: &[u8]) -> ChunkVerdict {
        assert_eq!(
            rx.handle_chunk_header(data.len() as u32),
            HeaderVerdict::ReadPayload
        );
        rx.handle_chunk(&md5(data), data)
    }

    fn bad(rx: &mut Receiver, data: &[u8]) -> ChunkVerdict {
        let mut wrong = md5(data);
        wrong[0] ^= 1;
        rx.handle_chunk(&wrong, data)
    }

    #[test]
    fn whole_transfer_commits_with_size_and_digest() {
        let mut rx = Receiver::new(MAX);
        assert_eq!(
            good(&mut rx, b"hello "),
            ChunkVerdict::Append {
                reply: StatusCode::OK
            }
        );
        assert_eq!(
            good(&mut rx, b"world"),
            ChunkVerdict::Append {
                reply: StatusCode::OK
            }
        );
        assert_eq!(rx.bytes_received(), 11);
        let d = md5(b"hello world");
        assert_eq!(
            rx.handle_finished(&d),
            FinishVerdict::Commit {
                reply: StatusCode::OK,
                size: 11,
                digest: d
            }
        );
        assert!(rx.is_over());
    }

    #[test]
    fn three_bad_checksums_resend_resend_abort() {
        let mut rx = Receiver::new(MAX);
        assert_eq!(
            bad(&mut rx, b"abc").reply(),
            Some(StatusCode::RESEND_CHECKSUM)
        );
        assert!(!rx.is_over());
        assert_eq!(
            bad(&mut rx, b"abc").reply(),
            Some(StatusCode::RESEND_CHECKSUM)
        );
        assert_eq!(
            bad(&mut rx, b"abc"),
            ChunkVerdict::Discard {
                reply: StatusCode::ABORT_CHECKSUM
            }
        );
        assert!(rx.is_over());
        assert_eq!(rx.bytes_received(), 0);
    }

    #[test]
    fn bad_checksums_count_per_transfer_not_consecutively() {
        let mut rx = Receiver::new(MAX);
        assert_eq!(
            bad(&mut rx, b"a").reply(),
            Some(StatusCode::RESEND_CHECKSUM)
        );
        assert_eq!(good(&mut rx, b"a").reply(), Some(StatusCode::OK));
        assert_eq!(
            bad(&mut rx, b"b").reply(),
            Some(StatusCode::RESEND_CHECKSUM)
        );
        assert_eq!(good(&mut rx, b"b").reply(), Some(StatusCode::OK));
        assert_eq!(bad(&mut rx, b"c").reply(), Some(StatusCode::ABORT_CHECKSUM));
        assert!(rx.is_over());
    }

    #[test]
    fn dropped_chunk_is_not_hashed() {
        let mut rx = Receiver::new(MAX);
        let _ = bad(&mut rx, b"junk");
        let _ = good(&mut rx, b"data");
        let d = md5(b"data");
        assert!(matches!(
            rx.handle_finished(&d),
            FinishVerdict::Commit { size: 4, .. }
        ));
    }

    #[test]
    fn three_bad_sizes_resend_resend_abort() {
        let mut rx = Receiver::new(MAX);
        assert_eq!(
            rx.handle_chunk_header(0),
            HeaderVerdict::Resend {
                reply: StatusCode::RESEND_SIZE
            }
        );
        assert_eq!(
            rx.handle_chunk_header(MAX + 1),
            HeaderVerdict::Resend {
                reply: StatusCode::RESEND_SIZE
            }
        );
        assert!(!rx.is_over());
        assert_eq!(
            rx.handle_chunk_header(u32::MAX),
            HeaderVerdict::Discard {
                reply: StatusCode::ABORT_SIZE
            }
        );
        assert!(rx.is_over());
    }

    #[test]
    fn size_bounds_are_one_to_max_inclusive() {
        let mut rx = Receiver::new(MAX);
        assert_eq!(rx.handle_chunk_header(1), HeaderVerdict::ReadPayload);
        assert_eq!(rx.handle_chunk_header(MAX), HeaderVerdict::ReadPayload);
        assert_eq!(
            rx.handle_chunk_header(0).reply(),
            Some(StatusCode::RESEND_SIZE)
        );
        assert_eq!(
            rx.handle_chunk_header(MAX + 1).reply(),
            Some(StatusCode::RESEND_SIZE)
        );
    }

    #[test]
    fn invalid_size_is_also_caught_without_the_header_check() {
        let mut rx = Receiver::new(MAX);
        let big = [7u8; MAX as usize + 1];
        assert_eq!(
            rx.handle_chunk(&md5(&big), &big).reply(),
            Some(StatusCode::RESEND_SIZE)
        );
        assert_eq!(
            rx.handle_chunk(&md5(b""), b"").reply(),
            Some(StatusCode::RESEND_SIZE)
        );
        assert_eq!(
            rx.handle_chunk_header(0).reply(),
            Some(StatusCode::ABORT_SIZE)
        );
    }

    #[test]
    fn size_and_checksum_counters_are_separate() {
        let mut rx = Receiver::new(MAX);
        let _ = rx.handle_chunk_header(0);
        let _ = rx.handle_chunk_header(0);
        assert_eq!(
            bad(&mut rx, b"x").reply(),
            Some(StatusCode::RESEND_CHECKSUM)
        );
        assert_eq!(
            bad(&mut rx, b"x").reply(),
            Some(StatusCode::RESEND_CHECKSUM)
        );
        assert!(!rx.is_over());
    }

    #[test]
    fn empty_file_is_finished_without_chunks() {
        let mut rx = Receiver::new(MAX);
        let d = md5(b"");
        assert_eq!(
            rx.handle_finished(&d),
            FinishVerdict::Commit {
                reply: StatusCode::OK,
                size: 0,
                digest: d
            }
        );
    }

    #[test]
    fn mismatch_at_finished_discards_with_0x0008() {
        let mut rx = Receiver::new(MAX);
        let _ = good(&mut rx, b"abc");
        assert_eq!(
            rx.handle_finished(&md5(b"abd")),
            FinishVerdict::Discard {
                reply: StatusCode::ABORT_CHECKSUM
            }
        );
        assert!(rx.is_over());
    }

    #[test]
    fn zero_digest_at_finished_commits_what_the_chunks_assembled() {
        let mut rx = Receiver::new(MAX);
        let _ = good(&mut rx, b"abc");
        let _ = good(&mut rx, b"def");
        assert_eq!(
            rx.handle_finished(&NO_FILE_DIGEST),
            FinishVerdict::Commit {
                reply: StatusCode::OK,
                size: 6,
                digest: md5(b"abcdef")
            }
        );
        // An empty file too: a FINISHED alone.
        assert!(matches!(
            Receiver::new(MAX).handle_finished(&NO_FILE_DIGEST),
            FinishVerdict::Commit { size: 0, digest, .. } if digest == md5(b"")
        ));
    }

    #[test]
    fn abort_mid_transfer_discards_with_ok() {
        let mut rx = Receiver::new(MAX);
        let _ = good(&mut rx, b"abc");
        assert_eq!(
            rx.handle_abort(),
            FinishVerdict::Discard {
                reply: StatusCode::OK
            }
        );
        assert!(rx.is_over());
    }

    #[test]
    fn every_event_after_the_end_is_closed() {
        let mut rx = Receiver::new(MAX);
        let _ = rx.handle_abort();
        assert_eq!(rx.handle_chunk_header(1), HeaderVerdict::Closed);
        assert_eq!(rx.handle_chunk(&md5(b"a"), b"a"), ChunkVerdict::Closed);
        assert_eq!(rx.handle_finished(&md5(b"")), FinishVerdict::Closed);
        assert_eq!(rx.handle_abort(), FinishVerdict::Closed);
        assert_eq!(rx.handle_abort().reply(), None);
    }

    #[test]
    fn zero_max_accepts_only_an_empty_file() {
        let mut rx = Receiver::new(0);
        assert_eq!(
            rx.handle_chunk_header(1).reply(),
            Some(StatusCode::RESEND_SIZE)
        );
        assert!(matches!(
            rx.handle_finished(&md5(b"")),
            FinishVerdict::Commit { size: 0, .. }
        ));
    }

    #[derive(Debug, Clone)]
    enum Event {
        Header(u32),
        Chunk { data: Vec<u8>, corrupt: bool },
        /// `zero`: the digest is 16 zero bytes ("none given").
        Finished { corrupt: bool, zero: bool },
        Abort,
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            2 => prop_oneof![Just(0u32), 1..=MAX + 2, Just(u32::MAX)].prop_map(Event::Header),
            6 => (proptest::collection::vec(any::<u8>(), 0..=MAX as usize + 1), any::<bool>())
                .prop_map(|(data, corrupt)| Event::Chunk { data, corrupt }),
            1 => (any::<bool>(), any::<bool>()).prop_map(|(corrupt, zero)| Event::Finished { corrupt, zero }),
            1 => Just(Event::Abort),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a model of section 4: replies are always the ones the
        /// rules give, the counters end the transfer at exactly three, a
        /// commit carries exactly the appended bytes, and nothing after the
        /// end changes anything.
        #[test]
        fn receiver_follows_the_model(events in proptest::collection::vec(event(), 0..24)) {
            let mut rx = Receiver::new(MAX);
            let mut file: Vec<u8> = Vec::new();
            let (mut sizes, mut sums, mut over) = (0u32, 0u32, false);
            for ev in events {
                match ev {
                    Event::Header(len) => {
                        let v = rx.handle_chunk_header(len);
                        let valid = (1..=MAX).contains(&len);
                        if over {
                            prop_assert_eq!(v, HeaderVerdict::Closed);
                        } else if valid {
                            prop_assert_eq!(v, HeaderVerdict::ReadPayload);
                        } else {
                            sizes += 1;
                            over = sizes == 3;
                            let want = if over { StatusCode::ABORT_SIZE } else { StatusCode::RESEND_SIZE };
                            prop_assert_eq!(v.reply(), Some(want));
                        }
                    }
                    Event::Chunk { data, corrupt } => {
                        let mut d = md5(&data);
                        if corrupt { d[15] ^= 0x80; }
                        let v = rx.handle_chunk(&d, &data);
                        let valid = (1..=MAX as usize).contains(&data.len());
                        if over {
                            prop_assert_eq!(v, ChunkVerdict::Closed);
                        } else if !valid {
                            sizes += 1;
                            over = sizes == 3;
                            let want = if over { StatusCode::ABORT_SIZE } else { StatusCode::RESEND_SIZE };
                            prop_assert_eq!(v.reply(), Some(want));
                        } else if corrupt {
                            sums += 1;
                            over = sums == 3;
                            let want = if over { StatusCode::ABORT_CHECKSUM } else { StatusCode::RESEND_CHECKSUM };
                            prop_assert_eq!(v.reply(), Some(want));
                        } else {
                            prop_assert_eq!(v, ChunkVerdict::Append { reply: StatusCode::OK });
                            file.extend_from_slice(&data);
                        }
                    }
                    Event::Finished { corrupt, zero } => {
                        let mut d = md5(&file);
                        if corrupt { d[0] ^= 1; }
                        if zero { d = NO_FILE_DIGEST; }
                        let v = rx.handle_finished(&d);
                        if over {
                            prop_assert_eq!(v, FinishVerdict::Closed);
                        } else if corrupt && !zero {
                            prop_assert_eq!(v, FinishVerdict::Discard { reply: StatusCode::ABORT_CHECKSUM });
                        } else {
                            prop_assert_eq!(v, FinishVerdict::Commit {
                                reply: StatusCode::OK, size: file.len() as u64, digest: md5(&file),
                            });
                        }
                        over = true;
                    }
                    Event::Abort => {
                        let v = rx.handle_abort();
                        if over {
                            prop_assert_eq!(v, FinishVerdict::Closed);
                        } else {
                            prop_assert_eq!(v, FinishVerdict::Discard { reply: StatusCode::OK });
                        }
                        over = true;
                    }
                }
                prop_assert_eq!(rx.is_over(), over);
                if !over {
                    prop_assert_eq!(rx.bytes_received(), file.len() as u64);
                }
            }
        }
    }
}
