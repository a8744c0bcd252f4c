//! The sending side against core's receiving side, in memory (quinn's
//! `Pair`), and the sender's rules of PROTOCOL.md section 4 one by one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dropsync_proto::{md5, parse_head, Frame, Head, StatusCode, ZERO_DIGEST};
use proptest::prelude::*;

use super::*;
use crate::liveness::{Silence, Timers};
use crate::open_transfers::Limits;
use crate::receiving::{self, Assembled, Ended as RxEnded, Host, Payload, Receiving, Reply};

/// A file to send, as the test's driver keeps it.
#[derive(Debug, Clone, Default)]
struct File {
    bytes: Vec<u8>,
    /// The file shrinks to this many bytes before its chunk at this offset
    /// is read.
    shrink_at: Option<(u64, usize)>,
}

/// Reads chunks out of the files.
#[derive(Default)]
struct Files {
    buf: Vec<u8>,
    /// Hand the bytes over (else stream them, with a known digest).
    with_bytes: bool,
    /// A whole-file digest to give with the last chunk (FromSource).
    give_file_digest: bool,
}

impl Source<File> for Files {
    fn prepare(&mut self, _id: OpId, _name: &str, f: &mut File, offset: u64, len: u32) -> io::Result<Prepared<'_>> {
        if let Some((at, to)) = f.shrink_at {
            if at == offset {
                f.bytes.truncate(to);
            }
        }
        let start = (offset as usize).min(f.bytes.len());
        let end = (start + len as usize).min(f.bytes.len());
        self.buf.clear();
        self.buf.extend_from_slice(&f.bytes[start..end]);
        let file_digest = (self.give_file_digest && end == f.bytes.len()).then(|| md5(&f.bytes));
        Ok(Prepared {
            payload: self.with_bytes.then_some(&self.buf[..]),
            len: self.buf.len() as u32,
            digest: md5(&self.buf),
            file_digest,
        })
    }
}

/// The receiving peer's host: the folder in a map.
#[derive(Default)]
struct Folder {
    files: HashMap<String, Vec<u8>>,
    locked: Vec<String>,
}

impl Host for Folder {
    type Transfer = Vec<u8>;
    fn open(&mut self, name: &str, _: u32) -> Result<Vec<u8>, StatusCode> {
        if self.locked.iter().any(|l| l == name) {
            return Err(StatusCode::LOCKED);
        }
        Ok(Vec::new())
    }
    fn append(&mut self, _: &str, t: &mut Vec<u8>, p: Payload<'_>) -> Result<(), StatusCode> {
        t.extend_from_slice(p.as_slice());
        Ok(())
    }
    fn commit(&mut self, name: &str, t: Vec<u8>, _: Assembled) -> Reply {
        self.files.insert(name.to_owned(), t);
        StatusCode::OK.into()
    }
    fn discard(&mut self, _: &str, _: Vec<u8>, _: RxEnded) {}
    fn delete(&mut self, name: &str) -> Reply {
        match self.files.remove(name) {
            Some(_) => StatusCode::OK.into(),
            None => StatusCode::NO_FILE.into(),
        }
    }
    fn request(&mut self, name: &str) -> StatusCode {
        if self.files.contains_key(name) {
            StatusCode::OK
        } else {
            StatusCode::NO_FILE
        }
    }
}

/// Both ends of one connection in memory.
struct Pair {
    tx: Sending<File>,
    files: Files,
    rx: Receiving<Vec<u8>>,
    folder: Folder,
    now: Instant,
    ended: Vec<Ended<File>>,
}

fn pair(max_in_flight: usize, max_chunk: u32) -> Pair {
    // Any instant will do as the start of virtual time.
    let now = dropsync_io::clock::now();
    let config = receiving::Config {
        max_chunk,
        max_name_len: 4096,
        metadata_name: false,
        limits: Limits { max_open: 256, idle: Duration::from_secs(60), remember_expired: 8 },
        timers: Timers::default(),
        silence: Silence::Ends,
    };
    Pair {
        tx: Sending::new(max_in_flight),
        files: Files { with_bytes: true, ..Files::default() },
        rx: Receiving::new(config, now),
        folder: Folder::default(),
        now,
        ended: Vec::new(),
    }
}

impl Pair {
    /// What the sender writes now: the messages, payloads included.
    fn transmit(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while let Some(Transmit::Chunk { len, .. }) = self.tx.poll_transmit(&mut self.files) {
            self.tx.take_frames(&mut wire);
            wire.extend_from_slice(&self.files.buf[..len as usize]);
        }
        self.tx.take_frames(&mut wire);
        while let Some(e) = self.tx.poll_ended() {
            self.ended.push(e);
        }
        wire
    }

    /// The peer handles `wire` and answers; the answers go back in.
    fn deliver(&mut self, wire: &[u8]) {
        self.rx.handle_input(self.now, wire);
        self.rx.process(self.now, &mut self.folder).unwrap();
        let mut back = Vec::new();
        self.rx.poll_transmit(self.now, &mut back);
        for code in statuses(&back) {
            if let Replied::Ended(e) = self.tx.handle_reply(code).unwrap() {
                self.ended.push(e);
            }
        }
    }

    /// Runs until nothing is left to send or answer.
    fn run(&mut self) {
        for _ in 0..10_000 {
            let wire = self.transmit();
            if wire.is_empty() && self.tx.is_idle() {
                return;
            }
            self.deliver(&wire);
        }
        panic!("no quiescence");
    }

    fn outcome(&self, name: &str) -> Outcome {
        self.ended.iter().find(|e| e.name == name).map(|e| e.outcome).expect("ended")
    }
}

fn statuses(mut bytes: &[u8]) -> Vec<StatusCode> {
    let mut v = Vec::new();
    while let Ok(Some((Head::Frame(Frame::Status(code)), used))) = parse_head(bytes) {
        v.push(code);
        bytes = &bytes[used..];
    }
    v
}

fn file(bytes: &[u8]) -> File {
    File { bytes: bytes.to_vec(), shrink_at: None }
}

fn upload(p: &mut Pair, name: &str, bytes: &[u8], chunk: u32) -> OpId {
    p.tx.add_upload(name.into(), bytes.len() as u64, chunk, FileDigest::FromChunks, file(bytes))
}

/// The messages in `wire`, as (type, name) pairs.
fn messages(wire: &[u8]) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    let mut rest = wire;
    while let Ok(Some((head, used))) = parse_head(rest) {
        let (kind, name, skip) = match head {
            Head::Chunk { name, payload_len, .. } => ("chunk", name.to_owned(), payload_len as usize),
            Head::Frame(Frame::Finished { name, .. }) => ("finished", name.to_owned(), 0),
            Head::Frame(Frame::Abort { name, .. }) => ("abort", name.to_owned(), 0),
            Head::Frame(Frame::Delete { name, .. }) => ("delete", name.to_owned(), 0),
            Head::Frame(Frame::Request { name, .. }) => ("request", name.to_owned(), 0),
            Head::Frame(other) => panic!("{other:?}"),
        };
        v.push((kind, name));
        rest = &rest[used + skip..];
    }
    v
}

#[test]
fn files_arrive_byte_identical() {
    let mut p = pair(4, 16);
    upload(&mut p, "a", b"hello world, in chunks of eight", 8);
    upload(&mut p, "empty", b"", 8);
    p.run();
    assert_eq!(p.folder.files["a"], b"hello world, in chunks of eight");
    assert_eq!(p.folder.files["empty"], b"");
    assert_eq!(p.outcome("a"), Outcome::Committed);
    assert!(p.tx.is_empty());
}

#[test]
fn within_one_transfer_the_sender_waits_for_the_reply_to_each_message() {
    let mut p = pair(4, 16);
    upload(&mut p, "a", b"0123456789", 4);
    assert_eq!(messages(&p.transmit()), vec![("chunk", "a".into())]);
    assert!(p.transmit().is_empty(), "nothing more before the reply");
    assert_eq!(p.tx.in_flight(), 1);
}

#[test]
fn messages_of_different_transfers_interleave_and_replies_match_in_order() {
    let mut p = pair(4, 16);
    upload(&mut p, "a", b"0123456789", 4);
    upload(&mut p, "b", b"abcdefgh", 4);
    p.tx.add_delete("gone".into(), ZERO_DIGEST, File::default());
    let wire = p.transmit();
    assert_eq!(messages(&wire), vec![("chunk", "a".into()), ("chunk", "b".into()), ("delete", "gone".into())]);
    p.deliver(&wire);
    assert_eq!(p.outcome("gone"), Outcome::Refused(StatusCode::NO_FILE));
    p.run();
    assert_eq!(p.folder.files["a"], b"0123456789");
    assert_eq!(p.folder.files["b"], b"abcdefgh");
}

#[test]
fn a_chunk_answered_0x0002_is_sent_again() {
    let mut p = pair(1, 16);
    upload(&mut p, "a", b"data", 16);
    let first = p.transmit();
    assert!(matches!(p.tx.handle_reply(StatusCode::RESEND_CHECKSUM).unwrap(), Replied::Progress { .. }));
    assert_eq!(p.transmit(), first, "the same chunk, the same bytes");
}

#[test]
fn a_transfer_refused_by_a_reply_is_over_and_no_abort_follows() {
    let mut p = pair(1, 16);
    p.folder.locked.push("a".into());
    upload(&mut p, "a", b"data", 16);
    p.run();
    assert_eq!(p.outcome("a"), Outcome::Refused(StatusCode::LOCKED));
    assert!(p.transmit().is_empty());
}

#[test]
fn a_keep_alive_is_not_a_reply() {
    let mut p = pair(1, 16);
    upload(&mut p, "a", b"data", 16);
    p.transmit();
    assert!(matches!(p.tx.handle_reply(StatusCode::KEEP_ALIVE).unwrap(), Replied::KeepAlive));
    assert_eq!(p.tx.in_flight(), 1);
}

#[test]
fn a_status_with_no_message_waiting_is_an_error() {
    let mut p = pair(1, 16);
    assert!(p.tx.handle_reply(StatusCode::OK).is_err());
}

#[test]
fn a_file_that_changes_before_its_first_chunk_ends_at_once() {
    let mut p = pair(1, 16);
    p.tx.add_upload("a".into(), 8, 4, FileDigest::FromChunks, File { bytes: b"12345678".to_vec(), shrink_at: Some((0, 2)) });
    assert!(p.transmit().is_empty());
    assert_eq!(p.ended.len(), 1);
    assert_eq!((p.ended[0].outcome, &p.ended[0].cause), (Outcome::Aborted, &Cause::Changed));
}

#[test]
fn a_file_that_changes_during_its_upload_is_aborted_on_the_wire() {
    let mut p = pair(1, 16);
    p.tx.add_upload("a".into(), 8, 4, FileDigest::FromChunks, File { bytes: b"12345678".to_vec(), shrink_at: Some((4, 6)) });
    p.run();
    let e = &p.ended[0];
    assert_eq!((e.outcome, &e.cause), (Outcome::Aborted, &Cause::Changed));
    assert!(!p.folder.files.contains_key("a"), "a half-received file never replaces the old one");
    assert_eq!(p.rx.open_transfers(), 0);
}

#[test]
fn on_shutdown_every_transfer_in_progress_is_aborted() {
    let mut p = pair(4, 16);
    upload(&mut p, "a", b"0123456789", 4);
    upload(&mut p, "b", b"0123456789", 4);
    let wire = p.transmit();
    p.deliver(&wire);
    upload(&mut p, "c", b"never sent", 4);
    p.tx.abort_all();
    let wire = p.transmit();
    assert_eq!(messages(&wire), vec![("abort", "a".into()), ("abort", "b".into())]);
    assert_eq!(p.ended.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), vec!["c"], "c ends at once");
    p.deliver(&wire);
    assert!(p.tx.is_empty() && p.folder.files.is_empty());
}

#[test]
fn a_known_digest_lets_chunks_stream_without_their_bytes() {
    let mut p = pair(2, 16);
    p.files.with_bytes = false;
    let bytes = b"streamed from a blob".to_vec();
    p.tx.add_upload("a".into(), bytes.len() as u64, 6, FileDigest::Known(md5(&bytes)), file(&bytes));
    p.run();
    assert_eq!(p.folder.files["a"], bytes);
}

#[test]
fn a_digest_from_the_source_comes_with_the_last_chunk() {
    let mut p = pair(2, 16);
    p.files.give_file_digest = true;
    let bytes = b"hashed as it is read".to_vec();
    p.tx.add_upload("a".into(), bytes.len() as u64, 6, FileDigest::FromSource, file(&bytes));
    p.run();
    assert_eq!(p.folder.files["a"], bytes);
    assert_eq!(p.ended[0].sent_digest, Some(md5(&bytes)));
}

#[test]
fn two_operations_on_one_path_never_interleave() {
    let mut p = pair(4, 16);
    upload(&mut p, "a", b"first version", 4);
    upload(&mut p, "a", b"second", 4);
    assert!(p.tx.has("a"));
    let wire = p.transmit();
    assert_eq!(messages(&wire).len(), 1, "the second waits for the first");
    p.deliver(&wire);
    p.run();
    assert_eq!(p.folder.files["a"], b"second");
    assert!(!p.tx.has("a"));
}

#[test]
fn request_and_delete_end_with_their_reply() {
    let mut p = pair(4, 16);
    p.folder.files.insert("x".into(), b"1".to_vec());
    p.tx.add_request("x".into(), ZERO_DIGEST, File::default());
    p.tx.add_delete("x".into(), ZERO_DIGEST, File::default());
    p.run();
    assert_eq!(p.ended.iter().map(|e| e.outcome).collect::<Vec<_>>(), vec![Outcome::Committed, Outcome::Committed]);
    assert!(p.folder.files.is_empty());
}

#[test]
fn next_range_is_the_chunk_after_one_sent() {
    let mut p = pair(1, 16);
    let id = upload(&mut p, "a", b"0123456789", 4);
    assert_eq!(p.tx.next_range(id, 4, 4), Some((4, 4)));
    assert_eq!(p.tx.next_range(id, 8, 4), Some((8, 2)));
    assert_eq!(p.tx.next_range(id, 10, 4), None);
}

proptest! {
    /// Any files, chunk sizes and parallelism: every file arrives whole,
    /// whether chunks pass their bytes or stream with a known digest.
    #[test]
    fn any_files_arrive_whole(
        files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8),
        chunk in 1u32..64,
        parallel in 1usize..5,
        stream: bool,
    ) {
        let mut p = pair(parallel, 64);
        p.files.with_bytes = !stream;
        for (i, bytes) in files.iter().enumerate() {
            let digest = if stream { FileDigest::Known(md5(bytes)) } else { FileDigest::FromChunks };
            p.tx.add_upload(format!("f{i}"), bytes.len() as u64, chunk, digest, file(bytes));
        }
        p.run();
        for (i, bytes) in files.iter().enumerate() {
            prop_assert_eq!(&p.folder.files[&format!("f{i}")], bytes);
        }
        prop_assert!(p.tx.is_empty());
    }
}
