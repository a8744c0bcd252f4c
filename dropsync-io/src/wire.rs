//! Frames over any byte stream: the small adapter both binaries put between
//! a socket and core's [`Decoder`], which holds the buffer and the codec.
//!
//! It is generic over `Read`/`Write` (tests use byte slices). A read that
//! times out (the socket's read timeout, used for keep-alives and the
//! dead-peer check) loses nothing: the bytes already buffered stay, and the
//! next call carries on.

use std::io::{self, Read, Write};

pub use dropsync_core::decoder::Msg;
use dropsync_core::decoder::Decoder;
use dropsync_core::receiving::Receiving;
use dropsync_proto::{Frame, StatusCode};

/// Reads frames from a byte stream: core's [`Decoder`] fed from `R`.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    dec: Decoder,
    /// Bytes read from the stream so far: a liveness signal that moves even
    /// in the middle of a long payload.
    total_read: u64,
}

/// True for the error a socket read timeout produces: not a failure, just
/// time passing without data.
pub fn is_timeout_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl<R: Read> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        Self { inner, dec: Decoder::new(), total_read: 0 }
    }

    /// The stream and the decoder with what it holds, for a driver that
    /// reads the stream itself from now on.
    pub fn into_parts(self) -> (R, Decoder) {
        (self.inner, self.dec)
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Bytes received but not yet returned as a message.
    pub fn buffered(&self) -> usize {
        self.dec.buffered()
    }

    /// Reads more bytes into the decoder, with room for `want` from the
    /// first unconsumed one; `Ok(false)` at end of stream.
    fn fill(&mut self, want: usize) -> io::Result<bool> {
        loop {
            match self.inner.read(self.dec.spare(want)) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.dec.filled(n);
                    self.total_read += n as u64;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the next message. `Ok(None)` is a clean end of stream between
    /// messages; end of stream inside a message is `UnexpectedEof`; an unknown
    /// type is `InvalidData` (the connection cannot be resynchronised).
    pub fn read_msg(&mut self) -> io::Result<Option<Msg>> {
        self.drain_skip()?;
        loop {
            match self.dec.poll_msg() {
                Ok(Some(msg)) => return Ok(Some(msg)),
                Ok(None) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            let had = self.buffered();
            if !self.fill(had + 1)? {
                return if had == 0 && self.dec.skip_pending() == 0 {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// True when the next [`read_msg`](Self::read_msg) needs bytes not
    /// received yet, so it may block (see `Decoder::needs_input`).
    pub fn needs_input(&self) -> bool {
        self.dec.needs_input()
    }

    /// Bytes read from the stream so far (for dead-peer checks).
    pub fn total_read(&self) -> u64 {
        self.total_read
    }

    /// Reads until `len` payload bytes are buffered, so that a following
    /// [`Self::read_payload`] cannot block or time out. Safe to call again
    /// after a timeout.
    pub fn ensure(&mut self, len: u32) -> io::Result<()> {
        self.drain_skip()?;
        while self.buffered() < len as usize {
            if !self.fill(len as usize)? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }

    /// Reads a chunk payload of `len` bytes (already checked against the
    /// receiver's maximum) and borrows it from the buffer.
    pub fn read_payload(&mut self, len: u32) -> io::Result<&[u8]> {
        self.ensure(len)?;
        self.dec.payload(len).ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    /// Reads a chunk payload straight into `out` (its whole length is the
    /// payload's), from byte `*got` on, advancing `*got`: what is already
    /// buffered is copied, the rest is read from the stream into `out`
    /// itself, so a large payload crosses no intermediate buffer and the
    /// caller can hand `out` on (to a writer thread) without copying it.
    /// Progress survives a read timeout: call it again with the same `out`
    /// and `got` until it returns `Ok`.
    pub fn read_payload_into(&mut self, out: &mut [u8], got: &mut usize) -> io::Result<()> {
        self.drain_skip()?;
        let at = (*got).min(out.len());
        *got += self.dec.take_into(&mut out[at..]);
        while *got < out.len() {
            match self.inner.read(&mut out[*got..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    *got += n;
                    self.total_read += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads and discards `len` bytes without ever holding more than the
    /// buffer: how an oversized chunk is dropped (section 4). If it times
    /// out, the rest is discarded by the next read: do not call it again.
    pub fn skip(&mut self, len: u64) -> io::Result<()> {
        self.dec.skip(len);
        self.drain_skip()
    }

    fn drain_skip(&mut self) -> io::Result<()> {
        while self.dec.skip_pending() > 0 {
            if !self.fill(1)? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

/// What one read of a socket brought a receiving machine ([`feed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// Bytes arrived; the machine has them.
    Bytes,
    /// The peer closed the connection; `mid_message` when it did so
    /// inside a message.
    Closed {
        /// Part of a message was left unfinished.
        mid_message: bool,
    },
    /// The read timed out: time to call the machine's `handle_timeout`.
    TimedOut,
}

/// Reads once from `input` straight into the room `conn` gives (a large
/// payload into the buffer its host lent), and tells it what came: the one
/// read step of every driver of a [`Receiving`] machine.
pub fn feed<T>(input: &mut impl Read, conn: &mut Receiving<T>) -> io::Result<Fed> {
    loop {
        match input.read(conn.spare()) {
            Ok(0) => return Ok(Fed::Closed { mid_message: !conn.is_between_messages() }),
            Ok(n) => {
                conn.filled(crate::clock::now(), n);
                return Ok(Fed::Bytes);
            }
            Err(e) if is_timeout_error(&e) => return Ok(Fed::TimedOut),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Encodes `frame` into `scratch` and writes it whole.
pub fn write_frame(w: &mut impl Write, frame: &Frame<'_>, scratch: &mut Vec<u8>) -> io::Result<()> {
    scratch.clear();
    frame.encode(scratch);
    w.write_all(scratch)
}

/// Writes a STATUS reply.
pub fn write_status(w: &mut impl Write, code: StatusCode) -> io::Result<()> {
    let mut b = Vec::with_capacity(4);
    write_frame(w, &Frame::Status(code), &mut b)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that returns its data in pieces of at most `step` bytes and
    /// a timeout between pieces, like a slow socket.
    struct Trickle {
        data: Vec<u8>,
        pos: usize,
        step: usize,
        timeout_next: bool,
    }
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            self.timeout_next = !self.timeout_next;
            if self.timeout_next {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = self.step.min(out.len()).min(self.data.len() - self.pos);
            out[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    fn stream() -> Vec<u8> {
        let mut v = Vec::new();
        let big = vec![7u8; 200_000];
        Frame::Hello { client_id: [1; 16], label: "me" }.encode(&mut v);
        Frame::Chunk { digest: dropsync_proto::md5(&big), name: "big", payload: &big }.encode(&mut v);
        Frame::Chunk { digest: [0; 16], name: "skipped", payload: &big[..1000] }.encode(&mut v);
        Frame::Finished { digest: [2; 16], name: "big" }.encode(&mut v);
        Frame::Status(StatusCode::OK).encode(&mut v);
        v
    }

    #[test]
    fn reads_through_timeouts_without_losing_bytes() {
        let mut r = FrameReader::new(Trickle { data: stream(), pos: 0, step: 777, timeout_next: false });
        let mut got = Vec::new();
        loop {
            match r.read_msg() {
                Ok(Some(Msg::Chunk { name, len, .. })) => {
                    let res = loop {
                        let res = if name == "skipped" {
                            // A timed-out skip finishes during the next read.
                            r.skip(u64::from(len)).or_else(|e| if is_timeout_error(&e) { Ok(()) } else { Err(e) }).map(|_| 0)
                        } else {
                            r.read_payload(len).map(|p| p.len())
                        };
                        match res {
                            Err(e) if is_timeout_error(&e) => continue,
                            other => break other,
                        }
                    };
                    got.push(format!("chunk {name} {}", res.unwrap()));
                }
                Ok(Some(m)) => got.push(format!("{m:?}").chars().take(12).collect()),
                Ok(None) => break,
                Err(e) if is_timeout_error(&e) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, ["Hello { clie", "chunk big 200000", "chunk skipped 0", "Named { kind", "Status(0x000"]);
    }

    #[test]
    fn payload_read_into_a_buffer_resumes_after_timeouts() {
        let mut r = FrameReader::new(Trickle { data: stream(), pos: 0, step: 50_000, timeout_next: false });
        let mut names = Vec::new();
        loop {
            match r.read_msg() {
                Ok(Some(Msg::Chunk { digest, name, len })) => {
                    let mut out = vec![0xAA; len as usize];
                    let mut got = 0;
                    loop {
                        match r.read_payload_into(&mut out, &mut got) {
                            Ok(()) => break,
                            Err(e) if is_timeout_error(&e) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    assert_eq!(got, len as usize);
                    if name == "big" {
                        assert_eq!(dropsync_proto::md5(&out), digest);
                    }
                    names.push(name);
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if is_timeout_error(&e) => continue,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(names, ["big", "skipped"], "the frames after each payload still parse");
    }

    #[test]
    fn needs_input_says_when_a_read_would_wait() {
        let mut v = Vec::new();
        Frame::Status(StatusCode::OK).encode(&mut v);
        Frame::Finished { digest: [2; 16], name: "a" }.encode(&mut v);
        let split = v.len() - 1;
        let mut r = FrameReader::new(Trickle { data: v, pos: 0, step: split, timeout_next: true });
        assert!(r.needs_input(), "nothing buffered");
        assert!(matches!(r.read_msg(), Ok(Some(Msg::Status(StatusCode::OK)))));
        assert!(r.needs_input(), "the FINISHED is one byte short");
        assert!(r.read_msg().is_err(), "a timeout");
        assert!(matches!(r.read_msg(), Ok(Some(Msg::Named { .. }))));
        assert!(r.needs_input());
    }

    #[test]
    fn skip_can_resume_after_timeouts_mid_payload() {
        // skip() is called once above per timeout; resuming must not double-skip.
        let mut v = Vec::new();
        Frame::Chunk { digest: [0; 16], name: "x", payload: &[9u8; 5000] }.encode(&mut v);
        Frame::Status(StatusCode::OK).encode(&mut v);
        let mut r = FrameReader::new(&v[..]);
        let Some(Msg::Chunk { len, .. }) = r.read_msg().unwrap() else { panic!() };
        r.skip(u64::from(len)).unwrap();
        assert_eq!(r.read_msg().unwrap(), Some(Msg::Status(StatusCode::OK)));
        assert_eq!(r.read_msg().unwrap(), None);
    }

    #[test]
    fn bad_name_is_skipped_and_reported_unknown_type_is_fatal() {
        let mut v = vec![0x03, 0x00];
        v.extend_from_slice(&[0; 16]);
        v.extend_from_slice(&[2, 0, 0xff, 0xfe]);
        Frame::Status(StatusCode::OK).encode(&mut v);
        v.extend_from_slice(&[0x09, 0x00]);
        let mut r = FrameReader::new(&v[..]);
        assert!(matches!(r.read_msg().unwrap(), Some(Msg::Rejected(_))));
        assert_eq!(r.read_msg().unwrap(), Some(Msg::Status(StatusCode::OK)));
        assert_eq!(r.read_msg().unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn eof_inside_a_frame_is_an_error() {
        let v = Frame::Finished { digest: [0; 16], name: "abc" }.to_vec();
        let mut r = FrameReader::new(&v[..v.len() - 1]);
        assert_eq!(r.read_msg().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
