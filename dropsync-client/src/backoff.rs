//! Capped exponential backoff between reconnection attempts.

use std::time::Duration;

/// First wait after a lost connection: short, so that a server restart
/// costs the clients well under a second.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(100);

/// Longest wait between attempts, however long the server stays away.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The delays to wait between attempts: doubling from
/// [`INITIAL_BACKOFF`] up to [`MAX_BACKOFF`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: INITIAL_BACKOFF, attempts: 0 }
    }
}

impl Backoff {
    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        self.attempts += 1;
        d
    }

    /// Failed attempts since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Starts over after a connection that worked.
    pub fn reset(&mut self) {
        *self = Backoff::default();
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
}
