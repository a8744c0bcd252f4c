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
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

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
}
