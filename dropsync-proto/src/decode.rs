//! Incremental, zero-copy decoding of frames.

use crate::cursor::Cursor;
use crate::limits::MAX_NAME_LEN;
use crate::{Digest, Frame, MessageType, ParseError, StatusCode};

/// The result of [`parse_head`]: either a whole frame, or the header of a
/// FILE_CHUNK whose payload has not been looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Head<'a> {
    /// A complete frame without payload (every type but FILE_CHUNK).
    Frame(Frame<'a>),
    /// A FILE_CHUNK header. `payload_len` bytes of payload follow the
    /// consumed header; the caller decides whether to read or skip them.
    Chunk {
        /// MD5 the payload should have.
        digest: Digest,
        /// The file the chunk belongs to.
        name: &'a str,
        /// Declared payload size, not yet checked against any limit.
        payload_len: u32,
    },
}

/// Parses one frame, stopping after the header of a FILE_CHUNK.
///
/// Returns `Ok(None)` when `buf` holds a strict prefix of a frame header, or
/// `Ok(Some((head, consumed)))` where `consumed` counts only header bytes.
/// This is what a receiver uses to check a chunk's declared size before it
/// reads (or allocates) the payload.
pub fn parse_head<'a>(buf: &'a [u8]) -> Result<Option<(Head<'a>, usize)>, ParseError> {
    let mut cur = Cursor::new(buf);
    let Some(raw_type) = cur.u16() else {
        return Ok(None);
    };
    let Some(kind) = MessageType::from_u16(raw_type) else {
        return Err(ParseError::UnknownType(raw_type));
    };
    let head = match kind {
        MessageType::Status => match cur.u16() {
            Some(code) => Head::Frame(Frame::Status(StatusCode(code))),
            None => return Ok(None),
        },
        MessageType::Chunk => {
            let Some((digest, payload_len)) = cur.digest().zip(cur.u32()) else {
                return Ok(None);
            };
            let Some(name) = name_field(&mut cur, u64::from(payload_len), MAX_NAME_LEN)? else {
                return Ok(None);
            };
            Head::Chunk { digest, name, payload_len }
        }
        MessageType::Hello => {
            let Some(client_id) = cur.digest() else {
                return Ok(None);
            };
            let Some(label) = name_field(&mut cur, 0, usize::from(u16::MAX))? else {
                return Ok(None);
            };
            Head::Frame(Frame::Hello { client_id, label })
        }
        MessageType::Copy => {
            let Some(digest) = cur.digest() else {
                return Ok(None);
            };
            // Both names are read before either is judged, so that an error
            // reports the whole frame's length (the decoder skips it whole
            // and stays in step): at most twice 64 KiB, as for any frame.
            let Some(from) = raw_name(&mut cur) else {
                return Ok(None);
            };
            let Some(name) = raw_name(&mut cur) else {
                return Ok(None);
            };
            let frame_len = cur.pos() as u64;
            let checked = |bytes: &'a [u8]| -> Result<&'a str, ParseError> {
                if bytes.len() > MAX_NAME_LEN {
                    return Err(ParseError::NameTooLong { len: bytes.len(), frame_len });
                }
                std::str::from_utf8(bytes).map_err(|_| ParseError::NameNotUtf8 { frame_len })
            };
            Head::Frame(Frame::Copy { digest, from: checked(from)?, name: checked(name)? })
        }
        MessageType::Finished | MessageType::Abort | MessageType::Delete | MessageType::Request => {
            let Some(digest) = cur.digest() else {
                return Ok(None);
            };
            let Some(name) = name_field(&mut cur, 0, MAX_NAME_LEN)? else {
                return Ok(None);
            };
            Head::Frame(match kind {
                MessageType::Finished => Frame::Finished { digest, name },
                MessageType::Abort => Frame::Abort { digest, name },
                MessageType::Delete => Frame::Delete { digest, name },
                _ => Frame::Request { digest, name },
            })
        }
    };
    Ok(Some((head, cur.pos())))
}

/// Parses one complete frame, payload included.
///
/// Returns `Ok(None)` until `buf` holds the whole frame, then the frame
/// (borrowing from `buf`) and the bytes it consumed. A FILE_CHUNK is only
/// returned once its whole payload is in `buf`; a receiver that must bound
/// its memory checks the size with [`parse_head`] first.
pub fn parse(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ParseError> {
    let Some((head, header_len)) = parse_head(buf)? else {
        return Ok(None);
    };
    match head {
        Head::Frame(frame) => Ok(Some((frame, header_len))),
        Head::Chunk { digest, name, payload_len } => {
            let mut cur = Cursor::new(&buf[header_len..]);
            let Some(payload) = cur.take(payload_len as usize) else {
                return Ok(None);
            };
            Ok(Some((Frame::Chunk { digest, name, payload }, header_len + payload.len())))
        }
    }
}

/// Reads `name_len u16 · name` as bytes, unchecked.
fn raw_name<'a>(cur: &mut Cursor<'a>) -> Option<&'a [u8]> {
    let len = cur.u16()?;
    cur.take(usize::from(len))
}

/// Reads `name_len u16 · name`, checking the declared length against `max`
/// before waiting for (or touching) the name bytes. `payload_len` is what
/// follows the name, so that errors can report how much to skip.
fn name_field<'a>(
    cur: &mut Cursor<'a>,
    payload_len: u64,
    max: usize,
) -> Result<Option<&'a str>, ParseError> {
    let Some(len) = cur.u16() else {
        return Ok(None);
    };
    let len = usize::from(len);
    let frame_len = (cur.pos() + len) as u64 + payload_len;
    if len > max {
        return Err(ParseError::NameTooLong { len, frame_len });
    }
    let Some(bytes) = cur.take(len) else {
        return Ok(None);
    };
    match std::str::from_utf8(bytes) {
        Ok(name) => Ok(Some(name)),
        Err(_) => Err(ParseError::NameNotUtf8 { frame_len }),
    }
}
