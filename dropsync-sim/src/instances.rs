//! Several server instances (`--instances N`): what the run shares between
//! them (the database, the bucket, the wall clock) and what it schedules
//! for each, as `dropsync-server` does with `--catalog postgres://...
//! --blobs s3://...`:
//! - the follower (`follower.rs`): each instance catches up with the
//!   others' commits when a notification wakes it (each commit notifies
//!   every instance, its own included, after a random delay, and a
//!   notification may be lost) and at the latest a second after its last
//!   catch-up;
//! - the collector (`pg_gc`): on the follower's turn, every half grace
//!   (at least a second), candidates older than the grace that no line
//!   names leave the bucket. The grace is seconds here, not the hour of
//!   the default, so that collection happens within a run;
//! - which instance a client reaches: one drawn per client at the start,
//!   kept on reconnecting or, sometimes, another (a load balancer in
//!   front), never one that is down.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dropsync_soak::rng::Rng;

use crate::backing::{Backing, SharedBacking};
use crate::bucket::{self, Bucket, WallClock};
use crate::db::{self, Db, SharedDbHandle};

/// The longest a commit made elsewhere waits to be seen by an instance
/// whose notification was lost (`follower::CATCH_UP_EVERY`).
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

/// Percent of reconnections that reach another instance than the last.
const MOVE_PERCENT: u64 = 30;

/// The instances of a run and what they share.
pub struct Instances {
    /// The database.
    pub db: SharedDbHandle,
    /// The bucket.
    pub bucket: Bucket,
    clock: WallClock,
    /// Each instance's own disk is full.
    full: Vec<Arc<Mutex<bool>>>,
    /// Each instance's next catch-up (`None` while it is down).
    follow_at: Vec<Option<Instant>>,
    /// Each instance's next collection.
    collect_at: Vec<Instant>,
    /// The collector's grace.
    pub grace: Duration,
    /// Percent of notifications lost.
    pub lost_percent: u64,
    /// The instance each client reached last.
    pub home: Vec<usize>,
    /// Per instance, the database's commits at its last catch-up (or
    /// start): once it is the database's count, everything committed was
    /// applied and reported for its clients (a refused commit's catch-up
    /// and a conflict copy left by one are reported only by the next).
    followed: Vec<u64>,
}

impl Instances {
    /// `n` instances for `clients` clients, starting at `now`; draws the
    /// grace, the notifications' loss and each client's first instance.
    pub fn new(n: usize, clients: usize, rng: &mut Rng, now: Instant) -> Self {
        let grace = Duration::from_millis(rng.range(1000, 10_000));
        let lost_percent = *rng.pick(&[0, 10, 10, 50, 100]);
        let home = (0..clients).map(|_| rng.index(n)).collect();
        Instances {
            db: Arc::new(Mutex::new(Db::default())),
            bucket: Bucket::default(),
            clock: Arc::new(AtomicI64::new(0)),
            full: (0..n).map(|_| Arc::default()).collect(),
            follow_at: vec![Some(now + CATCH_UP_EVERY); n],
            collect_at: vec![now + Self::collect_every(grace); n],
            grace,
            lost_percent,
            home,
            followed: vec![0; n],
        }
    }

    /// `follower::start`'s schedule: half the grace, 1 s to 10 min.
    fn collect_every(grace: Duration) -> Duration {
        (grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(600))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.full.len()
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        self.full.is_empty()
    }

    /// What instance `k` starts on.
    pub fn backing(&self, k: usize) -> Backing {
        Backing::Shared(SharedBacking {
            db: self.db.clone(),
            bucket: self.bucket.clone(),
            clock: self.clock.clone(),
            full: self.full[k].clone(),
        })
    }

    /// The wall clock moved to `unix_ns`.
    pub fn set_clock(&self, unix_ns: i64) {
        self.clock.store(unix_ns, Ordering::Relaxed);
    }

    /// Instance `k`'s disk is full (or has room again).
    pub fn set_full(&self, k: usize, full: bool) {
        *self.full[k].lock().unwrap_or_else(PoisonError::into_inner) = full;
    }

    /// When instance `k` next catches up.
    pub fn follow_at(&self, k: usize) -> Option<Instant> {
        self.follow_at[k]
    }

    /// Instance `k` went down (`None`) or started (a catch-up a second
    /// later, as the follower's first wait; what it loaded at start is
    /// applied, with nothing to report).
    pub fn set_up(&mut self, k: usize, up_at: Option<Instant>) {
        self.follow_at[k] = up_at.map(|t| t + CATCH_UP_EVERY);
        if up_at.is_some() {
            self.caught_up(k);
        }
    }

    /// Instance `k` caught up (its follower, or a session's pairing).
    pub fn caught_up(&mut self, k: usize) {
        self.followed[k] = db::lock(&self.db).commits();
    }

    /// Whether instance `k` has caught up since the last commit.
    pub fn is_caught_up(&self, k: usize) -> bool {
        self.followed[k] == db::lock(&self.db).commits()
    }

    /// Instance `k` caught up at `now`: the next time, a second later at
    /// the latest. True when its collector's turn has come too.
    pub fn followed(&mut self, k: usize, now: Instant) -> bool {
        self.caught_up(k);
        self.follow_at[k] = Some(now + CATCH_UP_EVERY);
        if self.collect_at[k] > now {
            return false;
        }
        self.collect_at[k] = now + Self::collect_every(self.grace);
        true
    }

    /// A commit's notification reaches each instance that is up (`up`),
    /// each after its own delay, unless lost.
    pub fn notify(&mut self, now: Instant, up: &[bool], rng: &mut Rng) {
        for (k, at) in self.follow_at.iter_mut().enumerate() {
            if !up[k] || rng.chance(self.lost_percent) {
                continue;
            }
            let wake = now + Duration::from_micros(rng.range(100, 30_000));
            *at = Some(at.map_or(wake, |t| t.min(wake)));
        }
    }

    /// Instance `k`'s collector at wall time `now_ns`: how many objects
    /// went.
    pub fn collect(&self, now_ns: i64) -> usize {
        let grace = i64::try_from(self.grace.as_nanos()).unwrap_or(i64::MAX);
        bucket::collect(&self.db, &self.bucket, now_ns, grace)
    }

    /// The instance client `i` reaches now: its last one, or sometimes
    /// another; never one that is down (`up`) while one is up.
    pub fn reach(&mut self, i: usize, up: &[bool], rng: &mut Rng) -> usize {
        let live: Vec<usize> = (0..up.len()).filter(|&k| up[k]).collect();
        let home = self.home[i];
        if !live.is_empty() && (!up[home] || rng.chance(MOVE_PERCENT)) {
            self.home[i] = live[rng.index(live.len())];
        }
        self.home[i]
    }
}
