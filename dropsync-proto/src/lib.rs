//! The dropsync wire protocol, with no I/O at all.
//!
//! This crate turns bytes into typed frames and typed frames into bytes, and
//! renders and parses the META-DATA text format. It never touches a socket, a
//! file, a thread or a clock: bytes come in as slices and go out into a buffer
//! the caller owns, so every rule of `PROTOCOL.md` can be tested in memory and
//! fuzzed. The binaries own the sockets; `dropsync-core` owns the state
//! machines that decide what to send.
//!
//! Parsing is incremental and zero-copy in the style of `httparse`: [`parse`]
//! returns `Ok(None)` when more bytes are needed, or the frame (borrowing its
//! name and payload from the input) with the number of bytes it consumed.
//! [`parse_head`] stops after a FILE_CHUNK header so a receiver can reject an
//! oversized chunk and skip its payload without ever buffering it.

mod cursor;
pub mod digest;
mod decode;
mod encode;
mod error;
mod frame;
pub mod index;
pub mod limits;
pub mod md5_pair;
pub mod metadata;
pub mod name;
mod status;

pub use decode::{parse, parse_head, Head};
pub use digest::{md5, Digest, Md5, ZERO_DIGEST};
pub use encode::{encode_chunk_header, CHUNK_HEADER_FIXED_LEN};
pub use error::ParseError;
pub use frame::{ClientId, Frame, MessageType};
pub use status::StatusCode;
