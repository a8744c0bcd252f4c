//! Every frame type against byte vectors written by hand from the layouts of
//! PROTOCOL.md section 2 (not produced by the encoder), in both directions.

use dropsync_proto::{parse, parse_head, Frame, Head, ParseError, StatusCode, ZERO_DIGEST};

/// Decodes a hex string with optional spaces, as written in the vectors.
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

/// MD5("abc") from RFC 1321.
const ABC_MD5: &str = "900150983cd24fb0d6963f7d28e17f72";

fn abc_digest() -> [u8; 16] {
    hex(ABC_MD5).try_into().expect("16 bytes")
}

/// Parses `bytes` as exactly one frame and checks that encoding gives them back.
fn check(bytes: &[u8], expected: Frame<'_>) {
    let (frame, used) = parse(bytes).expect("valid").expect("complete");
    assert_eq!(frame, expected);
    assert_eq!(used, bytes.len());
    assert_eq!(expected.to_vec(), bytes);
}

#[test]
fn status_ok_and_keepalive() {
    check(&hex("0200 0100"), Frame::Status(StatusCode::OK));
    check(&hex("0200 0080"), Frame::Status(StatusCode::KEEP_ALIVE));
    check(&hex("0200 4000"), Frame::Status(StatusCode::LOCKED));
    // Unknown codes are flags we do not know yet: they round-trip.
    check(&hex("0200 0102"), Frame::Status(StatusCode(0x0201)));
}

#[test]
fn file_chunk() {
    let bytes = hex(&format!("0100 {ABC_MD5} 03000000 0500 612e747874 616263"));
    check(&bytes, Frame::Chunk { digest: abc_digest(), name: "a.txt", payload: b"abc" });
}

#[test]
fn file_chunk_header_parses_before_payload() {
    let bytes = hex(&format!("0100 {ABC_MD5} 00000001 0100 78"));
    // 16 MiB payload announced; none of it is present yet.
    let (head, used) = parse_head(&bytes).expect("valid").expect("header complete");
    assert_eq!(
        head,
        Head::Chunk { digest: abc_digest(), name: "x", payload_len: 0x0100_0000 }
    );
    assert_eq!(used, bytes.len());
    assert_eq!(parse(&bytes), Ok(None));
}

#[test]
fn finished() {
    let bytes = hex(&format!("0300 {ABC_MD5} 0700 6469722f612e62"));
    check(&bytes, Frame::Finished { digest: abc_digest(), name: "dir/a.b" });
}

#[test]
fn abort_carries_zero_digest() {
    let bytes = hex("0400 00000000000000000000000000000000 0100 66");
    check(&bytes, Frame::Abort { digest: ZERO_DIGEST, name: "f" });
    assert_eq!(Frame::abort("f").to_vec(), bytes);
}

#[test]
fn delete() {
    let bytes = hex(&format!("0500 {ABC_MD5} 0100 66"));
    check(&bytes, Frame::Delete { digest: abc_digest(), name: "f" });
}

#[test]
fn request() {
    let bytes = hex("0600 00000000000000000000000000000000 0300 c3a97a");
    check(&bytes, Frame::Request { digest: ZERO_DIGEST, name: "éz" });
}

#[test]
fn hello_with_and_without_label() {
    let id: [u8; 16] = core::array::from_fn(|i| i as u8);
    check(
        &hex("0700 000102030405060708090a0b0c0d0e0f 0300 626f62"),
        Frame::Hello { client_id: id, label: "bob" },
    );
    check(&hex("0700 000102030405060708090a0b0c0d0e0f 0000"), Frame::Hello { client_id: id, label: "" });
}

#[test]
fn copy_names_its_source_then_its_file() {
    let bytes = hex(&format!("0800 {ABC_MD5} 0100 61 0200 622f"));
    check(&bytes, Frame::Copy { digest: abc_digest(), from: "a", name: "b/" });
}

#[test]
fn copy_with_an_overlong_source_is_skipped_whole() {
    // from_len 0x1001 = 4097 > 4096: both names are read first, so the
    // error covers the whole frame (2 + 16 + 2 + 4097 + 2 + 1).
    let mut bytes = hex(&format!("0800 {ABC_MD5} 0110"));
    bytes.extend(std::iter::repeat_n(b'x', 4097));
    assert_eq!(parse(&bytes), Ok(None));
    bytes.extend(hex("0100 62"));
    let err = parse(&bytes).unwrap_err();
    assert_eq!(err.skippable_len(), Some(bytes.len() as u64));
}

#[test]
fn unknown_type_is_an_error() {
    assert_eq!(parse(&hex("0900 0000")), Err(ParseError::UnknownType(9)));
    assert_eq!(parse(&hex("0000")), Err(ParseError::UnknownType(0)));
    assert_eq!(ParseError::UnknownType(9).skippable_len(), None);
}

#[test]
fn overlong_name_is_rejected_before_it_arrives() {
    // name_len 0x1001 = 4097 > 4096; only the length field is present.
    let bytes = hex("0500 00000000000000000000000000000000 0110");
    let err = parse(&bytes).unwrap_err();
    assert_eq!(err, ParseError::NameTooLong { len: 4097, frame_len: 20 + 4097 });
    assert_eq!(err.skippable_len(), Some(4117));
    // On a chunk the skip length includes the payload.
    let bytes = hex(&format!("0100 {ABC_MD5} 0a000000 0110"));
    assert_eq!(parse_head(&bytes).unwrap_err().skippable_len(), Some(24 + 4097 + 10));
}

#[test]
fn invalid_utf8_name_is_skippable() {
    let bytes = hex("0300 00000000000000000000000000000000 0200 fffe");
    assert_eq!(parse(&bytes), Err(ParseError::NameNotUtf8 { frame_len: 22 }));
}

#[test]
fn two_frames_back_to_back() {
    let bytes = hex("0200 0100 0200 0200");
    let (f1, n1) = parse(&bytes).unwrap().unwrap();
    let (f2, n2) = parse(&bytes[n1..]).unwrap().unwrap();
    assert_eq!((f1, f2), (Frame::Status(StatusCode::OK), Frame::Status(StatusCode::RESEND_CHECKSUM)));
    assert_eq!(n1 + n2, bytes.len());
}
