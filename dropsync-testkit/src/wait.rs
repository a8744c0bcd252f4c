//! Polling with a deadline: the only way tests wait for something.

use std::time::{Duration, Instant};

/// How long a test waits for an expected state before it fails.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// Polls `cond` every few milliseconds until it is true (returns true) or
/// `deadline` passes (returns false).
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::park_timeout(Duration::from_millis(10));
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let mut out = None;
    let ok = wait_until(deadline, || {
        out = f();
        out.is_some()
    });
    match out {
        Some(v) if ok => v,
        _ => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}
