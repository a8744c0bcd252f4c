//! The typed messages of PROTOCOL.md section 2.

use crate::{Digest, StatusCode};

/// A client's stable 16-byte id, sent in HELLO on both of its connections so
/// the server can pair them ([ext], section 1).
pub type ClientId = [u8; 16];

/// The u16 type field that starts every message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum MessageType {
    /// FILE_CHUNK: one piece of a file, with the MD5 of the piece.
    Chunk = 0x0001,
    /// STATUS: the reply to every other message, and the keep-alive.
    Status = 0x0002,
    /// FINISHED (Finished / Close File): ends a transfer, with the whole file's MD5.
    Finished = 0x0003,
    /// ABORT (Abort File): drops a transfer in progress.
    Abort = 0x0004,
    /// DELETE (Delete File).
    Delete = 0x0005,
    /// REQUEST (Request File Update).
    Request = 0x0006,
    /// HELLO [ext]: pairs a client's two connections by client id.
    Hello = 0x0007,
    /// COPY [ext]: a whole transfer in one message, naming content the
    /// receiver already holds at another path instead of sending it.
    Copy = 0x0008,
}

impl MessageType {
    /// Maps a wire value to a type; `None` for a type this protocol lacks
    /// (which the receiver cannot skip, since its length is unknown).
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            0x0001 => Self::Chunk,
            0x0002 => Self::Status,
            0x0003 => Self::Finished,
            0x0004 => Self::Abort,
            0x0005 => Self::Delete,
            0x0006 => Self::Request,
            0x0007 => Self::Hello,
            0x0008 => Self::Copy,
            _ => return None,
        })
    }
}

/// One complete message, borrowing its name and payload from the bytes it was
/// parsed from (or that will be encoded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// FILE_CHUNK: `digest` is the MD5 of `payload`.
    Chunk {
        /// MD5 of this chunk's payload.
        digest: Digest,
        /// The file this chunk belongs to.
        name: &'a str,
        /// The chunk's bytes.
        payload: &'a [u8],
    },
    /// STATUS with its code.
    Status(StatusCode),
    /// FINISHED: `digest` is the MD5 of the whole file.
    Finished {
        /// MD5 of the whole file.
        digest: Digest,
        /// The file.
        name: &'a str,
    },
    /// ABORT: `digest` is sent as zeros and ignored by receivers.
    Abort {
        /// Ignored by receivers; kept so a parsed frame re-encodes byte for byte.
        digest: Digest,
        /// The file.
        name: &'a str,
    },
    /// DELETE: `digest` is the MD5 of the version the sender holds, or zeros.
    Delete {
        /// MD5 of the sender's version, or zeros.
        digest: Digest,
        /// The file.
        name: &'a str,
    },
    /// REQUEST: `digest` is the MD5 of the version the sender holds, or zeros.
    Request {
        /// MD5 of the sender's version, or zeros.
        digest: Digest,
        /// The file.
        name: &'a str,
    },
    /// HELLO [ext]: the client's id and a free-form label (section 3 does not apply).
    Hello {
        /// The client's stable id.
        client_id: ClientId,
        /// A human-readable label, e.g. the host name; may be empty.
        label: &'a str,
    },
    /// COPY [ext]: `name` is to hold the content that `from` held in the
    /// version the sender last had in common with the receiver; `digest`
    /// is that content's MD5 (a check, never an identity: the receiver
    /// takes the content from its own `from`, and refuses with 0x0020 when
    /// that is not the version the digest names, so the sender sends the
    /// file the usual way).
    Copy {
        /// MD5 of the content.
        digest: Digest,
        /// Where the receiver already has it.
        from: &'a str,
        /// The file to create or replace.
        name: &'a str,
    },
}

impl<'a> Frame<'a> {
    /// The wire type of this frame.
    pub fn message_type(&self) -> MessageType {
        match self {
            Frame::Chunk { .. } => MessageType::Chunk,
            Frame::Status(_) => MessageType::Status,
            Frame::Finished { .. } => MessageType::Finished,
            Frame::Abort { .. } => MessageType::Abort,
            Frame::Delete { .. } => MessageType::Delete,
            Frame::Request { .. } => MessageType::Request,
            Frame::Hello { .. } => MessageType::Hello,
            Frame::Copy { .. } => MessageType::Copy,
        }
    }

    /// The file name this frame is about; `None` for STATUS and HELLO (whose
    /// label is not a file name).
    pub fn name(&self) -> Option<&'a str> {
        match *self {
            Frame::Chunk { name, .. }
            | Frame::Finished { name, .. }
            | Frame::Abort { name, .. }
            | Frame::Delete { name, .. }
            | Frame::Request { name, .. }
            | Frame::Copy { name, .. } => Some(name),
            Frame::Status(_) | Frame::Hello { .. } => None,
        }
    }

    /// An ABORT as senders build it: section 2 fixes its digest to zeros.
    pub fn abort(name: &'a str) -> Self {
        Frame::Abort { digest: crate::ZERO_DIGEST, name }
    }

    /// True when the peer must answer this frame with exactly one STATUS.
    pub fn expects_reply(&self) -> bool {
        !matches!(self, Frame::Status(_))
    }
}
