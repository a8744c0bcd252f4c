//! Property tests of the codec: round trips for every frame type, prefixes,
//! arbitrary splits of a stream, and arbitrary bytes.

use dropsync_proto::{parse, parse_head, Frame, Head, StatusCode};
use proptest::prelude::*;

/// Owned frame data, so strategies can produce it and tests can borrow it.
#[derive(Clone, Debug)]
enum Owned {
    Chunk([u8; 16], String, Vec<u8>),
    Status(u16),
    Finished([u8; 16], String),
    Abort([u8; 16], String),
    Delete([u8; 16], String),
    Request([u8; 16], String),
    Hello([u8; 16], String),
    Copy([u8; 16], String, String),
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Chunk(d, n, p) => Frame::Chunk { digest: *d, name: n, payload: p },
            Owned::Status(c) => Frame::Status(StatusCode(*c)),
            Owned::Finished(d, n) => Frame::Finished { digest: *d, name: n },
            Owned::Abort(d, n) => Frame::Abort { digest: *d, name: n },
            Owned::Delete(d, n) => Frame::Delete { digest: *d, name: n },
            Owned::Request(d, n) => Frame::Request { digest: *d, name: n },
            Owned::Hello(d, n) => Frame::Hello { client_id: *d, label: n },
            Owned::Copy(d, f, n) => Frame::Copy { digest: *d, from: f, name: n },
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ./_é名-]{0,60}"
}

fn chunk() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), name(), proptest::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(d, n, p)| Owned::Chunk(d, n, p))
}
fn status() -> impl Strategy<Value = Owned> {
    any::<u16>().prop_map(Owned::Status)
}
fn finished() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), name()).prop_map(|(d, n)| Owned::Finished(d, n))
}
fn abort() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), name()).prop_map(|(d, n)| Owned::Abort(d, n))
}
fn delete() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), name()).prop_map(|(d, n)| Owned::Delete(d, n))
}
fn request() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), name()).prop_map(|(d, n)| Owned::Request(d, n))
}
fn hello() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), "\\PC{0,40}").prop_map(|(d, n)| Owned::Hello(d, n))
}
fn copy() -> impl Strategy<Value = Owned> {
    (any::<[u8; 16]>(), name(), name()).prop_map(|(d, f, n)| Owned::Copy(d, f, n))
}
fn any_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![chunk(), status(), finished(), abort(), delete(), request(), hello(), copy()]
}

/// Encode, parse back, compare, and check that every strict prefix is "need more".
fn round_trip(owned: &Owned) -> Result<(), TestCaseError> {
    let frame = owned.frame();
    let bytes = frame.to_vec();
    let (parsed, used) = parse(&bytes).expect("valid").expect("complete");
    prop_assert_eq!(parsed, frame);
    prop_assert_eq!(used, bytes.len());
    for cut in 0..bytes.len() {
        prop_assert_eq!(parse(&bytes[..cut]), Ok(None), "prefix of {} bytes", cut);
    }
    Ok(())
}

proptest! {
    #[test] fn chunk_round_trip(f in chunk()) { round_trip(&f)?; }
    #[test] fn status_round_trip(f in status()) { round_trip(&f)?; }
    #[test] fn finished_round_trip(f in finished()) { round_trip(&f)?; }
    #[test] fn abort_round_trip(f in abort()) { round_trip(&f)?; }
    #[test] fn delete_round_trip(f in delete()) { round_trip(&f)?; }
    #[test] fn request_round_trip(f in request()) { round_trip(&f)?; }
    #[test] fn hello_round_trip(f in hello()) { round_trip(&f)?; }

    /// A stream of frames, delivered in arbitrary pieces to a reader that
    /// buffers and parses as bytes arrive, yields exactly the same frames.
    #[test]
    fn split_stream_decodes_to_same_frames(
        frames in proptest::collection::vec(any_frame(), 1..12),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..20),
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            f.frame().encode(&mut stream);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();

        let mut buf: Vec<u8> = Vec::new();
        let mut decoded: Vec<Vec<u8>> = Vec::new();
        let mut start = 0;
        for end in points {
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            while let Some((frame, used)) = parse(&buf).expect("valid stream") {
                decoded.push(frame.to_vec());
                buf.drain(..used);
            }
        }
        prop_assert!(buf.is_empty());
        let expected: Vec<Vec<u8>> = frames.iter().map(|f| f.frame().to_vec()).collect();
        prop_assert_eq!(decoded, expected);
    }

    /// Arbitrary bytes never panic, and a success never claims more bytes
    /// than it was given.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Some((frame, used))) = parse(&bytes) {
            prop_assert!(used <= bytes.len());
            prop_assert_eq!(frame.to_vec(), &bytes[..used]);
        }
        if let Ok(Some((head, used))) = parse_head(&bytes) {
            prop_assert!(used <= bytes.len());
            if let Head::Frame(frame) = head {
                prop_assert_eq!(frame.to_vec(), &bytes[..used]);
            }
        }
    }
}
