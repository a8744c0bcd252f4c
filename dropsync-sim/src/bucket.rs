//! The bucket several simulated instances share (`--instances N`), and each
//! instance's content store over it, modelled on `dropsync-server`'s
//! `blobs.rs` with a remote and `pg_gc` (docs/SCALING.md, "Garbage
//! collection across instances"):
//! - an upload's content is put in the bucket before the commit that names
//!   it, after taking it off the candidates (the claim), whether this
//!   instance stored it already or not;
//! - each instance counts the lines it has seen that refer to a content; a
//!   content whose count falls to zero becomes a candidate, with the time;
//! - a collector ([`collect`]) deletes the object of a candidate older than
//!   the grace only when no line of the table or the history names it.
//!
//! The instance's local cache of the bucket is not modelled: contents are
//! read from the bucket itself, so a content wrongly collected is seen at
//! once, not hidden by a cached copy.

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dropsync_core::library::BlobStore;
use dropsync_proto::metadata::Strong;

use crate::blobs::{MemBlobs, SimTemp};
use crate::db::{self, SharedDbHandle};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The objects: content key → bytes.
pub type Bucket = Arc<Mutex<BTreeMap<Strong, Arc<Vec<u8>>>>>;

/// The wall clock of the run (ns since the epoch), which the World moves:
/// candidates are recorded with it, as the real store records
/// `clock::now_ns()`.
pub type WallClock = Arc<AtomicI64>;

/// One instance's content store.
pub struct BucketBlobs {
    bucket: Bucket,
    db: SharedDbHandle,
    clock: WallClock,
    /// Lines this instance has seen that name each content.
    refs: Mutex<BTreeMap<Strong, u64>>,
    open: Arc<Mutex<usize>>,
    /// The instance's own disk (temps are written there) is full.
    full: Arc<Mutex<bool>>,
}

impl BucketBlobs {
    /// The store of an instance starting: its counts are the catalog's to
    /// set ([`add_ref`](BlobStore::add_ref) per reference); `full` is its
    /// disk's switch.
    pub fn new(bucket: Bucket, db: SharedDbHandle, clock: WallClock, full: Arc<Mutex<bool>>) -> Self {
        BucketBlobs { bucket, db, clock, refs: Mutex::new(BTreeMap::new()), open: Arc::default(), full }
    }

    /// The bytes of `key`, if the bucket has them.
    pub fn get(&self, key: &Strong) -> Option<Arc<Vec<u8>>> {
        lock(&self.bucket).get(key).cloned()
    }

    /// Temps of uploads under way.
    pub fn temps_open(&self) -> usize {
        *lock(&self.open)
    }

    /// Before a commit relies on `key`: off the candidates, then in the
    /// bucket (put if it is not: a collector may have deleted it).
    fn rely_on(&self, key: Strong, bytes: &[u8]) {
        db::lock(&self.db).claim(&key);
        lock(&self.bucket).entry(key).or_insert_with(|| Arc::new(bytes.to_vec()));
    }
}

impl BlobStore for BucketBlobs {
    type Temp = SimTemp;
    type Reader = Arc<Vec<u8>>;

    fn temp(&self) -> io::Result<SimTemp> {
        if *lock(&self.full) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device (simulated)"));
        }
        Ok(SimTemp::new(self.open.clone()))
    }

    fn open(&self, key: &Strong) -> io::Result<Arc<Vec<u8>>> {
        self.get(key).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such object in the bucket"))
    }

    fn strong_of(&self, temp: &SimTemp) -> Strong {
        MemBlobs::strong(temp.bytes())
    }

    fn install(&self, temp: SimTemp) -> io::Result<Strong> {
        let key = MemBlobs::strong(temp.bytes());
        self.rely_on(key, temp.bytes());
        Ok(key)
    }

    fn add_ref(&self, key: &Strong) {
        *lock(&self.refs).entry(*key).or_insert(0) += 1;
    }

    fn drop_ref(&self, key: &Strong) {
        let mut refs = lock(&self.refs);
        let Some(n) = refs.get_mut(key) else { return };
        *n -= 1;
        if *n == 0 {
            refs.remove(key);
            db::lock(&self.db).add_candidate(*key, self.clock.load(Ordering::Relaxed));
        }
    }
}

/// One run of an instance's collector at `now_ns`: candidates older than
/// `grace_ns` that no line names leave the ledger and the bucket. Returns
/// how many objects went.
pub fn collect(db: &SharedDbHandle, bucket: &Bucket, now_ns: i64, grace_ns: i64) -> usize {
    let mut ledger = db::lock(db);
    let gone = ledger.collect(now_ns.saturating_sub(grace_ns));
    let mut objects = lock(bucket);
    for key in &gone {
        objects.remove(key);
    }
    gone.len()
}
