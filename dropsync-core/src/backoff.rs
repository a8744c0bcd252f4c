//! Capped exponential backoff: between reconnection attempts, and between
//! tries of a change the server could not take (0x0080).

use std::time::Duration;

/// First wait after a lost connection: short, so that a server restart
/// costs the clients well under a second.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between attempts, however long the server stays away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The delays to wait between attempts: doubling from a first delay up to a
/// cap ([`INITIAL_BACKOFF`] and [`MAX_BACKOFF`] by default, for reconnecting).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

impl Backoff {
    /// Delays from `first`, doubling, up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff { first, max, next: first, attempts: 0 }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.attempts += 1;
        d
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        *self = Backoff::new(self.first, self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert_eq!(b.attempts(), 9);
        b.reset();
        assert_eq!(b.next_delay(), INITIAL_BACKOFF);
    }

    #[test]
    fn other_bounds_double_the_same_way() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
        let delays: Vec<u128> = (0..9).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }
}
