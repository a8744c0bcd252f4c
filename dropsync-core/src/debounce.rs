//! Debouncing of file-change notifications (PROTOCOL.md section 7: "wait
//! until a file has been quiet briefly, then upload or DELETE it"): a path
//! is handed out once it has been quiet (no new event) for the debounce
//! delay, so a file being written is uploaded once, after its last write.
//! Time comes in as arguments.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Paths waiting to become quiet.
#[derive(Debug)]
pub struct Debouncer<K> {
    quiet: Duration,
    /// Each pending key and the time of its latest event.
    last_event: HashMap<K, Instant>,
    /// Pending keys last written by a writer that has not closed them.
    open: HashSet<K>,
}

impl<K: Eq + Hash + Clone> Debouncer<K> {
    /// A debouncer that waits for `quiet` without events.
    pub fn new(quiet: Duration) -> Self {
        Debouncer { quiet, last_event: HashMap::new(), open: HashSet::new() }
    }

    /// Notes an event for `key` at `now`, restarting its quiet period.
    pub fn touch(&mut self, key: K, now: Instant) {
        let t = self.last_event.entry(key).or_insert(now);
        *t = (*t).max(now);
    }

    /// Notes a write to `key` at `now` by a writer that has not closed it
    /// yet: due once quiet for `quiet_open` (at least the usual quiet
    /// time), unless its close comes first ([`due_now`](Self::due_now)).
    /// A writer that pauses mid-file (a copy on a busy machine) then does
    /// not have half a file sent.
    pub fn touch_open(&mut self, key: K, now: Instant, quiet_open: Duration) {
        let at = now + quiet_open.saturating_sub(self.quiet);
        self.open.insert(key.clone());
        let t = self.last_event.entry(key).or_insert(at);
        *t = (*t).max(at);
    }

    /// Notes `key` as already quiet: it is due at once (for changes found
    /// by a rescan, which have no event to wait out).
    pub fn touch_due(&mut self, key: K, now: Instant) {
        let due = now.checked_sub(self.quiet).unwrap_or(now);
        self.last_event.entry(key).or_insert(due);
    }

    /// Makes `key` due at once, whatever came before (a file closed after
    /// writing: its writer is done with it).
    pub fn due_now(&mut self, key: K, now: Instant) {
        let due = now.checked_sub(self.quiet).unwrap_or(now);
        self.open.remove(&key);
        self.last_event.insert(key, due);
    }

    /// Like [`take_due`](Self::take_due), each key with whether its writer
    /// had not closed it: quiet as the events go, but a writer inside one
    /// long system call (a `cp` of a large file through
    /// `copy_file_range`) makes no event until it is done, so the caller
    /// looks at such a file before it sends it.
    pub fn take_due_marked(&mut self, now: Instant) -> Vec<(K, bool)> {
        let mut due: Vec<(Instant, K)> = self
            .last_event
            .iter()
            .filter(|(_, &t)| now.saturating_duration_since(t) >= self.quiet)
            .map(|(k, &t)| (t, k.clone()))
            .collect();
        due.sort_by_key(|(t, _)| *t);
        due.into_iter()
            .map(|(_, k)| {
                self.last_event.remove(&k);
                let open = self.open.remove(&k);
                (k, open)
            })
            .collect()
    }

    /// Removes and returns every key quiet for the delay at `now`, oldest
    /// event first (see [`take_due_marked`](Self::take_due_marked)).
    pub fn take_due(&mut self, now: Instant) -> Vec<K> {
        self.take_due_marked(now).into_iter().map(|(k, _)| k).collect()
    }

    /// When the next key becomes due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.last_event.values().min().map(|&t| t + self.quiet)
    }

    /// True when nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.last_event.is_empty()
    }

    /// Keys pending.
    pub fn len(&self) -> usize {
        self.last_event.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Duration = Duration::from_millis(50);

    #[test]
    fn a_key_written_and_not_closed_is_handed_out_marked_open() {
        let t0 = dropsync_io::clock::now();
        let mut d = Debouncer::new(Q);
        d.touch_open("open", t0, 2 * Q);
        d.touch_open("closed", t0, 2 * Q);
        d.due_now("closed", t0);
        d.touch("changed", t0);
        let mut due = d.take_due_marked(t0 + 3 * Q);
        due.sort();
        assert_eq!(due, [("changed", false), ("closed", false), ("open", true)]);
        assert!(d.open.is_empty() && d.is_empty());
        // Written again after it was handed out: open again.
        d.touch_open("open", t0, Q);
        d.touch("open", t0 + Q);
        assert_eq!(d.take_due_marked(t0 + 3 * Q), [("open", true)]);
    }

    #[test]
    fn a_key_is_due_only_after_a_quiet_period() {
        let t0 = dropsync_io::clock::now();
        let mut d = Debouncer::new(Q);
        d.touch("a", t0);
        assert_eq!(d.next_due(), Some(t0 + Q));
        assert!(d.take_due(t0 + Q / 2).is_empty());
        // A new event restarts the wait.
        d.touch("a", t0 + Q / 2);
        assert!(d.take_due(t0 + Q).is_empty());
        assert_eq!(d.next_due(), Some(t0 + Q / 2 + Q));
        assert_eq!(d.take_due(t0 + Q / 2 + Q), ["a"]);
        assert!(d.is_empty());
        assert_eq!(d.next_due(), None);
    }

    #[test]
    fn an_older_event_never_moves_the_wait_back() {
        let t0 = dropsync_io::clock::now();
        let mut d = Debouncer::new(Q);
        d.touch("a", t0 + Q);
        d.touch("a", t0);
        assert!(d.take_due(t0 + Q).is_empty());
    }

    #[test]
    fn due_keys_come_out_oldest_first_and_once() {
        let t0 = dropsync_io::clock::now();
        let mut d = Debouncer::new(Q);
        d.touch("late", t0 + Duration::from_millis(10));
        d.touch("early", t0);
        d.touch("busy", t0);
        d.touch("busy", t0 + Q);
        assert_eq!(d.take_due(t0 + Q * 3 / 2), ["early", "late"]);
        assert_eq!(d.len(), 1);
        assert!(d.take_due(t0 + Q * 3 / 2).is_empty());
        assert_eq!(d.take_due(t0 + Q * 2), ["busy"]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_file_still_open_for_writing_waits_longer_unless_it_is_closed() {
        let t0 = dropsync_io::clock::now() + Q;
        let mut d = Debouncer::new(Q);
        d.touch_open("open", t0, Q * 10);
        d.touch("other", t0);
        assert_eq!(d.take_due(t0 + Q), ["other"]);
        assert!(d.take_due(t0 + Q * 9).is_empty(), "still open: its writer may go on");
        assert_eq!(d.next_due(), Some(t0 + Q * 10));
        // A plain event afterwards does not cut the longer wait short.
        d.touch("open", t0 + Q);
        assert!(d.take_due(t0 + Q * 9).is_empty());
        assert_eq!(d.take_due(t0 + Q * 10), ["open"]);
        d.touch_open("closed", t0, Q * 10);
        d.due_now("closed", t0 + Q);
        assert_eq!(d.take_due(t0 + Q), ["closed"], "closed: done at once");
    }

    #[test]
    fn rescan_finds_are_due_at_once_but_do_not_cut_an_event_short() {
        let t0 = dropsync_io::clock::now() + Q;
        let mut d = Debouncer::new(Q);
        d.touch_due("found", t0);
        assert_eq!(d.take_due(t0), ["found"]);
        d.touch("written", t0);
        d.touch_due("written", t0);
        assert!(d.take_due(t0).is_empty(), "the pending event still waits");
    }

    #[test]
    fn a_file_closed_after_writing_is_due_at_once_and_a_later_write_waits_again() {
        let t0 = dropsync_io::clock::now() + Q;
        let mut d = Debouncer::new(Q);
        d.touch("f", t0);
        d.due_now("f", t0);
        assert_eq!(d.take_due(t0), ["f"], "closed: no quiet time to wait");
        d.due_now("g", t0);
        d.touch("g", t0);
        assert!(d.take_due(t0).is_empty(), "written again after the close: quiet time again");
    }
}
