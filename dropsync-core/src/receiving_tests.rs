//! The receiving side driven with bytes and virtual time, no socket: one
//! test per rule, named by the rule's words (PROTOCOL.md sections 3, 4, 6
//! and 9).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use dropsync_proto::digest::md5;
use dropsync_proto::encode_chunk_header;
use dropsync_proto::name::METADATA_TRANSFER_NAME;
use dropsync_proto::{parse_head, Frame, Head, StatusCode, ZERO_DIGEST};
use proptest::prelude::*;

use super::*;

const MAX_CHUNK: u32 = 1024;
const IDLE: Duration = Duration::from_secs(60);

fn config() -> Config {
    Config {
        max_chunk: MAX_CHUNK,
        max_name_len: 4096,
        metadata_name: false,
        limits: Limits { max_open: 4, idle: IDLE, remember_expired: 8 },
        timers: Timers { keepalive: Duration::from_secs(15), dead_peer: Duration::from_secs(60) },
        silence: Silence::Ends,
    }
}

/// One open transfer of the test host: the bytes appended so far.
#[derive(Debug, Default)]
struct Tx(Vec<u8>);

/// A host with the folder in a map.
#[derive(Debug, Default)]
struct TestHost {
    files: HashMap<String, Vec<u8>>,
    /// Paths whose lock another connection holds.
    locked: HashSet<String>,
    /// Lend a buffer for chunk payloads.
    lend: bool,
    /// Paths with a delivery awaiting its reply (the stale-change rule).
    settle: HashSet<String>,
    /// `append` fails.
    full: bool,
    paused: bool,
    discarded: Vec<(String, Ended)>,
    refused: Vec<(String, StatusCode)>,
    /// Payload kinds seen by `append`: true for a lent (owned) buffer.
    owned: Vec<bool>,
    /// Answer commits and DELETEs later (group commit): their tickets and
    /// the STATUS each will get, in the order they came.
    defer: bool,
    later: Vec<(u64, StatusCode)>,
}

impl TestHost {
    fn answer(&mut self, code: StatusCode) -> Reply {
        if !self.defer {
            return code.into();
        }
        let ticket = 100 + self.later.len() as u64;
        self.later.push((ticket, code));
        Reply::Later(ticket)
    }
}

impl Host for TestHost {
    type Transfer = Tx;
    fn open(&mut self, name: &str, _first_len: u32) -> Result<Tx, StatusCode> {
        if self.locked.contains(name) {
            return Err(StatusCode::LOCKED);
        }
        Ok(Tx::default())
    }
    fn chunk_buffer(&mut self, _t: &mut Tx, len: u32) -> Option<Vec<u8>> {
        self.lend.then(|| Vec::with_capacity(len as usize))
    }
    fn append(&mut self, _name: &str, t: &mut Tx, payload: Payload<'_>) -> Result<(), StatusCode> {
        if self.full {
            return Err(StatusCode::IN_USE);
        }
        self.owned.push(matches!(payload, Payload::Owned(_)));
        t.0.extend_from_slice(payload.as_slice());
        Ok(())
    }
    fn commit(&mut self, name: &str, t: Tx, file: Assembled) -> Reply {
        assert_eq!(file.size, t.0.len() as u64);
        assert_eq!(file.md5, md5(&t.0));
        self.files.insert(name.to_owned(), t.0);
        self.answer(StatusCode::OK)
    }
    fn discard(&mut self, name: &str, _t: Tx, why: Ended) {
        self.discarded.push((name.to_owned(), why));
    }
    fn refused(&mut self, name: &str, code: StatusCode) {
        self.refused.push((name.to_owned(), code));
    }
    fn must_settle(&mut self, name: &str) -> bool {
        self.settle.contains(name)
    }
    fn delete(&mut self, name: &str) -> Reply {
        if self.locked.contains(name) {
            return StatusCode::LOCKED.into();
        }
        let code = match self.files.remove(name) {
            Some(_) => StatusCode::OK,
            None => StatusCode::NO_FILE,
        };
        self.answer(code)
    }
    fn paused(&self) -> bool {
        self.paused
    }
}

/// The machine, its host and a virtual clock.
struct Conn {
    m: Receiving<Tx>,
    host: TestHost,
    now: Instant,
}

fn conn() -> Conn {
    conn_with(config())
}

fn conn_with(config: Config) -> Conn {
    // Any instant will do as the start of virtual time.
    let now = dropsync_io::clock::now();
    Conn { m: Receiving::new(config, now), host: TestHost::default(), now }
}

impl Conn {
    /// Feeds `bytes`, handles them, and returns the STATUS codes sent.
    fn send(&mut self, bytes: &[u8]) -> Vec<StatusCode> {
        self.m.handle_input(self.now, bytes);
        let step = self.m.process(self.now, &mut self.host).expect("connection stays up");
        assert!(matches!(step, Step::NeedInput | Step::Paused), "{step:?}");
        self.replies()
    }

    fn replies(&mut self) -> Vec<StatusCode> {
        let mut out = Vec::new();
        self.m.poll_transmit(self.now, &mut out);
        statuses(&out)
    }

    fn advance(&mut self, by: Duration) -> Result<Vec<StatusCode>, Closed> {
        self.now += by;
        self.m.handle_timeout(self.now, &mut self.host)?;
        Ok(self.replies())
    }
}

fn statuses(mut bytes: &[u8]) -> Vec<StatusCode> {
    let mut v = Vec::new();
    while let Ok(Some((Head::Frame(Frame::Status(code)), used))) = parse_head(bytes) {
        v.push(code);
        bytes = &bytes[used..];
    }
    assert!(bytes.is_empty(), "only STATUS frames are sent");
    v
}

fn chunk(name: &str, payload: &[u8]) -> Vec<u8> {
    Frame::Chunk { digest: md5(payload), name, payload }.to_vec()
}

fn bad_chunk(name: &str, payload: &[u8]) -> Vec<u8> {
    Frame::Chunk { digest: md5(b"something else"), name, payload }.to_vec()
}

fn finished(name: &str, whole: &[u8]) -> Vec<u8> {
    Frame::Finished { digest: md5(whole), name }.to_vec()
}

fn abort(name: &str) -> Vec<u8> {
    Frame::Abort { digest: ZERO_DIGEST, name }.to_vec()
}

fn delete(name: &str) -> Vec<u8> {
    Frame::Delete { digest: ZERO_DIGEST, name }.to_vec()
}

fn upload(name: &str, data: &[u8]) -> Vec<u8> {
    let mut v = chunk(name, data);
    v.extend(finished(name, data));
    v
}

const OK: StatusCode = StatusCode::OK;

#[test]
fn every_message_gets_exactly_one_status_reply_in_the_order_sent() {
    let mut c = conn();
    c.host.files.insert("gone".into(), b"x".to_vec());
    let mut bytes = upload("a", b"hello");
    bytes.extend(delete("gone"));
    bytes.extend(delete("never"));
    bytes.extend(bad_chunk("b", b"zz"));
    assert_eq!(c.send(&bytes), vec![OK, OK, OK, StatusCode::NO_FILE, StatusCode::RESEND_CHECKSUM]);
    assert_eq!(c.host.files["a"], b"hello");
}

#[test]
fn a_keep_alive_is_never_replied_to() {
    let mut c = conn();
    let mut bytes = Frame::Status(StatusCode::KEEP_ALIVE).to_vec();
    bytes.extend(chunk("a", b"x"));
    bytes.extend(Frame::Status(StatusCode::KEEP_ALIVE).to_vec());
    bytes.extend(finished("a", b"x"));
    assert_eq!(c.send(&bytes), vec![OK, OK]);
}

#[test]
fn a_stray_status_is_not_answered() {
    let mut c = conn();
    assert_eq!(c.send(&Frame::Status(StatusCode::OK).to_vec()), vec![]);
    assert_eq!(c.m.poll_event(), Some(Event::StrayStatus(StatusCode::OK)));
}

#[test]
fn an_empty_file_is_a_finished_with_no_chunk() {
    let mut c = conn();
    assert_eq!(c.send(&finished("empty", b"")), vec![OK]);
    assert_eq!(c.host.files["empty"], b"");
}

#[test]
fn the_first_message_naming_f_opens_the_transfer_and_a_held_lock_gets_0x0040() {
    let mut c = conn();
    c.host.locked.insert("f".into());
    // The transfer is over before it began: its payload is skipped.
    let mut bytes = chunk("f", b"data");
    bytes.extend(upload("g", b"other"));
    assert_eq!(c.send(&bytes), vec![StatusCode::LOCKED, OK, OK]);
    assert_eq!(c.host.refused, vec![("f".into(), StatusCode::LOCKED)]);
    assert_eq!(c.m.open_transfers(), 0);
    c.host.locked.clear();
    assert_eq!(c.send(&upload("f", b"now")), vec![OK, OK]);
}

#[test]
fn an_invalid_chunk_size_is_read_and_discarded_and_the_third_aborts_the_transfer() {
    let mut c = conn();
    let big = vec![1u8; MAX_CHUNK as usize + 1];
    assert_eq!(c.send(&chunk("f", b"ok")), vec![OK]);
    assert_eq!(c.send(&chunk("f", &big)), vec![StatusCode::RESEND_SIZE]);
    assert_eq!(c.send(&chunk("f", b"")), vec![StatusCode::RESEND_SIZE]);
    assert_eq!(c.send(&chunk("f", &big)), vec![StatusCode::ABORT_SIZE]);
    assert_eq!(c.host.discarded, vec![("f".into(), Ended::Verdict(StatusCode::ABORT_SIZE))]);
    // The stream is still in step: the next message is read as one.
    assert_eq!(c.send(&upload("g", b"next")), vec![OK, OK]);
}

#[test]
fn an_oversized_payload_is_never_allocated() {
    let mut c = conn();
    let declared: u32 = 64 * 1024 * 1024;
    let mut head = Vec::new();
    encode_chunk_header(&ZERO_DIGEST, "f", declared, &mut head);
    assert_eq!(c.send(&head), vec![StatusCode::RESEND_SIZE]);
    let piece = vec![0u8; 64 * 1024];
    for _ in 0..(declared as usize / piece.len()) {
        c.m.handle_input(c.now, &piece);
        assert!(c.m.spare().len() <= 256 * 1024, "the buffer grew to {}", c.m.spare().len());
    }
    assert_eq!(c.send(&upload("g", b"after")), vec![OK, OK]);
}

#[test]
fn a_chunk_whose_md5_does_not_match_gets_0x0002_and_the_third_mismatch_0x0008() {
    let mut c = conn();
    assert_eq!(c.send(&bad_chunk("f", b"one")), vec![StatusCode::RESEND_CHECKSUM]);
    // The sender resends the same chunk; it is taken.
    assert_eq!(c.send(&chunk("f", b"one")), vec![OK]);
    assert_eq!(c.send(&bad_chunk("f", b"two")), vec![StatusCode::RESEND_CHECKSUM]);
    assert_eq!(c.send(&bad_chunk("f", b"two")), vec![StatusCode::ABORT_CHECKSUM]);
    assert_eq!(c.host.discarded, vec![("f".into(), Ended::Verdict(StatusCode::ABORT_CHECKSUM))]);
    assert!(c.host.files.is_empty());
}

#[test]
fn finished_checks_the_md5_of_the_whole_assembled_file() {
    let mut c = conn();
    let mut bytes = chunk("f", b"ab");
    bytes.extend(chunk("f", b"cd"));
    bytes.extend(finished("f", b"abcd"));
    assert_eq!(c.send(&bytes), vec![OK, OK, OK]);
    assert_eq!(c.host.files["f"], b"abcd");
    // Mismatch: 0x0008 and the data is discarded.
    let mut bytes = chunk("g", b"ab");
    bytes.extend(finished("g", b"abX"));
    assert_eq!(c.send(&bytes), vec![OK, StatusCode::ABORT_CHECKSUM]);
    assert!(!c.host.files.contains_key("g"));
    assert_eq!(c.host.discarded, vec![("g".into(), Ended::Verdict(StatusCode::ABORT_CHECKSUM))]);
}

#[test]
fn a_finished_digest_of_16_zero_bytes_means_no_whole_file_digest_given() {
    let mut c = conn();
    let mut bytes = chunk("f", b"data");
    bytes.extend(Frame::Finished { digest: ZERO_DIGEST, name: "f" }.to_vec());
    assert_eq!(c.send(&bytes), vec![OK, OK]);
    assert_eq!(c.host.files["f"], b"data");
}

#[test]
fn abort_discards_the_partial_data_releases_the_lock_and_replies_ok() {
    let mut c = conn();
    assert_eq!(c.send(&chunk("f", b"part")), vec![OK]);
    assert_eq!(c.send(&abort("f")), vec![OK]);
    assert_eq!(c.host.discarded, vec![("f".into(), Ended::PeerAbort)]);
    assert_eq!(c.m.open_transfers(), 0);
    assert!(c.host.files.is_empty(), "a half-received file never replaces the previous version");
}

#[test]
fn an_abort_naming_no_transfer_open_on_that_connection_is_answered_ok_and_changes_nothing() {
    let mut c = conn();
    c.host.files.insert("f".into(), b"kept".to_vec());
    assert_eq!(c.send(&abort("f")), vec![OK]);
    assert!(c.host.discarded.is_empty());
    assert_eq!(c.host.files["f"], b"kept");
}

#[test]
fn messages_of_different_transfers_may_interleave_on_one_connection() {
    let mut c = conn();
    let mut bytes = chunk("a", b"a1");
    bytes.extend(chunk("b", b"b1"));
    bytes.extend(chunk("a", b"a2"));
    bytes.extend(finished("b", b"b1"));
    bytes.extend(finished("a", b"a1a2"));
    assert_eq!(c.send(&bytes), vec![OK; 5]);
    assert_eq!(c.host.files["a"], b"a1a2");
    assert_eq!(c.host.files["b"], b"b1");
}

#[test]
fn a_transfer_refused_or_aborted_by_a_reply_is_over_with_that_reply() {
    let mut c = conn();
    let mut bytes = chunk("f", b"x");
    bytes.extend(finished("f", b"wrong"));
    // After 0x0008 no ABORT follows; the next chunk opens a new transfer.
    bytes.extend(chunk("f", b"y"));
    bytes.extend(finished("f", b"y"));
    assert_eq!(c.send(&bytes), vec![OK, StatusCode::ABORT_CHECKSUM, OK, OK]);
    assert_eq!(c.host.files["f"], b"y");
}

#[test]
fn a_rejected_name_gets_0x0100_and_nothing_is_written() {
    let mut c = conn();
    let mut bytes = chunk("../escape", b"evil");
    bytes.extend(finished("/abs", b""));
    bytes.extend(delete(".dropsync/x"));
    bytes.extend(chunk(METADATA_TRANSFER_NAME, b"not from a client"));
    bytes.extend(upload("fine", b"ok"));
    assert_eq!(c.send(&bytes), vec![StatusCode::BAD_REQUEST; 4].into_iter().chain([OK, OK]).collect::<Vec<_>>());
    assert_eq!(c.host.files.keys().collect::<Vec<_>>(), vec!["fine"]);
    assert!(matches!(c.m.poll_event(), Some(Event::BadName { .. })));
}

#[test]
fn a_name_longer_than_the_limit_gets_0x0100() {
    let mut c = conn_with(Config { max_name_len: 8, ..config() });
    assert_eq!(c.send(&upload("123456789", b"x")), vec![StatusCode::BAD_REQUEST; 2]);
    assert_eq!(c.send(&upload("12345678", b"x")), vec![OK, OK]);
}

#[test]
fn the_metadata_transfer_is_taken_only_where_configured() {
    let mut c = conn_with(Config { metadata_name: true, ..config() });
    assert_eq!(c.send(&upload(METADATA_TRANSFER_NAME, b"dropsync-metadata 1\n")), vec![OK, OK]);
    // A DELETE of it is never valid.
    assert_eq!(c.send(&delete(METADATA_TRANSFER_NAME)), vec![StatusCode::BAD_REQUEST]);
}

#[test]
fn delete_of_a_path_with_a_transfer_open_on_the_connection_meets_its_lock() {
    let mut c = conn();
    c.host.files.insert("f".into(), b"old".to_vec());
    assert_eq!(c.send(&chunk("f", b"new")), vec![OK]);
    assert_eq!(c.send(&delete("f")), vec![StatusCode::LOCKED]);
    assert_eq!(c.host.files["f"], b"old");
}

#[test]
fn request_and_a_repeated_hello_take_the_hosts_answer() {
    let mut c = conn();
    let mut bytes = Frame::Request { digest: ZERO_DIGEST, name: "f" }.to_vec();
    bytes.extend(Frame::Hello { client_id: [1; 16], label: "x" }.to_vec());
    assert_eq!(c.send(&bytes), vec![StatusCode::BAD_REQUEST; 2]);
}

#[test]
fn a_message_of_unknown_type_closes_the_connection() {
    let mut c = conn();
    c.m.handle_input(c.now, &[0x09, 0x00, 1, 2, 3]);
    assert!(matches!(c.m.process(c.now, &mut c.host), Err(Closed::Unreadable(_))));
}

#[test]
fn a_keep_alive_is_sent_after_15_s_without_sending_anything() {
    let mut c = conn();
    assert_eq!(c.advance(Duration::from_secs(14)).unwrap(), vec![]);
    assert_eq!(c.advance(Duration::from_secs(1)).unwrap(), vec![StatusCode::KEEP_ALIVE]);
    // Replies count as sending.
    c.now += Duration::from_secs(10);
    assert_eq!(c.send(&upload("f", b"x")), vec![OK, OK]);
    assert_eq!(c.advance(Duration::from_secs(14)).unwrap(), vec![]);
    assert_eq!(c.m.poll_timeout(), c.now + Duration::from_secs(1));
}

#[test]
fn a_connection_that_has_received_nothing_for_60_s_is_closed() {
    let mut c = conn();
    c.now += Duration::from_secs(59);
    c.m.handle_input(c.now, &Frame::Status(StatusCode::KEEP_ALIVE).to_vec());
    assert!(c.advance(Duration::from_secs(59)).is_ok(), "a keep-alive is something received");
    assert!(matches!(c.advance(Duration::from_secs(1)), Err(Closed::PeerGone(Gone::Silent(_)))));
}

#[test]
fn part_of_a_message_is_not_silence() {
    let mut c = conn();
    let bytes = chunk("f", &[5u8; 1000]);
    for piece in bytes.chunks(100) {
        c.now += Duration::from_secs(50);
        c.m.handle_input(c.now, piece);
        assert!(c.m.handle_timeout(c.now, &mut c.host).is_ok());
    }
}

#[test]
fn a_legacy_session_is_not_closed_for_silence_alone() {
    let mut c = conn_with(Config { silence: Silence::Allowed, ..config() });
    assert!(c.advance(Duration::from_secs(3600)).is_ok());
}

#[test]
fn an_open_transfer_with_no_message_of_its_own_for_60_s_is_aborted_even_while_keep_alives_flow() {
    let mut c = conn();
    assert_eq!(c.send(&chunk("f", b"part")), vec![OK]);
    for _ in 0..6 {
        c.now += Duration::from_secs(10);
        c.send(&Frame::Status(StatusCode::KEEP_ALIVE).to_vec());
        c.advance(Duration::ZERO).unwrap();
    }
    assert_eq!(c.host.discarded, vec![("f".into(), Ended::Idle)]);
    // Its next message is refused with 0x0080, which ends it.
    assert_eq!(c.send(&finished("f", b"part")), vec![StatusCode::IN_USE]);
    assert!(c.host.files.is_empty(), "no truncated file is committed");
    assert_eq!(c.m.poll_event(), Some(Event::LateMessage { name: "f".into() }));
}

#[test]
fn the_first_message_of_a_transfer_beyond_the_limit_is_refused_with_0x0080() {
    let mut c = conn();
    for name in ["a", "b", "c", "d"] {
        assert_eq!(c.send(&chunk(name, b"1")), vec![OK]);
    }
    assert_eq!(c.send(&chunk("e", b"1")), vec![StatusCode::IN_USE]);
    assert_eq!(c.m.poll_event(), Some(Event::LimitReached { max_open: 4 }));
    // The open ones carry on; once one ends, the sender may try again.
    assert_eq!(c.send(&finished("a", b"1")), vec![OK]);
    assert_eq!(c.send(&upload("e", b"1")), vec![OK, OK]);
}

#[test]
fn a_failed_write_ends_the_transfer_with_0x0080() {
    let mut c = conn();
    c.host.full = true;
    assert_eq!(c.send(&chunk("f", b"x")), vec![StatusCode::IN_USE]);
    assert_eq!(c.host.discarded, vec![("f".into(), Ended::HostFailed(StatusCode::IN_USE))]);
}

#[test]
fn a_large_payload_is_read_straight_into_the_hosts_buffer() {
    let mut c = conn();
    c.host.lend = true;
    let data = vec![9u8; 1000];
    let bytes = upload("f", &data);
    let (first, rest) = bytes.split_at(100);
    c.m.handle_input(c.now, first);
    assert_eq!(c.m.process(c.now, &mut c.host), Ok(Step::NeedInput));
    assert!(c.m.spare().len() < 1000, "the rest of the payload goes into the lent buffer");
    assert_eq!(c.send(rest), vec![OK, OK]);
    assert_eq!(c.host.owned, vec![true]);
    assert_eq!(c.host.files["f"], data);
}

#[test]
fn a_change_over_an_unanswered_delivery_waits_at_most_1_s() {
    let mut c = conn();
    c.host.settle.insert("f".into());
    c.host.files.insert("g".into(), b"old".to_vec());
    c.host.settle.insert("g".into());
    let mut bytes = upload("f", b"new");
    bytes.extend(delete("g"));
    c.m.handle_input(c.now, &bytes);
    let until = c.now + Duration::from_secs(1);
    // The chunk's reply is sent before the wait: the peer may need it.
    assert_eq!(c.m.process(c.now, &mut c.host), Ok(Step::Settle { name: "f".into(), until }));
    assert_eq!(c.replies(), vec![OK]);
    assert!(!c.host.files.contains_key("f"));
    c.now += Duration::from_millis(300);
    assert_eq!(
        c.m.process(c.now, &mut c.host),
        Ok(Step::Settle { name: "g".into(), until: c.now + Duration::from_secs(1) })
    );
    assert_eq!(c.host.files["f"], b"new");
    assert_eq!(c.m.process(c.now, &mut c.host), Ok(Step::NeedInput));
    assert_eq!(c.replies(), vec![OK, OK]);
    assert!(!c.host.files.contains_key("g"));
}

#[test]
fn a_paused_host_gets_no_message_until_it_resumes() {
    let mut c = conn();
    c.host.paused = true;
    c.m.handle_input(c.now, &upload("f", b"x"));
    assert_eq!(c.m.process(c.now, &mut c.host), Ok(Step::Paused));
    c.host.paused = false;
    assert_eq!(c.m.process(c.now, &mut c.host), Ok(Step::NeedInput));
    assert_eq!(c.replies(), vec![OK, OK]);
}

#[test]
fn the_connection_ending_discards_every_open_transfer() {
    let mut c = conn();
    c.send(&chunk("a", b"1"));
    c.send(&chunk("b", b"1"));
    assert_eq!(c.m.close(&mut c.host), 2);
    let mut names: Vec<_> = c.host.discarded.iter().map(|(n, w)| (n.as_str(), *w)).collect();
    names.sort_by_key(|(n, _)| *n);
    assert_eq!(names, vec![("a", Ended::ConnectionClosed), ("b", Ended::ConnectionClosed)]);
}

/// A stream of uploads, aborts and deletes, and what it must yield.
fn script() -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..6u8 {
        let name = format!("f{i}");
        let data: Vec<u8> = (0..(i as usize * 300)).map(|b| b as u8 ^ i).collect();
        for piece in data.chunks(MAX_CHUNK as usize) {
            v.extend(chunk(&name, piece));
        }
        if i == 3 {
            v.extend(bad_chunk(&name, b"zz"));
            v.extend(abort(&name));
        } else {
            v.extend(finished(&name, &data));
        }
        v.extend(Frame::Status(StatusCode::KEEP_ALIVE).to_vec());
    }
    v.extend(delete("f1"));
    v
}

#[test]
fn a_reply_given_later_keeps_its_place_and_the_replies_after_it_wait() {
    let mut c = conn();
    c.host.defer = true;
    c.host.files.insert("gone".into(), b"x".to_vec());
    let mut bytes = upload("a", b"hello");
    bytes.extend(chunk("b", b"one"));
    bytes.extend(delete("gone"));
    bytes.extend(bad_chunk("c", b"zz"));
    // The chunk of "a" is answered; its FINISHED is not yet, so nothing
    // after it goes out.
    assert_eq!(c.send(&bytes), vec![OK]);
    assert_eq!(c.m.replies_awaited(), 2);
    let (first, second) = (c.host.later[0], c.host.later[1]);
    // Given out of order: the DELETE's waits for the commit's.
    assert!(c.m.resolve(second.0, second.1));
    assert_eq!(c.replies(), vec![]);
    assert!(c.m.resolve(first.0, StatusCode::IN_USE));
    assert_eq!(c.replies(), vec![StatusCode::IN_USE, OK, OK, StatusCode::RESEND_CHECKSUM]);
    assert_eq!(c.m.replies_awaited(), 0);
    // A ticket given once is spent.
    assert!(!c.m.resolve(first.0, OK));
    // With nothing awaited, replies go out at once again.
    c.host.defer = false;
    assert_eq!(c.send(&finished("b", b"one")), vec![OK]);
}

#[test]
fn a_keep_alive_does_not_wait_behind_a_reply_given_later() {
    let mut c = conn();
    c.host.defer = true;
    assert_eq!(c.send(&upload("a", b"x")), vec![OK]);
    assert_eq!(c.advance(Duration::from_secs(16)).expect("up"), vec![StatusCode::KEEP_ALIVE]);
    let (ticket, code) = c.host.later[0];
    assert!(c.m.resolve(ticket, code));
    assert_eq!(c.replies(), vec![OK]);
}

proptest! {
    /// Replies given later, in any order, go out in the order of the
    /// messages they answer, and equal the replies given at once.
    #[test]
    fn replies_given_later_in_any_order_keep_the_order_of_the_messages(order in Just((0..6usize).collect::<Vec<_>>()).prop_shuffle()) {
        let bytes = script();
        let mut now = conn();
        let expected = now.send(&bytes);
        let mut c = conn();
        c.host.defer = true;
        let mut got = c.send(&bytes);
        let later = c.host.later.clone();
        for i in order.into_iter().chain(6..later.len()) {
            if let Some(&(ticket, code)) = later.get(i) {
                prop_assert!(c.m.resolve(ticket, code));
                got.extend(c.replies());
            }
        }
        prop_assert_eq!(c.m.replies_awaited(), 0);
        prop_assert_eq!(got, expected);
    }

    /// However the stream is split into reads, and whether payloads are
    /// lent buffers or borrowed, the replies and the folder are the same.
    #[test]
    fn any_split_of_the_input_gives_the_same_replies(cuts in proptest::collection::vec(1usize..700, 1..40), lend: bool) {
        let bytes = script();
        let mut whole = conn();
        let expected = whole.send(&bytes);
        let mut c = conn();
        c.host.lend = lend;
        let mut got = Vec::new();
        let mut rest = &bytes[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at((*cut).min(rest.len()));
            got.extend(c.send(piece));
            rest = tail;
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(&c.host.files, &whole.host.files);
        prop_assert!(c.m.is_between_messages());
    }
}
