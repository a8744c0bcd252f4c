//! Arbitrary bytes as a key file (`identity.pem` of a server or a client):
//! an error or an identity, never a panic.
#![no_main]

use dropsync_io::tls::Identity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Identity::parse(data);
});
