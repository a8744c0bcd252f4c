//! The one error type of the protocol crate.

use crate::limits::MAX_NAME_LEN;

/// Why bytes could not be parsed as a frame. "Need more bytes" is never an
/// error: the parsers return `Ok(None)` for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A type this protocol does not define. Its length is unknown, so the
    /// stream cannot be resynchronised: the connection must be closed.
    #[error("unknown message type 0x{0:04x}")]
    UnknownType(u16),
    /// A file name longer than section 3 allows. The frame's extent is known,
    /// so a receiver can skip `frame_len` bytes and answer 0x0100.
    #[error("name of {len} bytes is longer than the {max}-byte limit", max = MAX_NAME_LEN)]
    NameTooLong {
        /// Declared name length.
        len: usize,
        /// Bytes the whole frame occupies (header and payload), to skip it.
        frame_len: u64,
    },
    /// A name or label that is not UTF-8. Skippable like `NameTooLong`.
    #[error("name is not valid UTF-8")]
    NameNotUtf8 {
        /// Bytes the whole frame occupies (header and payload), to skip it.
        frame_len: u64,
    },
}

impl ParseError {
    /// For an error confined to one frame, the number of bytes that frame
    /// occupies, so the receiver can skip it, reply 0x0100 and carry on.
    /// `None` when the stream cannot be trusted any more.
    pub fn skippable_len(&self) -> Option<u64> {
        match self {
            ParseError::UnknownType(_) => None,
            ParseError::NameTooLong { frame_len, .. } | ParseError::NameNotUtf8 { frame_len } => {
                Some(*frame_len)
            }
        }
    }
}
