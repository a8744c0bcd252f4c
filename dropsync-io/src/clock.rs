//! The clock. `dropsync-core` never reads it (its `clippy.toml` forbids
//! `Instant::now`); the drivers read it and pass the time in, and the core's
//! tests take their virtual epoch from here.

use std::time::Instant;

/// Now, on the monotonic clock.
pub fn now() -> Instant {
    Instant::now()
}
