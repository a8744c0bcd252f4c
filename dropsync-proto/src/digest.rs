//! MD5 digests, the protocol's only checksum (through the `md-5` crate).


pub use md5::Md5;
use md5::Digest as _;

/// A raw 16-byte MD5 digest as it travels on the wire.
pub type Digest = [u8; 16];

/// The digest sent where no content exists: DELETE and REQUEST for a version
/// the sender does not hold, and every ABORT.
pub const ZERO_DIGEST: Digest = [0; 16];

/// MD5 of a whole byte slice, for chunk payloads and small files.
pub fn md5(data: &[u8]) -> Digest {
    Md5::digest(data).into()
}

/// Incremental MD5 for data that arrives piece by piece (a whole file).
pub fn finish(hasher: Md5) -> Digest {
    hasher.finalize().into()
}

/// Lower-case hex, the form META-DATA files and logs use.
pub fn to_hex(digest: &Digest) -> String {
    let mut s = String::with_capacity(32);
    push_hex(digest, &mut s);
    s
}

/// Appends the lower-case hex of `digest` (an MD5, or any fixed-size
/// digest) to `out`: a table lookup per nibble, not a formatter call per
/// byte (rendering META-DATA of many files spent most of its time in
/// `{:02x}`).
pub fn push_hex<const N: usize>(digest: &[u8; N], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in digest {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
}

/// Parses 32 hex digits (either case) as an MD5; `None` for anything else.
pub fn from_hex(text: &str) -> Option<Digest> {
    bytes_from_hex(text)
}

/// Parses exactly `2 * N` hex digits (either case); `None` for anything else.
pub fn bytes_from_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let bytes = text.as_bytes();
    if bytes.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

fn hex_val(c: u8) -> Option<u8> {
    match HEX_VALUES[usize::from(c)] {
        NOT_HEX => None,
        v => Some(v),
    }
}

/// Marks a byte that is no hex digit in [`HEX_VALUES`].
const NOT_HEX: u8 = 0xff;

/// Each byte's value as a hex digit, or [`NOT_HEX`]: one load per digit
/// (META-DATA holds two digests a line, and a client loads a million lines
/// at start).
const HEX_VALUES: [u8; 256] = {
    let mut t = [NOT_HEX; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_md5_vectors() {
        // RFC 1321 test suite.
        assert_eq!(to_hex(&md5(b"")), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(to_hex(&md5(b"abc")), "900150983cd24fb0d6963f7d28e17f72");
    }

    #[test]
    fn incremental_equals_one_shot() {
        let mut h = Md5::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(finish(h), md5(b"abc"));
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let d = md5(b"dropsync");
        assert_eq!(from_hex(&to_hex(&d)), Some(d));
        assert_eq!(from_hex(&to_hex(&d).to_uppercase()), Some(d));
        assert_eq!(from_hex("xyz"), None);
        assert_eq!(from_hex(&"g".repeat(32)), None);
    }

    /// The table says of every byte what the standard library does.
    #[test]
    fn every_byte_is_a_hex_digit_exactly_when_the_standard_library_says_so() {
        for c in 0..=u8::MAX {
            let std = char::from(c).to_digit(16).and_then(|v| u8::try_from(v).ok());
            assert_eq!(hex_val(c), std, "byte {c:#04x}");
        }
    }
}
