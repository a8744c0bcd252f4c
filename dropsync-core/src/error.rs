//! The one error type of the core crate.

use dropsync_proto::metadata::MetadataError;

/// What went wrong inside the engine. State machines report protocol
/// outcomes (a STATUS to send) as values, not errors: an error here means the
/// caller must stop using the connection or the store it came from.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// The durable store failed to read or write.
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    /// A META-DATA file (snapshot or journal) could not be parsed.
    #[error("META-DATA: {0}")]
    Metadata(#[from] MetadataError),
    /// A STATUS arrived when no message was waiting for a reply.
    #[error("STATUS 0x{0:04x} arrived with no message waiting for a reply")]
    UnexpectedReply(u16),
}
