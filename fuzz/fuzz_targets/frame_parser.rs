//! Feeds arbitrary bytes to the frame parser as a stream and checks structure:
//! consumption stays within the input, re-encoding is byte-identical, and the
//! header-only parse agrees with the full parse.
#![no_main]

use dropsync_proto::{parse, parse_head, Head};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((frame, used))) = parse(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(frame.to_vec(), &rest[..used]);
        match parse_head(rest) {
            Ok(Some((Head::Frame(f), n))) => assert_eq!((f, n), (frame, used)),
            Ok(Some((Head::Chunk { payload_len, .. }, n))) => {
                assert_eq!(n + payload_len as usize, used)
            }
            other => panic!("parse_head disagrees with parse: {other:?}"),
        }
        rest = &rest[used..];
    }
});
