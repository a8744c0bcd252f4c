//! STATUS codes (PROTOCOL.md section 8). Codes are bit flags, so an unknown
//! code is still a valid value and round-trips unchanged.

use std::fmt;

/// A STATUS message code. A newtype rather than an enum so that codes this
/// version does not know (or combinations of flags) survive parse → encode.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatusCode(pub u16);

impl StatusCode {
    /// The message was accepted.
    pub const OK: Self = Self(0x0001);
    /// The chunk's MD5 did not match its payload: send the same chunk again.
    pub const RESEND_CHECKSUM: Self = Self(0x0002);
    /// The chunk's size was 0 or above the receiver's maximum: send it again.
    pub const RESEND_SIZE: Self = Self(0x0004);
    /// Third bad checksum in one transfer, or a whole-file MD5 mismatch at FINISHED.
    pub const ABORT_CHECKSUM: Self = Self(0x0008);
    /// Third invalid chunk size in one transfer.
    pub const ABORT_SIZE: Self = Self(0x0010);
    /// DELETE of a file that does not exist (also REQUEST of an unknown file).
    pub const NO_FILE: Self = Self(0x0020);
    /// Another transfer or delete holds the file's write lock.
    pub const LOCKED: Self = Self(0x0040);
    /// The file cannot be written (or is being written) on the other side.
    pub const IN_USE: Self = Self(0x0080);
    /// [ext] Invalid or reserved name.
    pub const BAD_REQUEST: Self = Self(0x0100);
    /// Keep-alive: never replied to, never counts as a reply.
    pub const KEEP_ALIVE: Self = Self(0x8000);

    const NAMES: [(Self, &'static str); 10] = [
        (Self::OK, "OK"),
        (Self::RESEND_CHECKSUM, "resend: checksum incorrect"),
        (Self::RESEND_SIZE, "resend: invalid chunk size"),
        (Self::ABORT_CHECKSUM, "abort: 3 incorrect checksums"),
        (Self::ABORT_SIZE, "abort: 3 invalid chunks"),
        (Self::NO_FILE, "no file to delete"),
        (Self::LOCKED, "abort: file locked"),
        (Self::IN_USE, "abort: file in use"),
        (Self::BAD_REQUEST, "abort: bad request"),
        (Self::KEEP_ALIVE, "keep-alive"),
    ];

    /// True when every flag of `flag` is set in this code.
    pub fn contains(self, flag: Self) -> bool {
        flag.0 != 0 && self.0 & flag.0 == flag.0
    }

    /// True for a reply that ends the transfer it answers without success.
    pub fn is_abort(self) -> bool {
        [
            Self::ABORT_CHECKSUM,
            Self::ABORT_SIZE,
            Self::NO_FILE,
            Self::LOCKED,
            Self::IN_USE,
            Self::BAD_REQUEST,
        ]
        .contains(&self)
    }

    /// True for a reply that asks for the same chunk again.
    pub fn is_resend(self) -> bool {
        self == Self::RESEND_CHECKSUM || self == Self::RESEND_SIZE
    }

    /// Names of the known flags set in this code, for logs and dissectors.
    pub fn flag_names(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(flag, _)| self.contains(*flag))
            .map(|(_, name)| name)
    }
}

impl fmt::Debug for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for StatusCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:04x}", self.0)?;
        let names: Vec<&str> = self.flag_names().collect();
        if names.is_empty() {
            write!(f, " (unknown)")
        } else {
            write!(f, " ({})", names.join(" | "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_known_and_unknown_codes() {
        assert_eq!(StatusCode::LOCKED.to_string(), "0x0040 (abort: file locked)");
        assert_eq!(StatusCode(0x0200).to_string(), "0x0200 (unknown)");
        assert_eq!(
            StatusCode(0x0041).to_string(),
            "0x0041 (OK | abort: file locked)"
        );
    }

    #[test]
    fn classification() {
        assert!(StatusCode::ABORT_SIZE.is_abort());
        assert!(!StatusCode::OK.is_abort());
        assert!(StatusCode::RESEND_SIZE.is_resend());
        assert!(!StatusCode(0).contains(StatusCode(0)));
    }
}
