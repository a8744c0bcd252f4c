//! Protocol-wide limits, named so that every length check cites its reason.

/// Longest file name on the wire, in bytes (PROTOCOL.md section 3). Deep trees
/// fit easily, and a receiver never has to hold more than this for a name.
pub const MAX_NAME_LEN: usize = 4096;

/// Default largest chunk payload a receiver accepts (PROTOCOL.md section 4):
/// big enough for fast bulk transfer, small enough that a receiver can always
/// afford to buffer one chunk to check its MD5 before writing it.
pub const DEFAULT_MAX_CHUNK: u32 = 16 * 1024 * 1024;

/// Largest HELLO label: the u16 length field allows no more, and section 3's
/// name limit does not apply to labels.
pub const MAX_LABEL_LEN: usize = u16::MAX as usize;
