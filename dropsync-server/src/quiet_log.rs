//! Log lines that a peer can cause by the thousand (refused connections,
//! accept errors while descriptors run out) are rate-limited: one line per
//! interval, with the count of those left out, so that a flood costs a few
//! lines, not gigabytes of log.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per this interval per kind of event.
const INTERVAL: Duration = Duration::from_secs(5);

/// One kind of event's rate limit.
#[derive(Debug, Default)]
pub struct QuietLog {
    state: Mutex<(Option<Instant>, u64)>,
}

impl QuietLog {
    /// A limit that lets the first line through.
    pub const fn new() -> Self {
        QuietLog { state: Mutex::new((None, 0)) }
    }

    /// `Some(n)` when a line may be written now, `n` being how many were
    /// left out since the last one; `None` to stay quiet (counted).
    pub fn allow(&self, now: Instant) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match st.0 {
            Some(last) if now.saturating_duration_since(last) < INTERVAL => {
                st.1 += 1;
                None
            }
            _ => {
                let skipped = std::mem::take(&mut st.1);
                st.0 = Some(now);
                Some(skipped)
            }
        }
    }
}

/// " (N more like it)" for a rate-limited line, or nothing.
pub fn more(skipped: u64) -> String {
    if skipped == 0 {
        String::new()
    } else {
        format!(" ({skipped} more like it since the last such line)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_left_out() {
        let q = QuietLog::new();
        let t0 = Instant::now();
        assert_eq!(q.allow(t0), Some(0));
        assert_eq!(q.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(q.allow(t0 + Duration::from_secs(2)), None);
        assert_eq!(q.allow(t0 + INTERVAL), Some(2));
        assert_eq!(more(2), " (2 more like it since the last such line)");
        assert_eq!(more(0), "");
    }
}
