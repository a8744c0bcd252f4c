//! Arbitrary bytes as the opening of a TLS connection to the server: the
//! server's TLS configuration (TLS 1.3 only, its client-key gate) never
//! panics, whatever a peer sends before it is admitted.
#![no_main]

use std::sync::{Arc, OnceLock};

use dropsync_io::tls::{Identity, ServerTls};
use libfuzzer_sys::fuzz_target;

fn server() -> &'static ServerTls {
    static TLS: OnceLock<ServerTls> = OnceLock::new();
    TLS.get_or_init(|| {
        let identity = Identity::create().expect("a key");
        ServerTls::new(&identity, Arc::new(|key| key.0[0] % 2 == 0)).expect("a configuration")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = server().feed_handshake(data);
});
