//! Uploads through the [`Mux`] against [`Receiver`]s over a corrupting
//! in-memory link, with real frames on the wire.
//!
//! The link keeps the byte stream in order (it stands for TCP) but, with
//! seeded random choices, flips bits in chunk payloads, replaces chunks with
//! ones that announce an invalid size (0, or above the receiver's maximum),
//! delivers bytes in arbitrary pieces, and slips keep-alives between the
//! replies. The client also aborts uploads, sees files shrink under it, and
//! reads different bytes when it re-reads a range it already sent. Whatever
//! happens, each file either arrives byte-identical or both sides agree it
//! did not: never a partial or wrong commit, never a half-open transfer.

use std::collections::HashMap;

use std::time::{Duration, Instant};

use dropsync_core::liveness::{Silence, Timers};
use dropsync_core::mux::{Mux, MuxReply, SingleKind, Step as MuxStep};
use dropsync_core::open_transfers::Limits;
use dropsync_core::receiving::{Assembled, Config, Ended, Host, Payload, Receiving, Reply, Step};
use dropsync_core::sender::{Outcome, Recorded};
use dropsync_proto::{encode_chunk_header, md5, parse, Digest, Frame, StatusCode, ZERO_DIGEST};
use proptest::prelude::*;

/// SplitMix64: a tiny seeded generator, so a failing case replays exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// How hostile one run is, in percent per opportunity.
#[derive(Debug, Clone, Copy)]
struct Faults {
    flip: u64,
    lie: u64,
    abort: u64,
    shrink: u64,
    volatile: bool,
}

impl Faults {
    fn none(&self) -> bool {
        self.flip == 0 && self.lie == 0 && self.abort == 0 && self.shrink == 0 && !self.volatile
    }
}

/// How the server side saw a transfer end.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerEnd {
    Committed {
        content: Vec<u8>,
        size: u64,
        digest: Digest,
    },
    Aborted,
    Refused(StatusCode),
}

/// The receiving end: core's connection machine ([`Receiving`]), the
/// server's own, with a host that keeps each file in memory and records how
/// its transfer ended.
struct Server {
    conn: Receiving<Vec<u8>>,
    host: Ends,
    out: Vec<u8>,
}

/// What the receiving host saw.
#[derive(Default)]
struct Ends {
    ended: HashMap<String, ServerEnd>,
    requests: usize,
}

impl Host for Ends {
    type Transfer = Vec<u8>;
    fn open(&mut self, name: &str, _first_len: u32) -> Result<Vec<u8>, StatusCode> {
        assert!(!self.ended.contains_key(name), "a message for {name} after both sides ended its transfer");
        Ok(Vec::new())
    }
    fn append(&mut self, _name: &str, data: &mut Vec<u8>, payload: Payload<'_>) -> Result<(), StatusCode> {
        data.extend_from_slice(payload.as_slice());
        Ok(())
    }
    fn commit(&mut self, name: &str, content: Vec<u8>, file: Assembled) -> Reply {
        self.ended.insert(name.to_owned(), ServerEnd::Committed { content, size: file.size, digest: file.md5 });
        StatusCode::OK.into()
    }
    fn discard(&mut self, name: &str, _data: Vec<u8>, why: Ended) {
        let end = match why {
            Ended::PeerAbort => ServerEnd::Aborted,
            Ended::Verdict(reply) => ServerEnd::Refused(reply),
            other => panic!("{name} ended by {other:?}"),
        };
        self.ended.insert(name.to_owned(), end);
    }
    fn delete(&mut self, name: &str) -> Reply {
        panic!("the client never deletes here ({name})")
    }
    /// Nothing is stored on this server: "REQUEST for an unknown file" is
    /// 0x0020.
    fn request(&mut self, _name: &str) -> StatusCode {
        self.requests += 1;
        StatusCode::NO_FILE
    }
}

impl Server {
    fn new(max_chunk: u32) -> Self {
        let config = Config {
            max_chunk,
            max_name_len: 4096,
            metadata_name: false,
            limits: Limits { max_open: 1024, idle: Duration::from_secs(60), remember_expired: 8 },
            timers: Timers::default(),
            silence: Silence::Ends,
        };
        // Time does not pass in this test: any instant will do.
        Server { conn: Receiving::new(config, epoch()), host: Ends::default(), out: Vec::new() }
    }

    /// Feeds bytes in; replies go to `out`, with keep-alives slipped
    /// between them now and then.
    fn receive(&mut self, bytes: &[u8], rng: &mut Rng) {
        self.conn.handle_input(epoch(), bytes);
        let step = self.conn.process(epoch(), &mut self.host).expect("the sender emitted a bad frame");
        assert_eq!(step, Step::NeedInput);
        if rng.chance(10) {
            Frame::Status(StatusCode::KEEP_ALIVE).encode(&mut self.out);
        }
        self.conn.poll_transmit(epoch(), &mut self.out);
    }
}

fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(dropsync_io::clock::now)
}

struct Upload {
    name: String,
    source: Vec<u8>,
    /// Highest offset read so far: a re-read below it sees changed bytes
    /// when the file is volatile.
    read_to: u64,
}

struct Client {
    mux: Mux,
    chunk_size: u32,
    uploads: HashMap<dropsync_core::mux::OpId, Upload>,
    outcomes: HashMap<String, Outcome>,
    out: Vec<u8>,
    inbuf: Vec<u8>,
}

impl Client {
    fn finish(&mut self, op: dropsync_core::mux::OpId, outcome: Outcome) {
        let name = match self.uploads.get(&op) {
            Some(up) => up.name.clone(),
            None => "missing/request".to_owned(),
        };
        assert!(
            self.outcomes.insert(name, outcome).is_none(),
            "an operation ended twice"
        );
    }

    /// Sends everything the mux will send now, through the faulty link.
    fn send_all(&mut self, faults: &Faults, max_chunk: u32, rng: &mut Rng) {
        while let Some((op, step)) = self.mux.poll_send() {
            let name = self.mux.name(op).expect("live op has a name").to_owned();
            match step {
                MuxStep::Chunk { offset, len } => {
                    let up = self.uploads.get_mut(&op).expect("chunks are uploads");
                    let start = offset as usize;
                    let mut bytes = up.source[start..start + len as usize].to_vec();
                    if faults.volatile && offset < up.read_to {
                        bytes[0] ^= 0x01; // the file changed under us
                    }
                    up.read_to = up.read_to.max(offset + u64::from(len));
                    if rng.chance(faults.shrink) {
                        bytes.pop(); // the file shrank: a short read
                    }
                    let digest = match self.mux.record_chunk(op, &bytes) {
                        Recorded::Send { digest } => digest,
                        Recorded::WrongLength { .. } => {
                            if let Some(outcome) = self.mux.abort(op) {
                                self.finish(op, outcome);
                            }
                            continue;
                        }
                        Recorded::NotExpected => panic!("announced chunk not expected"),
                    };
                    assert_eq!(digest, md5(&bytes));
                    if rng.chance(faults.lie) {
                        // A chunk that lies about its size: 0, or over the maximum.
                        let junk = if rng.chance(50) {
                            Vec::new()
                        } else {
                            vec![0xa5; max_chunk as usize + 1 + rng.below(4) as usize]
                        };
                        Frame::Chunk {
                            digest,
                            name: &name,
                            payload: &junk,
                        }
                        .encode(&mut self.out);
                    } else if rng.chance(faults.flip) {
                        let bit = rng.below(bytes.len() as u64 * 8);
                        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                        Frame::Chunk {
                            digest,
                            name: &name,
                            payload: &bytes,
                        }
                        .encode(&mut self.out);
                    } else if rng.chance(50) {
                        Frame::Chunk {
                            digest,
                            name: &name,
                            payload: &bytes,
                        }
                        .encode(&mut self.out);
                    } else {
                        // Header and payload written separately, as a driver
                        // streaming from the file would.
                        encode_chunk_header(&digest, &name, len, &mut self.out);
                        self.out.extend_from_slice(&bytes);
                    }
                }
                MuxStep::Finished { digest } => {
                    Frame::Finished {
                        digest,
                        name: &name,
                    }
                    .encode(&mut self.out);
                }
                MuxStep::Abort => Frame::abort(&name).encode(&mut self.out),
                MuxStep::Request { digest } => {
                    Frame::Request {
                        digest,
                        name: &name,
                    }
                    .encode(&mut self.out);
                }
                MuxStep::Delete { .. } | MuxStep::Copy { .. } => panic!("no DELETE or COPY was queued"),
            }
            if rng.chance(faults.abort) {
                let live: Vec<_> = self
                    .uploads
                    .keys()
                    .copied()
                    .filter(|id| self.mux.name(*id).is_some())
                    .collect();
                if !live.is_empty() {
                    let victim = live[rng.below(live.len() as u64) as usize];
                    if let Some(outcome) = self.mux.abort(victim) {
                        self.finish(victim, outcome);
                    }
                }
            }
        }
    }

    fn receive(&mut self, bytes: &[u8]) {
        self.inbuf.extend_from_slice(bytes);
        loop {
            let (code, used) = match parse(&self.inbuf) {
                Ok(Some((Frame::Status(code), used))) => (code, used),
                Ok(Some((other, _))) => panic!("the server only sends STATUS here, got {other:?}"),
                Ok(None) => return,
                Err(e) => panic!("bad reply stream: {e}"),
            };
            self.inbuf.drain(..used);
            match self.mux.handle_reply(code) {
                Ok(MuxReply::Routed {
                    op,
                    outcome: Some(outcome),
                }) => self.finish(op, outcome),
                Ok(MuxReply::Routed { outcome: None, .. } | MuxReply::KeepAlive) => {}
                Err(e) => panic!("reply with nothing outstanding: {e}"),
            }
        }
    }
}

/// Moves a random-length prefix of `from` out.
fn take_some(from: &mut Vec<u8>, rng: &mut Rng) -> Vec<u8> {
    let n = rng.below(from.len() as u64 + 1) as usize;
    from.drain(..n).collect()
}

fn run(
    files: &[Vec<u8>],
    max_in_flight: usize,
    max_chunk: u32,
    chunk_size: u32,
    faults: Faults,
    seed: u64,
) -> Result<HashMap<String, Outcome>, TestCaseError> {
    let mut rng = Rng(seed);
    let mut client = Client {
        mux: Mux::new(max_in_flight),
        chunk_size,
        uploads: HashMap::new(),
        outcomes: HashMap::new(),
        out: Vec::new(),
        inbuf: Vec::new(),
    };
    let mut server = Server::new(max_chunk);
    for (i, source) in files.iter().enumerate() {
        let name = format!("dir/file{i}.bin");
        let id = client
            .mux
            .add_upload(name.clone(), source.len() as u64, client.chunk_size);
        client.uploads.insert(
            id,
            Upload {
                name,
                source: source.clone(),
                read_to: 0,
            },
        );
    }
    client.mux.add_single(
        "missing/request".to_owned(),
        SingleKind::Request,
        ZERO_DIGEST,
    );

    let mut rounds = 0u32;
    while !(client.mux.is_empty() && client.out.is_empty() && server.out.is_empty()) {
        rounds += 1;
        prop_assert!(rounds < 200_000, "the link does not drain");
        match rng.below(3) {
            0 => client.send_all(&faults, max_chunk, &mut rng),
            1 => {
                let bytes = take_some(&mut client.out, &mut rng);
                server.receive(&bytes, &mut rng);
            }
            _ => {
                let bytes = take_some(&mut server.out, &mut rng);
                client.receive(&bytes);
            }
        }
    }

    prop_assert!(
        server.conn.open_transfers() == 0,
        "{} half-open transfers left",
        server.conn.open_transfers()
    );
    prop_assert_eq!(server.host.requests, 1);
    prop_assert_eq!(
        client.outcomes.get("missing/request"),
        Some(&Outcome::Refused(StatusCode::NO_FILE))
    );
    for up in client.uploads.values() {
        let outcome = client.outcomes.get(&up.name);
        let end = server.host.ended.get(&up.name);
        match outcome {
            Some(Outcome::Committed) => {
                let Some(ServerEnd::Committed {
                    content,
                    size,
                    digest,
                }) = end
                else {
                    return Err(TestCaseError::fail(format!(
                        "{}: sender committed, server {end:?}",
                        up.name
                    )));
                };
                prop_assert!(
                    content == &up.source,
                    "{}: committed content differs",
                    up.name
                );
                prop_assert_eq!(*size, up.source.len() as u64);
                prop_assert_eq!(*digest, md5(&up.source));
            }
            Some(Outcome::Refused(code)) => {
                prop_assert!(
                    [StatusCode::ABORT_CHECKSUM, StatusCode::ABORT_SIZE].contains(code),
                    "{}: unexpected refusal {:?}",
                    up.name,
                    code
                );
                prop_assert_eq!(end, Some(&ServerEnd::Refused(*code)), "{}", up.name);
            }
            Some(Outcome::Aborted) => {
                prop_assert!(
                    matches!(end, None | Some(ServerEnd::Aborted)),
                    "{}: sender aborted, server {:?}",
                    up.name,
                    end
                );
            }
            None => return Err(TestCaseError::fail(format!("{} never ended", up.name))),
        }
    }
    // A clean link with a chunk size the halving can bring under the
    // receiver's maximum in two steps delivers everything.
    if faults.none() && chunk_size <= 4 * max_chunk {
        for up in client.uploads.values() {
            prop_assert_eq!(
                client.outcomes.get(&up.name),
                Some(&Outcome::Committed),
                "{}",
                up.name
            );
        }
    }
    Ok(client.outcomes)
}

fn faults() -> impl Strategy<Value = Faults> {
    prop_oneof![
        1 => Just(Faults { flip: 0, lie: 0, abort: 0, shrink: 0, volatile: false }),
        3 => (0u64..25, 0u64..20, 0u64..4, 0u64..4, prop::bool::weighted(0.2))
            .prop_map(|(flip, lie, abort, shrink, volatile)| Faults { flip, lie, abort, shrink, volatile }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn files_arrive_intact_or_both_sides_agree_they_did_not(
        files in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..160), 1..6),
        max_in_flight in 1usize..4,
        max_chunk in 1u32..40,
        chunk_factor in 1u32..100,
        faults in faults(),
        seed in any::<u64>(),
    ) {
        // Chunk sizes from a quarter of the maximum to five times it: most
        // fit, some need halving, a few cannot be halved in time (0x0010).
        let chunk_size = (max_chunk * chunk_factor / 20).max(1);
        let _ = run(&files, max_in_flight, max_chunk, chunk_size, faults, seed)?;
    }
}

/// With no faults at all, several files of awkward sizes arrive intact.
#[test]
fn clean_link_delivers_everything() {
    let files: Vec<Vec<u8>> = vec![Vec::new(), b"x".to_vec(), (0..=255).collect(), vec![7; 100]];
    let clean = Faults {
        flip: 0,
        lie: 0,
        abort: 0,
        shrink: 0,
        volatile: false,
    };
    for (max_in_flight, max_chunk, chunk_size) in [(1, 16, 16), (3, 16, 7), (2, 10, 40)] {
        let outcomes =
            run(&files, max_in_flight, max_chunk, chunk_size, clean, 1).expect("clean run");
        assert_eq!(outcomes.len(), files.len() + 1);
        for i in 0..files.len() {
            assert_eq!(outcomes[&format!("dir/file{i}.bin")], Outcome::Committed);
        }
    }
}

/// Every chunk corrupted: each non-empty file is refused with 0x0008 after
/// three tries, the empty one still commits.
#[test]
fn always_corrupting_link_refuses_every_nonempty_file() {
    let files: Vec<Vec<u8>> = vec![Vec::new(), b"abc".to_vec(), vec![1; 50]];
    let hostile = Faults {
        flip: 100,
        lie: 0,
        abort: 0,
        shrink: 0,
        volatile: false,
    };
    let outcomes = run(&files, 2, 16, 8, hostile, 7).expect("hostile run");
    assert_eq!(outcomes["dir/file0.bin"], Outcome::Committed);
    assert_eq!(
        outcomes["dir/file1.bin"],
        Outcome::Refused(StatusCode::ABORT_CHECKSUM)
    );
    assert_eq!(
        outcomes["dir/file2.bin"],
        Outcome::Refused(StatusCode::ABORT_CHECKSUM)
    );
}

/// Every chunk lies about its size: each non-empty file is refused with
/// 0x0010 after three tries.
#[test]
fn always_lying_link_refuses_every_nonempty_file() {
    let files: Vec<Vec<u8>> = vec![Vec::new(), b"abc".to_vec(), vec![1; 50]];
    let hostile = Faults {
        flip: 0,
        lie: 100,
        abort: 0,
        shrink: 0,
        volatile: false,
    };
    let outcomes = run(&files, 3, 16, 8, hostile, 11).expect("hostile run");
    assert_eq!(outcomes["dir/file0.bin"], Outcome::Committed);
    assert_eq!(
        outcomes["dir/file1.bin"],
        Outcome::Refused(StatusCode::ABORT_SIZE)
    );
    assert_eq!(
        outcomes["dir/file2.bin"],
        Outcome::Refused(StatusCode::ABORT_SIZE)
    );
}

/// A file that changes whenever a range is read again: a resent chunk
/// carries new bytes, which the whole-file MD5 at FINISHED catches (0x0008)
/// instead of committing a mix of two versions.
#[test]
fn file_changing_between_resends_is_refused_at_finished() {
    let files: Vec<Vec<u8>> = vec![vec![3; 30]];
    // Every chunk is resent once at most (flip 50%); volatile re-reads differ.
    let faults = Faults {
        flip: 50,
        lie: 0,
        abort: 0,
        shrink: 0,
        volatile: true,
    };
    let mut saw_mismatch_at_finished = false;
    for seed in 0..64 {
        let outcomes = run(&files, 1, 8, 8, faults, seed).expect("volatile run");
        if outcomes["dir/file0.bin"] == Outcome::Refused(StatusCode::ABORT_CHECKSUM) {
            saw_mismatch_at_finished = true;
        }
    }
    assert!(saw_mismatch_at_finished);
}
