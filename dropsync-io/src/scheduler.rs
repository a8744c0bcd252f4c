//! The FIFO work queue of the server's worker pool (ASSIGNMENT.md extra
//! credit: "a work queue to keep track of pending requests and to issue them
//! to workers in FIFO order").
//!
//! A job is "prepare client K's next delivery" (the server's `workers.rs`).
//! One job per client at a time, so a client is in one of three states here: idle, queued (waiting for a
//! worker, at most once in the queue) or being served (by exactly one
//! worker). A client that still has work after its job goes to the back of
//! the queue, so clients are served round-robin and one busy client cannot
//! starve the others.
//!
//! The protocol between producers and workers, which makes a lost wake-up
//! impossible:
//! - a producer first pushes to the client's update queue, then calls
//!   [`WorkQueue::schedule`];
//! - a worker takes K, pops at most one path from K's update queue, serves
//!   it, then calls [`WorkQueue::done`] with `more = !update_queue.is_empty()`.
//!
//! If the worker sees an empty update queue, then a producer pushes and
//! schedules K before `done`, the schedule finds K being served and marks it
//! to run again, so `done(K, false)` still puts K back in the queue. A job
//! may therefore find nothing to do; that is harmless, a missed path is not.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// What [`WorkQueue::take_timeout`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Take<K> {
    /// Serve this client now, then call [`WorkQueue::done`] for it.
    Job(K),
    /// No job arrived in time; the worker may check for shutdown and wait
    /// again.
    TimedOut,
    /// The queue was closed: the worker should exit.
    Closed,
}

/// Where one client is in the scheduler. Absent from the map means idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In `order`, waiting for a worker.
    Queued,
    /// A worker holds it. `again`: a schedule arrived meanwhile, so it must
    /// run once more. `forgotten`: the client left; drop it when done.
    Running { again: bool, forgotten: bool },
}

#[derive(Debug)]
struct Inner<K> {
    /// Queued clients, oldest first; exactly the keys whose state is Queued.
    order: VecDeque<K>,
    state: HashMap<K, State>,
    closed: bool,
    /// Threads blocked in a take, so tests can tell a worker is parked before
    /// they wake it (only tests read it).
    #[cfg_attr(not(test), allow(dead_code))]
    waiting: usize,
}

/// The worker pool's FIFO of clients with work, at most one job per client
/// queued or running at a time. `K` is whatever names a client's session.
///
/// Closing is shutdown: [`Self::take`] returns `None` at once, even if jobs
/// were still queued, because every session is ending anyway (its client
/// reconciles from META-DATA when it comes back).
#[derive(Debug)]
pub struct WorkQueue<K: Eq + Hash + Clone> {
    inner: Mutex<Inner<K>>,
    /// Signalled when a job is queued (one worker) and on close (all).
    ready: Condvar,
}

impl<K: Eq + Hash + Clone> WorkQueue<K> {
    /// An empty, open work queue.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                order: VecDeque::new(),
                state: HashMap::new(),
                closed: false,
                waiting: 0,
            }),
            ready: Condvar::new(),
        }
    }

    /// Locks the state. A poisoned mutex is recovered: each method updates
    /// `order` and `state` together with no panic point in between.
    fn lock(&self) -> MutexGuard<'_, Inner<K>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Says that client `k` has work (call it after pushing to its update
    /// queue). An idle `k` goes to the back of the queue; a `k` being served
    /// is marked to run again when its job is done. True if this call added
    /// work; false if `k` was already queued or marked, was forgotten while
    /// being served, or the queue is closed.
    pub fn schedule(&self, k: K) -> bool {
        let mut inner = self.lock();
        if inner.closed {
            return false;
        }
        match inner.state.get_mut(&k) {
            None => {
                inner.state.insert(k.clone(), State::Queued);
                inner.order.push_back(k);
                drop(inner);
                self.ready.notify_one();
                true
            }
            Some(State::Running {
                again,
                forgotten: false,
            }) if !*again => {
                *again = true;
                true
            }
            Some(_) => false,
        }
    }

    /// The oldest queued client, now marked as being served, waiting as long
    /// as it takes. `None` once the queue is closed.
    pub fn take(&self) -> Option<K> {
        let mut inner = self.lock();
        inner.waiting += 1;
        let mut inner = self
            .ready
            .wait_while(inner, nothing_to_take)
            .unwrap_or_else(PoisonError::into_inner);
        inner.waiting -= 1;
        Self::take_locked(inner).ok()
    }

    /// Like [`Self::take`], but gives up after `timeout`, so a worker can
    /// look at other things (a shutdown flag, say) between jobs.
    pub fn take_timeout(&self, timeout: Duration) -> Take<K> {
        let mut inner = self.lock();
        inner.waiting += 1;
        let (mut inner, _) = self
            .ready
            .wait_timeout_while(inner, timeout, nothing_to_take)
            .unwrap_or_else(PoisonError::into_inner);
        inner.waiting -= 1;
        match Self::take_locked(inner) {
            Ok(k) => Take::Job(k),
            Err(true) => Take::Closed,
            Err(false) => Take::TimedOut,
        }
    }

    /// Hands out the front client, or says why not: `Err(true)` closed,
    /// `Err(false)` nothing queued.
    fn take_locked(mut inner: MutexGuard<'_, Inner<K>>) -> Result<K, bool> {
        if inner.closed {
            return Err(true);
        }
        let k = inner.order.pop_front().ok_or(false)?;
        inner.state.insert(
            k.clone(),
            State::Running {
                again: false,
                forgotten: false,
            },
        );
        Ok(k)
    }

    /// Client `k` finished one job. If `more` (its update queue was not
    /// empty) or a [`Self::schedule`] arrived during the job, `k` goes to the
    /// back of the queue; otherwise it becomes idle. Ignored for a `k` that
    /// is not being served.
    pub fn done(&self, k: &K, more: bool) {
        let mut inner = self.lock();
        let Some(State::Running { again, forgotten }) = inner.state.get(k).copied() else {
            return;
        };
        if (more || again) && !forgotten && !inner.closed {
            inner.state.insert(k.clone(), State::Queued);
            inner.order.push_back(k.clone());
            drop(inner);
            self.ready.notify_one();
        } else {
            inner.state.remove(k);
        }
    }

    /// Client `k` is gone: drop it from the queue. If a worker is serving it
    /// now, it is not queued again when that job is done, and schedules for
    /// it are refused until then. Give each session a fresh key: a schedule
    /// after that is taken as new work.
    pub fn forget(&self, k: &K) {
        let mut inner = self.lock();
        match inner.state.get_mut(k) {
            None => {}
            Some(State::Queued) => {
                inner.state.remove(k);
                inner.order.retain(|queued| queued != k);
            }
            Some(State::Running { forgotten, .. }) => *forgotten = true,
        }
    }

    /// Shuts the pool down: drops every queued job, refuses new ones and
    /// wakes every waiting worker, whose take returns `None`/`Closed`. Jobs
    /// being served finish normally; their `done` queues nothing.
    pub fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.order.clear();
        inner.state.retain(|_, state| *state != State::Queued);
        drop(inner);
        self.ready.notify_all();
    }

    /// True once [`Self::close`] has been called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// How many clients wait for a worker; a snapshot, for logs.
    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    /// True when no client waits for a worker (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.lock().order.is_empty()
    }

    /// True when `k` is queued or being served: a snapshot, for logs.
    pub fn contains(&self, k: &K) -> bool {
        self.lock().state.contains_key(k)
    }

    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting
    }
}

/// The condition a worker waits out: no job queued and not closed.
fn nothing_to_take<K>(inner: &mut Inner<K>) -> bool {
    inner.order.is_empty() && !inner.closed
}

impl<K: Eq + Hash + Clone> Default for WorkQueue<K> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::UpdateQueue;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    fn wait_until_parked(work: &WorkQueue<u32>, waiters: usize) {
        while work.waiting() < waiters {
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_client_is_queued_at_most_once() {
        let work = WorkQueue::new();
        assert!(work.schedule(1));
        assert!(!work.schedule(1), "already queued");
        assert!(work.schedule(2));
        assert_eq!(work.len(), 2);
        assert_eq!(work.take(), Some(1));
        assert!(work.contains(&1), "being served");
        assert!(work.schedule(1), "marked to run again");
        assert!(!work.schedule(1), "already marked");
        assert_eq!(work.len(), 1, "but not queued while being served");
        work.done(&1, false);
        assert_eq!(work.take(), Some(2));
        assert_eq!(work.take(), Some(1), "ran again after 2");
        work.done(&1, false);
        work.done(&2, false);
        assert!(!work.contains(&1) && !work.contains(&2) && work.is_empty());
        work.done(&1, true);
        assert!(work.is_empty(), "done for an idle client is ignored");
    }

    #[test]
    fn schedule_during_an_empty_job_is_not_lost() {
        let updates = UpdateQueue::new();
        let work = WorkQueue::new();
        assert!(updates.push("a"));
        assert!(work.schedule(7));
        assert_eq!(work.take(), Some(7));
        assert_eq!(updates.try_pop().as_deref(), Some("a"));
        let more = !updates.is_empty(); // the worker decides: nothing more
        assert!(!more);
        // Before the worker reports, a producer queues a path for client 7.
        assert!(updates.push("b"));
        assert!(work.schedule(7));
        work.done(&7, more);
        assert_eq!(
            work.take_timeout(Duration::ZERO),
            Take::Job(7),
            "requeued despite more=false"
        );
        assert_eq!(updates.try_pop().as_deref(), Some("b"));
        work.done(&7, !updates.is_empty());
        assert!(!work.contains(&7));
    }

    #[test]
    fn busy_client_is_served_round_robin() {
        let work = WorkQueue::new();
        let mut jobs: HashMap<char, usize> = HashMap::from([('a', 5), ('b', 2), ('c', 1)]);
        for k in ['a', 'b', 'c'] {
            assert!(work.schedule(k));
        }
        let mut served = String::new();
        while let Take::Job(k) = work.take_timeout(Duration::ZERO) {
            served.push(k);
            let left = jobs.get_mut(&k).expect("known client");
            *left -= 1;
            work.done(&k, *left > 0);
        }
        assert_eq!(served, "abcabaaa");
    }

    #[test]
    fn forget_drops_queued_and_running_clients() {
        let work = WorkQueue::new();
        for k in [1, 2, 3] {
            assert!(work.schedule(k));
        }
        work.forget(&2);
        assert_eq!(work.take(), Some(1));
        work.forget(&1);
        assert!(!work.schedule(1), "forgotten while being served");
        work.done(&1, true);
        assert!(!work.contains(&1), "not requeued");
        assert_eq!(work.take_timeout(Duration::ZERO), Take::Job(3));
        assert_eq!(work.take_timeout(Duration::ZERO), Take::TimedOut);
        work.forget(&9); // unknown: nothing happens
    }

    #[test]
    fn close_wakes_every_worker_and_drops_jobs() {
        let work = WorkQueue::new();
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..3).map(|_| s.spawn(|| work.take())).collect();
            let timed = s.spawn(|| work.take_timeout(Duration::from_secs(30)));
            wait_until_parked(&work, 4);
            work.close();
            for worker in workers {
                assert_eq!(worker.join().expect("no panic"), None);
            }
            assert_eq!(timed.join().expect("no panic"), Take::Closed);
        });
        assert!(work.is_closed());
        assert!(!work.schedule(1));
        assert_eq!(work.take(), None);
    }

    #[test]
    fn close_lets_running_jobs_finish_without_requeue() {
        let work = WorkQueue::new();
        assert!(work.schedule(1) && work.schedule(2));
        assert_eq!(work.take(), Some(1));
        work.close();
        assert!(!work.contains(&2), "queued job dropped");
        work.done(&1, true);
        assert!(!work.contains(&1));
        assert_eq!(work.take_timeout(Duration::ZERO), Take::Closed);
    }

    #[test]
    fn blocked_worker_is_woken_by_schedule() {
        let work = WorkQueue::new();
        std::thread::scope(|s| {
            let worker = s.spawn(|| work.take());
            wait_until_parked(&work, 1);
            assert!(work.schedule(5));
            assert_eq!(worker.join().expect("no panic"), Some(5));
        });
    }

    #[test]
    fn workers_serve_every_item_once_and_each_client_serially() {
        const WORKERS: usize = 4;
        const CLIENTS: usize = 6;
        const PRODUCERS: usize = 3;
        const ITEMS_PER_PRODUCER: usize = 600;
        const TOTAL: usize = PRODUCERS * ITEMS_PER_PRODUCER;
        let work: WorkQueue<usize> = WorkQueue::new();
        let updates: Vec<UpdateQueue> = (0..CLIENTS).map(|_| UpdateQueue::new()).collect();
        let busy: Vec<AtomicBool> = (0..CLIENTS).map(|_| AtomicBool::new(false)).collect();
        let served_count = AtomicUsize::new(0);
        let served = Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..WORKERS {
                s.spawn(|| {
                    while let Some(k) = work.take() {
                        assert!(
                            !busy[k].swap(true, Ordering::SeqCst),
                            "client {k} served twice at once"
                        );
                        if let Some(path) = updates[k].try_pop() {
                            served.lock().expect("not poisoned").push(path);
                            if served_count.fetch_add(1, Ordering::SeqCst) + 1 == TOTAL {
                                work.close();
                            }
                        }
                        busy[k].store(false, Ordering::SeqCst);
                        work.done(&k, !updates[k].is_empty());
                    }
                });
            }
            for p in 0..PRODUCERS {
                let (work, updates) = (&work, &updates);
                s.spawn(move || {
                    for i in 0..ITEMS_PER_PRODUCER {
                        let k = (i * 7 + p) % CLIENTS;
                        assert!(updates[k].push(&format!("{p}/{i}")));
                        work.schedule(k);
                    }
                });
            }
        });
        let mut served = served.into_inner().expect("not poisoned");
        served.sort();
        let mut want: Vec<String> = (0..PRODUCERS)
            .flat_map(|p| (0..ITEMS_PER_PRODUCER).map(move |i| format!("{p}/{i}")))
            .collect();
        want.sort();
        assert_eq!(served, want);
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Schedule(u8),
            Take,
            Done(u8, bool),
            Forget(u8),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (0..4u8).prop_map(Op::Schedule),
                3 => Just(Op::Take),
                3 => (0..4u8, any::<bool>()).prop_map(|(k, more)| Op::Done(k, more)),
                1 => (0..4u8).prop_map(Op::Forget),
            ]
        }

        proptest! {
            /// Never two jobs for one client, and every schedule made while
            /// a client is idle or being served leads to a later job.
            #[test]
            fn schedules_are_never_lost_or_doubled(ops in proptest::collection::vec(op(), 0..120)) {
                let work: WorkQueue<u8> = WorkQueue::new();
                let mut running: Vec<u8> = Vec::new();
                // Clients owed a job that has not started yet.
                let mut owed: Vec<u8> = Vec::new();
                for op in ops {
                    match op {
                        Op::Schedule(k) => {
                            work.schedule(k);
                            if !owed.contains(&k) {
                                owed.push(k);
                            }
                        }
                        Op::Take => match work.take_timeout(Duration::ZERO) {
                            Take::Job(k) => {
                                prop_assert!(!running.contains(&k), "two jobs for {}", k);
                                running.push(k);
                                owed.retain(|&o| o != k);
                            }
                            other => prop_assert_eq!(other, Take::TimedOut),
                        },
                        Op::Done(k, more) => {
                            if let Some(i) = running.iter().position(|&r| r == k) {
                                running.swap_remove(i);
                                work.done(&k, more);
                                if more && !owed.contains(&k) {
                                    owed.push(k);
                                }
                            }
                        }
                        Op::Forget(k) => {
                            work.forget(&k);
                            owed.retain(|&o| o != k);
                            if running.contains(&k) {
                                // Its schedules are refused until done.
                                running.retain(|&r| r != k);
                                work.done(&k, false);
                            }
                        }
                    }
                }
                // Drain: every owed client comes out, each once.
                for k in running {
                    work.done(&k, false);
                }
                let mut drained = Vec::new();
                while let Take::Job(k) = work.take_timeout(Duration::ZERO) {
                    prop_assert!(!drained.contains(&k));
                    drained.push(k);
                }
                for k in owed {
                    prop_assert!(drained.contains(&k), "lost the job of {}", k);
                }
            }
        }
    }
}
