//! Encoding frames into a caller-owned buffer.

use byteorder::{ByteOrder, LittleEndian};

use crate::{Digest, Frame, MessageType};

/// Bytes of a FILE_CHUNK header before the name: type, digest, size, name_len.
pub const CHUNK_HEADER_FIXED_LEN: usize = 2 + 16 + 4 + 2;

fn put_u16(out: &mut Vec<u8>, v: u16) {
    let mut b = [0u8; 2];
    LittleEndian::write_u16(&mut b, v);
    out.extend_from_slice(&b);
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    let mut b = [0u8; 4];
    LittleEndian::write_u32(&mut b, v);
    out.extend_from_slice(&b);
}

/// Writes `name_len u16 · name`. Callers pass names that fit a u16 (the
/// frame constructors and `Frame::encode` document this); a longer one is cut
/// at the u16 limit rather than producing a length that lies.
fn put_name(out: &mut Vec<u8>, name: &str) {
    let bytes = name.as_bytes();
    let len = bytes.len().min(usize::from(u16::MAX));
    put_u16(out, len as u16);
    out.extend_from_slice(&bytes[..len]);
}

/// Appends a FILE_CHUNK header announcing `payload_len` bytes. The caller
/// sends the payload right after it, which lets a sender write header and
/// file data without copying the data into one buffer.
pub fn encode_chunk_header(digest: &Digest, name: &str, payload_len: u32, out: &mut Vec<u8>) {
    put_u16(out, MessageType::Chunk as u16);
    out.extend_from_slice(digest);
    put_u32(out, payload_len);
    put_name(out, name);
}

impl Frame<'_> {
    /// Appends the wire form of this frame to `out`.
    ///
    /// Names longer than 65,535 bytes cannot be represented and are cut;
    /// names are validated (section 3) long before a frame is built. A chunk
    /// payload longer than `u32::MAX` is likewise cut to that length.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match *self {
            Frame::Chunk { digest, name, payload } => {
                let len = payload.len().min(u32::MAX as usize);
                encode_chunk_header(&digest, name, len as u32, out);
                out.extend_from_slice(&payload[..len]);
            }
            Frame::Status(code) => {
                put_u16(out, MessageType::Status as u16);
                put_u16(out, code.0);
            }
            Frame::Finished { digest, name }
            | Frame::Abort { digest, name }
            | Frame::Delete { digest, name }
            | Frame::Request { digest, name } => {
                put_u16(out, self.message_type() as u16);
                out.extend_from_slice(&digest);
                put_name(out, name);
            }
            Frame::Hello { client_id, label } => {
                put_u16(out, MessageType::Hello as u16);
                out.extend_from_slice(&client_id);
                put_name(out, label);
            }
            Frame::Copy { digest, from, name } => {
                put_u16(out, MessageType::Copy as u16);
                out.extend_from_slice(&digest);
                put_name(out, from);
                put_name(out, name);
            }
        }
    }

    /// The frame encoded into a fresh buffer; convenient in tests and for
    /// small frames.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }
}
