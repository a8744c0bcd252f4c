//! Messages out of a connection's bytes, with no I/O: the buffer a driver
//! reads its socket into, and the codec of `dropsync-proto` over it.
//!
//! The driver asks for room ([`Decoder::spare`]), reads into it and says how
//! much came ([`Decoder::filled`]), or hands bytes over
//! ([`Decoder::handle_input`]); then it polls messages
//! ([`Decoder::poll_msg`]: `Ok(None)` means "need more bytes"). A
//! FILE_CHUNK comes out as its header; its payload is then taken whole
//! ([`Decoder::payload`]), copied out ([`Decoder::take_into`]) or skipped
//! without ever being buffered ([`Decoder::skip`]), as section 4 asks of an
//! oversized chunk. Nothing is lost between calls, so a driver whose read
//! timed out just carries on.

use dropsync_proto::{parse_head, Digest, Frame, Head, MessageType, ParseError, StatusCode};

/// Initial buffer size: holds any non-chunk frame; grows to the largest
/// accepted chunk payload.
const INITIAL_BUFFER: usize = 64 * 1024;

/// One message, with names copied out of the buffer (names are short;
/// payloads stay in the buffer, see [`Decoder::payload`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// A FILE_CHUNK header. The caller must next take or skip `len` payload
    /// bytes before polling another message.
    Chunk {
        /// MD5 the payload should have.
        digest: Digest,
        /// The file.
        name: String,
        /// Declared payload length.
        len: u32,
    },
    /// STATUS (keep-alives included: the caller filters 0x8000).
    Status(StatusCode),
    /// FINISHED, ABORT, DELETE or REQUEST.
    Named {
        /// Which of the four.
        kind: MessageType,
        /// Its digest.
        digest: Digest,
        /// The file.
        name: String,
    },
    /// HELLO with the client id and label.
    Hello {
        /// The client's stable id.
        client_id: [u8; 16],
        /// Its label.
        label: String,
    },
    /// COPY [ext]: `name` gets the content `from` had, whose MD5 is `digest`.
    Copy {
        /// MD5 of the content.
        digest: Digest,
        /// Where the receiver has it.
        from: String,
        /// The file.
        name: String,
    },
    /// A frame whose name broke a codec rule (too long, not UTF-8). It has
    /// been skipped whole; the caller replies 0x0100 (section 3).
    Rejected(ParseError),
}

/// The receiving buffer of one connection.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes still to discard that have not arrived yet (a skipped payload).
    pending_skip: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// An empty buffer.
    pub fn new() -> Self {
        Decoder { buf: vec![0; INITIAL_BUFFER], start: 0, end: 0, pending_skip: 0 }
    }

    /// Bytes received and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Bytes of a skipped payload that have not arrived yet: a message can
    /// only come after them.
    pub fn skip_pending(&self) -> u64 {
        self.pending_skip
    }

    /// Room to read into, at least one byte, with space for `want` bytes
    /// from the first unconsumed one (the buffer moves and grows as
    /// needed). Call [`filled`](Self::filled) with what was read.
    pub fn spare(&mut self, want: usize) -> &mut [u8] {
        if self.start > 0 && (self.start == self.end || self.buf.len() - self.start < want) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        if self.end == self.buf.len() {
            let grow = self.buf.len().max(1);
            self.buf.resize(self.buf.len() + grow, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into the room [`spare`](Self::spare) gave.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
        self.apply_skip();
    }

    /// Bytes that arrived (a copy; a socket driver reads into
    /// [`spare`](Self::spare) instead).
    pub fn handle_input(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let want = self.buffered() + bytes.len();
            let room = self.spare(want);
            let n = room.len().min(bytes.len());
            room[..n].copy_from_slice(&bytes[..n]);
            self.filled(n);
            bytes = &bytes[n..];
        }
    }

    fn apply_skip(&mut self) {
        let take = (self.buffered() as u64).min(self.pending_skip);
        self.start += take as usize;
        self.pending_skip -= take;
    }

    /// The next message, `Ok(None)` when more bytes are needed. An unknown
    /// type cannot be skipped (its length is unknown): `Err`, and the
    /// connection cannot be resynchronised (section 2).
    pub fn poll_msg(&mut self) -> Result<Option<Msg>, ParseError> {
        self.apply_skip();
        if self.pending_skip > 0 {
            return Ok(None);
        }
        let (msg, used) = match parse_head(&self.buf[self.start..self.end]) {
            Ok(Some((head, used))) => (to_msg(head), used),
            Ok(None) => return Ok(None),
            Err(e) => match e.skippable_len() {
                Some(len) => {
                    self.skip(len);
                    return Ok(Some(Msg::Rejected(e)));
                }
                None => return Err(e),
            },
        };
        self.start += used;
        Ok(Some(msg))
    }

    /// True when the next [`poll_msg`](Self::poll_msg) needs bytes not
    /// received yet. A peer that holds replies back to send several in one
    /// write must send them before it waits for input: the other side may
    /// be waiting for them before it sends more.
    pub fn needs_input(&self) -> bool {
        let avail = &self.buf[self.start..self.end];
        match usize::try_from(self.pending_skip) {
            Ok(skip) if skip <= avail.len() => matches!(parse_head(&avail[skip..]), Ok(None)),
            _ => true,
        }
    }

    /// The `len` payload bytes of the chunk just polled, once all have
    /// arrived (`None` until then); they are consumed.
    pub fn payload(&mut self, len: u32) -> Option<&[u8]> {
        let len = len as usize;
        if self.pending_skip > 0 || self.buffered() < len {
            return None;
        }
        let out = &self.buf[self.start..self.start + len];
        self.start += len;
        Some(out)
    }

    /// Copies buffered payload bytes into `out` (as many as fit and have
    /// arrived) and consumes them; returns how many. The rest of a large
    /// payload can then be read straight into `out`.
    pub fn take_into(&mut self, out: &mut [u8]) -> usize {
        if self.pending_skip > 0 {
            return 0;
        }
        let n = self.buffered().min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        n
    }

    /// Discards the next `len` bytes, those buffered now and those still to
    /// come, without ever holding more than the buffer.
    pub fn skip(&mut self, len: u64) {
        self.pending_skip = self.pending_skip.saturating_add(len);
        self.apply_skip();
    }
}

fn to_msg(head: Head<'_>) -> Msg {
    match head {
        Head::Chunk { digest, name, payload_len } => Msg::Chunk { digest, name: name.to_owned(), len: payload_len },
        Head::Frame(Frame::Status(code)) => Msg::Status(code),
        Head::Frame(Frame::Hello { client_id, label }) => Msg::Hello { client_id, label: label.to_owned() },
        Head::Frame(Frame::Copy { digest, from, name }) => {
            Msg::Copy { digest, from: from.to_owned(), name: name.to_owned() }
        }
        Head::Frame(f) => Msg::Named {
            kind: f.message_type(),
            digest: match f {
                Frame::Finished { digest, .. }
                | Frame::Abort { digest, .. }
                | Frame::Delete { digest, .. }
                | Frame::Request { digest, .. } => digest,
                _ => [0; 16],
            },
            name: f.name().unwrap_or_default().to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Frames and what a reader makes of them: messages, and for each chunk
    /// either its payload or nothing (skipped).
    fn stream() -> (Vec<u8>, Vec<String>) {
        let mut v = Vec::new();
        let big = vec![7u8; 70_000];
        Frame::Hello { client_id: [1; 16], label: "me" }.encode(&mut v);
        Frame::Chunk { digest: dropsync_proto::md5(&big), name: "big", payload: &big }.encode(&mut v);
        Frame::Chunk { digest: [0; 16], name: "skipped", payload: &big[..1000] }.encode(&mut v);
        // A name that is not UTF-8: skipped whole, reported.
        v.extend_from_slice(&[0x03, 0x00]);
        v.extend_from_slice(&[0; 16]);
        v.extend_from_slice(&[2, 0, 0xff, 0xfe]);
        Frame::Finished { digest: [2; 16], name: "big" }.encode(&mut v);
        Frame::Status(StatusCode::OK).encode(&mut v);
        let want = ["Hello me", "chunk big 70000", "chunk skipped", "rejected", "Finished big", "Status"];
        (v, want.iter().map(|s| s.to_string()).collect())
    }

    /// Feeds `bytes` in pieces of the given sizes, polling as far as it can
    /// after each piece, the way a driver would.
    fn decode_in_pieces(bytes: &[u8], pieces: &[usize]) -> Vec<String> {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut chunk: Option<(String, u32)> = None;
        let mut at = 0;
        let mut sizes = pieces.iter().cycle();
        loop {
            loop {
                if let Some((name, len)) = chunk.clone() {
                    if name == "skipped" {
                        d.skip(u64::from(len));
                        got.push("chunk skipped".to_string());
                        chunk = None;
                        continue;
                    }
                    match d.payload(len) {
                        Some(p) => {
                            got.push(format!("chunk {name} {}", p.len()));
                            chunk = None;
                        }
                        None => break,
                    }
                }
                match d.poll_msg() {
                    Ok(Some(Msg::Chunk { name, len, .. })) => chunk = Some((name, len)),
                    Ok(Some(Msg::Hello { label, .. })) => got.push(format!("Hello {label}")),
                    Ok(Some(Msg::Named { kind, name, .. })) => got.push(format!("{kind:?} {name}")),
                    Ok(Some(Msg::Copy { from, name, .. })) => got.push(format!("Copy {from} {name}")),
                    Ok(Some(Msg::Status(_))) => got.push("Status".into()),
                    Ok(Some(Msg::Rejected(_))) => got.push("rejected".into()),
                    Ok(None) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if at == bytes.len() {
                return got;
            }
            let n = sizes.next().copied().unwrap_or(1).max(1).min(bytes.len() - at);
            d.handle_input(&bytes[at..at + n]);
            at += n;
        }
    }

    #[test]
    fn decodes_a_stream_fed_whole_or_byte_by_byte() {
        let (bytes, want) = stream();
        assert_eq!(decode_in_pieces(&bytes, &[bytes.len()]), want);
        assert_eq!(decode_in_pieces(&bytes, &[1]), want);
    }

    #[test]
    fn needs_input_says_when_a_poll_would_wait() {
        let mut v = Vec::new();
        Frame::Status(StatusCode::OK).encode(&mut v);
        Frame::Finished { digest: [2; 16], name: "a" }.encode(&mut v);
        let mut d = Decoder::new();
        assert!(d.needs_input());
        d.handle_input(&v[..v.len() - 1]);
        assert!(!d.needs_input());
        assert_eq!(d.poll_msg(), Ok(Some(Msg::Status(StatusCode::OK))));
        assert!(d.needs_input(), "the FINISHED is one byte short");
        assert_eq!(d.poll_msg(), Ok(None));
        d.handle_input(&v[v.len() - 1..]);
        assert!(matches!(d.poll_msg(), Ok(Some(Msg::Named { .. }))));
    }

    #[test]
    fn an_unknown_type_is_fatal() {
        let mut d = Decoder::new();
        d.handle_input(&[0x09, 0x00, 1, 2, 3]);
        assert!(d.poll_msg().is_err());
    }

    #[test]
    fn a_payload_is_taken_into_the_callers_buffer_in_parts() {
        let mut v = Vec::new();
        Frame::Chunk { digest: [0; 16], name: "x", payload: b"0123456789" }.encode(&mut v);
        let mut d = Decoder::new();
        d.handle_input(&v[..v.len() - 6]);
        let Ok(Some(Msg::Chunk { len, .. })) = d.poll_msg() else { panic!("a chunk") };
        let mut out = vec![0u8; len as usize];
        assert_eq!(d.take_into(&mut out), 4);
        d.handle_input(&v[v.len() - 6..]);
        assert_eq!(d.take_into(&mut out[4..]), 6);
        assert_eq!(out, b"0123456789");
        assert_eq!(d.poll_msg(), Ok(None));
    }

    proptest! {
        /// The same stream split at any points gives the same messages.
        #[test]
        fn any_split_gives_the_same_messages(pieces in prop::collection::vec(1usize..5000, 1..40)) {
            let (bytes, want) = stream();
            prop_assert_eq!(decode_in_pieces(&bytes, &pieces), want);
        }
    }
}
