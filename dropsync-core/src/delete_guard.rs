//! The delete guard (issue 17): a client that sees many of its files go at
//! once — an `rm -rf folder/*`, an unmounted disk under a folder that
//! still exists, a tool gone wrong — does not send those deletes. It holds
//! them, says so, and waits for the user: confirm them (they then go out),
//! or restore the files (from the server, which still has them). The
//! folder-vanished check of the client stays in front of this.
//!
//! "At once" is one burst of deletes judged together plus those sent in
//! the last [`WINDOW`]; "many" is at least `min` and at least half of the
//! files in sync. Once the guard holds deletes, every further delete is held
//! too until the user decides: a second `rm` does not slip through.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// Deletes sent within this long count together with a new burst.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The default least number of deletes that can trip the guard.
pub const DEFAULT_MIN: usize = 10;

/// What becomes of a burst of deletes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Burst {
    /// Send these.
    pub send: Vec<String>,
    /// These are held (newly; the guard reports the whole held set).
    pub held: Vec<String>,
    /// This burst is what tripped the guard.
    pub tripped: bool,
}

/// The guard of one client.
#[derive(Debug)]
pub struct DeleteGuard {
    /// Least number of deletes that trips it; `None`: turned off.
    min: Option<usize>,
    /// When recent deletes were sent.
    sent: VecDeque<Instant>,
    held: BTreeSet<String>,
    /// Held deletes the user confirmed: they go out when judged again.
    confirmed: HashSet<String>,
}

impl DeleteGuard {
    /// A guard that trips at `min` deletes and half the files; `None`
    /// turns it off.
    pub fn new(min: Option<usize>) -> Self {
        DeleteGuard { min, sent: VecDeque::new(), held: BTreeSet::new(), confirmed: HashSet::new() }
    }

    /// Judges the deletes `names` found together at `now`, out of `files`
    /// files in sync (with a base; those being deleted included).
    pub fn judge(&mut self, names: Vec<String>, files: usize, now: Instant) -> Burst {
        let mut burst = Burst::default();
        let (confirmed, names): (Vec<String>, Vec<String>) = names.into_iter().partition(|n| self.confirmed.remove(n));
        burst.send = confirmed;
        let Some(min) = self.min else {
            burst.send.extend(names);
            return burst;
        };
        while self.sent.front().is_some_and(|&t| now.saturating_duration_since(t) > WINDOW) {
            self.sent.pop_front();
        }
        let together = self.sent.len() + names.len();
        let many = together >= min && together * 2 >= files;
        if !self.held.is_empty() || (many && !names.is_empty()) {
            burst.tripped = self.held.is_empty();
            for n in names {
                if self.held.insert(n.clone()) {
                    burst.held.push(n);
                }
            }
            return burst;
        }
        self.sent.extend(std::iter::repeat_n(now, names.len()));
        burst.send.extend(names);
        burst
    }

    /// The deletes held now.
    pub fn held(&self) -> &BTreeSet<String> {
        &self.held
    }

    /// `name` is no longer a delete to hold: its file is back (restored,
    /// or written again), or the server deleted it too.
    pub fn settled(&mut self, name: &str) {
        self.held.remove(name);
    }

    /// The user confirmed the held deletes: they are returned, to be judged
    /// again, and go out then.
    pub fn confirm(&mut self) -> Vec<String> {
        let names: Vec<String> = std::mem::take(&mut self.held).into_iter().collect();
        self.confirmed.extend(names.iter().cloned());
        self.sent.clear();
        names
    }

    /// The user chose to restore the held deletes' files: they are
    /// returned, to be requested from the server.
    pub fn restore(&mut self) -> Vec<String> {
        self.sent.clear();
        std::mem::take(&mut self.held).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|i| format!("f{i}")).collect()
    }

    fn t0() -> Instant {
        // Any instant will do as the start of virtual time.
        dropsync_io::clock::now()
    }

    #[test]
    fn a_client_that_sees_half_its_files_go_at_once_holds_every_one_of_those_deletes() {
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        let b = g.judge(names(0..100), 100, t0());
        assert!(b.tripped && b.send.is_empty());
        assert_eq!(b.held.len(), 100);
        assert_eq!(g.held().len(), 100);
    }

    #[test]
    fn a_few_deletes_go_out() {
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        assert_eq!(g.judge(names(0..9), 10, t0()).send.len(), 9, "fewer than the least number");
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        assert_eq!(g.judge(names(0..40), 100, t0()).send.len(), 40, "fewer than half");
    }

    #[test]
    fn bursts_within_the_window_count_together_and_a_held_guard_holds_the_next_ones() {
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        let now = t0();
        assert_eq!(g.judge(names(0..30), 100, now).send.len(), 30);
        let b = g.judge(names(30..60), 100, now + Duration::from_secs(5));
        assert!(b.tripped && b.send.is_empty() && b.held.len() == 30);
        let b = g.judge(names(60..61), 100, now + Duration::from_secs(6));
        assert!(!b.tripped && b.held == vec!["f60".to_owned()], "still held: a second rm does not slip through");
        // Far apart, bursts do not add up.
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        assert_eq!(g.judge(names(0..30), 100, now).send.len(), 30);
        assert_eq!(g.judge(names(30..60), 100, now + WINDOW + Duration::from_secs(1)).send.len(), 30);
    }

    #[test]
    fn confirmed_deletes_go_out_when_judged_again() {
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        g.judge(names(0..20), 20, t0());
        let again = g.confirm();
        assert_eq!(again.len(), 20);
        let b = g.judge(again, 20, t0());
        assert_eq!((b.send.len(), b.held.len()), (20, 0));
    }

    #[test]
    fn restored_files_are_no_longer_held() {
        let mut g = DeleteGuard::new(Some(DEFAULT_MIN));
        g.judge(names(0..20), 20, t0());
        g.settled("f3");
        assert_eq!(g.held().len(), 19);
        assert_eq!(g.restore().len(), 19);
        assert!(g.held().is_empty());
        // Back to normal: a single delete goes out.
        assert_eq!(g.judge(names(0..1), 20, t0()).send.len(), 1);
    }

    #[test]
    fn turned_off_it_sends_everything() {
        let mut g = DeleteGuard::new(None);
        assert_eq!(g.judge(names(0..100), 100, t0()).send.len(), 100);
    }
}
