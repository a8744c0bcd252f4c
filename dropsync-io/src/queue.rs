//! A client's update queue: the paths waiting to be sent to that client.
//!
//! ASSIGNMENT.md: the receiving thread "shall wait on the lock for each other
//! connected client's data structure, and upon obtaining it add an entry into
//! the queue of pending updates, unlocking immediately upon insertion. If a
//! file is already in the update queue, it shall not be added again." and the
//! sending thread dequeues one item at a time and "shall NOT maintain its
//! lock throughout the file transfer process". Here the mutex is private and
//! every method holds it only for one queue operation, so no caller can keep
//! it during a transfer. A queued path is only a name: what is sent is the
//! path's state at dequeue time (PROTOCOL.md section 6).

use std::collections::{HashSet, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What [`UpdateQueue::pop_timeout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Pop {
    /// The oldest queued path, now removed from the queue.
    Item(String),
    /// Nothing arrived within the timeout; the caller may do its periodic
    /// work (a keep-alive, say) and wait again.
    TimedOut,
    /// The queue was closed: the session is ending, stop serving it.
    Closed,
}

/// The FIFO set of paths pending for one client: a path is in it at most
/// once, and it can be closed so that a blocked dequeue returns at shutdown.
///
/// Closing discards what is still queued: a closed queue belongs to a session
/// that is ending, and its client reconciles from META-DATA when it comes
/// back, so nothing queued is lost for good.
#[derive(Debug, Default)]
pub struct UpdateQueue {
    inner: Mutex<Inner>,
    /// Signalled on every push (one waiter) and on close (all waiters).
    changed: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    order: VecDeque<String>,
    /// The same paths as `order`, for the "not added again" check in O(1).
    queued: HashSet<String>,
    closed: bool,
    /// [`UpdateQueue::nudge`] was called: the next wait ends at once.
    nudged: bool,
    /// Threads blocked in `pop_timeout`, so tests can tell a waiter is parked
    /// before they wake it (only tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    waiting: usize,
}

impl UpdateQueue {
    /// An empty, open queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the state. A poisoned mutex is recovered: every update below
    /// keeps `order` and `queued` in step before it can panic.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `path` at the back. False when it is already queued ("it shall
    /// not be added again") or the queue is closed; the caller then has
    /// nothing more to do for this client.
    pub fn push(&self, path: &str) -> bool {
        let mut inner = self.lock();
        if inner.closed || inner.queued.contains(path) {
            return false;
        }
        inner.queued.insert(path.to_owned());
        inner.order.push_back(path.to_owned());
        drop(inner);
        self.changed.notify_one();
        true
    }

    /// Removes and returns the oldest path without waiting; `None` when the
    /// queue is empty or closed.
    pub fn try_pop(&self) -> Option<String> {
        Self::pop_locked(&mut self.lock())
    }

    fn pop_locked(inner: &mut Inner) -> Option<String> {
        let path = inner.order.pop_front()?;
        inner.queued.remove(&path);
        Some(path)
    }

    /// Removes and returns the oldest path, waiting up to `timeout` for one.
    /// [`Self::close`] wakes it at once with [`Pop::Closed`], so a sending
    /// thread blocked here never delays shutdown.
    pub fn pop_timeout(&self, timeout: Duration) -> Pop {
        let mut inner = self.lock();
        inner.waiting += 1;
        let (mut inner, _) = self
            .changed
            .wait_timeout_while(inner, timeout, |i| i.order.is_empty() && !i.closed && !i.nudged)
            .unwrap_or_else(PoisonError::into_inner);
        inner.waiting -= 1;
        inner.nudged = false;
        if inner.closed {
            return Pop::Closed;
        }
        match Self::pop_locked(&mut inner) {
            Some(path) => Pop::Item(path),
            None => Pop::TimedOut,
        }
    }

    /// Ends the current (or next) [`Self::pop_timeout`] at once, with
    /// [`Pop::TimedOut`] if nothing is queued: its thread has other work
    /// than the queue's (a server's dedicated sender, an upload offered to
    /// stream).
    pub fn nudge(&self) {
        self.lock().nudged = true;
        self.changed.notify_all();
    }

    /// Closes the queue: drops what is queued, refuses later pushes and
    /// wakes every thread blocked in [`Self::pop_timeout`].
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.order.clear();
        inner.queued.clear();
        drop(inner);
        self.changed.notify_all();
    }

    /// True once [`Self::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// How many paths are queued; a snapshot, for logs and the scheduler's
    /// "more work" hint.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when no path is queued (a snapshot, like [`Self::len`]).
    pub fn is_empty(&self) -> bool {
        self.lock().order.is_empty()
    }

    /// True when `path` is queued now.
    pub fn contains(&self, path: &str) -> bool {
        self.lock().queued.contains(path)
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting
    }
}

/// Queues `path` for every client in `targets` (PROTOCOL.md section 6: "add
/// F to the update queue of every other connected client"). The caller leaves
/// out the client the change came from. Each queue is locked only for its own
/// push, one after another. Returns how many queues took the path (a queue
/// that already had it, or is closed, does not count).
pub fn fan_out<'a>(path: &str, targets: impl IntoIterator<Item = &'a UpdateQueue>) -> usize {
    targets.into_iter().filter(|queue| queue.push(path)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Long enough never to expire in a passing test; the wake-up, not the
    /// timeout, ends these waits.
    const FOREVER: Duration = Duration::from_secs(30);

    fn wait_until_parked(queue: &UpdateQueue, waiters: usize) {
        while queue.waiting() < waiters {
            std::thread::yield_now();
        }
    }

    #[test]
    fn fifo_without_duplicates() {
        let queue = UpdateQueue::new();
        assert!(queue.push("a"));
        assert!(queue.push("b"));
        assert!(!queue.push("a"), "already queued");
        assert!(queue.push("c"));
        assert_eq!(queue.len(), 3);
        assert!(queue.contains("b"));
        assert_eq!(queue.try_pop().as_deref(), Some("a"));
        assert!(!queue.contains("a"));
        assert!(queue.push("a"), "dequeued, so it may be queued again");
        let drained: Vec<String> = std::iter::from_fn(|| queue.try_pop()).collect();
        assert_eq!(drained, ["b", "c", "a"]);
        assert!(queue.is_empty());
        assert_eq!(queue.try_pop(), None);
    }

    #[test]
    fn pop_times_out_when_empty() {
        let queue = UpdateQueue::new();
        assert_eq!(queue.pop_timeout(Duration::from_millis(5)), Pop::TimedOut);
        assert!(queue.push("a"));
        assert_eq!(queue.pop_timeout(Duration::ZERO), Pop::Item("a".into()));
    }

    #[test]
    fn blocked_pop_is_woken_by_push() {
        let queue = UpdateQueue::new();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| queue.pop_timeout(FOREVER));
            wait_until_parked(&queue, 1);
            assert!(queue.push("x"));
            assert_eq!(waiter.join().expect("no panic"), Pop::Item("x".into()));
        });
    }

    #[test]
    fn close_wakes_every_waiter_and_refuses_pushes() {
        let queue = UpdateQueue::new();
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..3)
                .map(|_| s.spawn(|| queue.pop_timeout(FOREVER)))
                .collect();
            wait_until_parked(&queue, 3);
            queue.close();
            for waiter in waiters {
                assert_eq!(waiter.join().expect("no panic"), Pop::Closed);
            }
        });
        assert!(queue.is_closed());
        assert!(!queue.push("late"));
        assert_eq!(queue.pop_timeout(Duration::ZERO), Pop::Closed);
    }

    #[test]
    fn a_nudge_ends_a_wait_once() {
        let queue = UpdateQueue::new();
        queue.nudge();
        // The nudge given before the wait ends it at once, and only it.
        assert_eq!(queue.pop_timeout(FOREVER), Pop::TimedOut);
        assert_eq!(queue.pop_timeout(Duration::ZERO), Pop::TimedOut);
        let got = std::thread::scope(|s| {
            let waiter = s.spawn(|| queue.pop_timeout(FOREVER));
            while queue.lock().waiting == 0 {
                std::thread::yield_now();
            }
            queue.nudge();
            waiter.join().expect("no panic")
        });
        assert_eq!(got, Pop::TimedOut);
        queue.nudge();
        assert!(queue.push("a"));
        assert_eq!(queue.pop_timeout(FOREVER), Pop::Item("a".into()), "a path queued is still taken");
    }

    #[test]
    fn close_discards_pending_paths() {
        let queue = UpdateQueue::new();
        assert!(queue.push("a"));
        queue.close();
        assert_eq!((queue.len(), queue.contains("a")), (0, false));
        assert_eq!(queue.try_pop(), None);
    }

    #[test]
    fn concurrent_pushes_of_one_path_queue_it_once() {
        let queue = UpdateQueue::new();
        let accepted: usize = std::thread::scope(|s| {
            let pushers: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..1000).filter(|_| queue.push("same")).count()))
                .collect();
            pushers
                .into_iter()
                .map(|p| p.join().expect("no panic"))
                .sum()
        });
        assert_eq!(accepted, 1);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn every_item_pushed_is_popped_exactly_once() {
        let queue = UpdateQueue::new();
        let mut got: Vec<String> = std::thread::scope(|s| {
            let consumers: Vec<_> = (0..3)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        while let Pop::Item(path) = queue.pop_timeout(FOREVER) {
                            mine.push(path);
                        }
                        mine
                    })
                })
                .collect();
            for i in 0..2000 {
                assert!(queue.push(&format!("f{i}")));
            }
            while !queue.is_empty() {
                std::thread::yield_now();
            }
            queue.close();
            consumers
                .into_iter()
                .flat_map(|c| c.join().expect("no panic"))
                .collect()
        });
        got.sort();
        let mut want: Vec<String> = (0..2000).map(|i| format!("f{i}")).collect();
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn fan_out_counts_queues_that_took_it() {
        let queues: Vec<UpdateQueue> = (0..4).map(|_| UpdateQueue::new()).collect();
        assert!(queues[1].push("f"));
        queues[2].close();
        assert_eq!(fan_out("f", &queues), 2);
        assert_eq!(fan_out("f", &queues), 0);
        assert!(queues[0].contains("f") && queues[3].contains("f"));
        assert_eq!(fan_out("g", queues.iter().skip(1)), 2, "origin left out");
        assert!(!queues[0].contains("g"));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u8),
        TryPop,
        PopNow,
        Close,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..8u8).prop_map(Op::Push),
            4 => Just(Op::TryPop),
            2 => Just(Op::PopNow),
            1 => Just(Op::Close),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_a_deduplicating_fifo_model(ops in proptest::collection::vec(op(), 0..100)) {
            let queue = UpdateQueue::new();
            let mut model: VecDeque<String> = VecDeque::new();
            let mut closed = false;
            for op in ops {
                match op {
                    Op::Push(n) => {
                        let path = format!("p{n}");
                        let expected = !closed && !model.contains(&path);
                        if expected {
                            model.push_back(path.clone());
                        }
                        prop_assert_eq!(queue.push(&path), expected);
                    }
                    Op::TryPop => prop_assert_eq!(queue.try_pop(), model.pop_front()),
                    Op::PopNow => {
                        let expected = match (closed, model.pop_front()) {
                            (true, _) => Pop::Closed,
                            (false, Some(path)) => Pop::Item(path),
                            (false, None) => Pop::TimedOut,
                        };
                        prop_assert_eq!(queue.pop_timeout(Duration::ZERO), expected);
                    }
                    Op::Close => {
                        queue.close();
                        closed = true;
                        model.clear();
                    }
                }
                prop_assert_eq!(queue.len(), model.len());
                prop_assert_eq!(queue.is_empty(), model.is_empty());
                for n in 0..8 {
                    let path = format!("p{n}");
                    prop_assert_eq!(queue.contains(&path), model.contains(&path));
                }
            }
        }
    }
}
