//! What the simulated server and clients drive alike, as the binaries'
//! drivers do: chunk bytes for a sending machine, and the keep-alives and
//! dead-peer check of the connection a machine sends on.

use std::io;
use std::time::Instant;

use dropsync_core::liveness::{Due, Gone, Liveness};
use dropsync_core::mux::OpId;
use dropsync_core::sending::{Prepared, Sending, Source, Transmit};
use dropsync_proto::{md5, Frame, StatusCode};

use crate::net::{ConnId, End, Net};

/// An operation that may carry content to send in chunks.
pub trait Content {
    /// Its bytes; `None` for one without content (a DELETE, a REQUEST).
    fn content(&self) -> Option<&[u8]>;
}

/// Copies each chunk out of its operation's content, so the payload can
/// follow its header.
#[derive(Default)]
struct Chunks {
    buf: Vec<u8>,
}

impl<O: Content> Source<O> for Chunks {
    fn prepare(&mut self, _id: OpId, _name: &str, op: &mut O, offset: u64, len: u32) -> io::Result<Prepared<'_>> {
        let Some(bytes) = op.content() else {
            return Err(io::Error::other("an operation without content has no chunks"));
        };
        let start = (offset as usize).min(bytes.len());
        let end = (start + len as usize).min(bytes.len());
        self.buf.clear();
        self.buf.extend_from_slice(&bytes[start..end]);
        Ok(Prepared { payload: Some(&self.buf), len: self.buf.len() as u32, digest: md5(&self.buf), file_digest: None })
    }
}

/// Everything `sending` can send now, each chunk's payload after its
/// header.
pub fn drain<O: Content>(sending: &mut Sending<O>) -> Vec<u8> {
    let mut chunks = Chunks::default();
    let mut out = Vec::new();
    while let Some(Transmit::Chunk { .. }) = sending.poll_transmit(&mut chunks) {
        sending.take_frames(&mut out);
        out.extend_from_slice(&chunks.buf);
    }
    sending.take_frames(&mut out);
    out
}

/// Section 9 on a connection this side sends on: a keep-alive when one is
/// due (sent on `conn` toward `to`); `Err` when the peer is gone.
pub fn keep_alive(link: &mut Liveness, now: Instant, net: &mut Net, conn: ConnId, to: End) -> Result<(), Gone> {
    match link.poll(now) {
        Due::PeerGone(gone) => Err(gone),
        Due::KeepAlive => {
            let mut buf = Vec::new();
            Frame::Status(StatusCode::KEEP_ALIVE).encode(&mut buf);
            net.send(now, conn, to, buf);
            link.on_sent(now);
            Ok(())
        }
        Due::Nothing => Ok(()),
    }
}
