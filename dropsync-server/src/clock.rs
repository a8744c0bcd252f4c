//! Wall-clock time for META-DATA mtimes and conflict-copy dates (the core
//! takes time as arguments; the binary is where the clock is read).

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

