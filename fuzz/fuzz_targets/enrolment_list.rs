//! Arbitrary text to the enrolment list and fingerprint parsers (secure
//! mode's `<root>/meta/clients`): no panic, and whatever parses renders and
//! parses back to the same list (or fingerprint).
#![no_main]

use dropsync_core::access::{Enrolled, Fingerprint};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(list) = Enrolled::parse(text) {
        let again = Enrolled::parse(&list.render()).expect("a rendered list parses");
        assert_eq!(again, list);
    }
    if let Some(fp) = Fingerprint::parse(text) {
        assert_eq!(Fingerprint::parse(&fp.to_string()), Some(fp));
    }
});
