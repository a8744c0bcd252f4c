//! Arbitrary text to the META-DATA parser: no panic, and whatever parses
//! renders and parses back to the same document.
#![no_main]

use dropsync_proto::metadata::{parse_document, render_document};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(doc) = parse_document(text) {
        let again = parse_document(&render_document(&doc)).expect("rendered text parses");
        assert_eq!(again, doc);
    }
});
