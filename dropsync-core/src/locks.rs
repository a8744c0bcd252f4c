//! Per-path write locks with a non-blocking try-lock (PROTOCOL.md sections 4
//! and 6).
//!
//! "The first message naming F opens the transfer. On the server this takes
//! F's write lock without waiting (try-lock). If another transfer or delete
//! holds it: STATUS 0x0040." Nobody ever waits for a lock here, so the table
//! cannot deadlock: every call takes at most one shard mutex, briefly.
//!
//! A lock is owned by a session, not by a thread: the transfer that took it
//! may finish on any thread, and when a session goes away
//! [`LockTable::release_all`] frees whatever it still held (section 9: "The
//! server releases a departed client's locks").

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// Identifies the session that owns a lock. The server gives each paired
/// session a fresh one, so a lock can never be released by a later session
/// that happens to reuse a connection.
pub type SessionId = u64;

/// The server's file lock table, as a trait so that a later backend (for
/// example one shared between several server processes) can replace the
/// in-memory one without touching the transfer code.
pub trait LockTable: Send + Sync {
    /// Takes `path`'s write lock for `owner` if nobody holds it, without
    /// waiting. False when it is held, even by `owner` itself: a second
    /// transfer of the same file from the same client is refused like any
    /// other (STATUS 0x0040).
    fn try_lock(&self, path: &str, owner: SessionId) -> bool;

    /// Releases `path` if `owner` holds it; true if it did. A non-owner
    /// releases nothing, so a stale release (after [`Self::release_all`] and
    /// a new holder) can never free someone else's lock.
    fn release(&self, path: &str, owner: SessionId) -> bool;

    /// Releases every lock `owner` holds, because its session is gone.
    /// Returns how many it released.
    fn release_all(&self, owner: SessionId) -> usize;

    /// Who holds `path` now, if anyone. Only a snapshot: for logs, tests and
    /// REQUEST's "F locked (being written): 0x0080" check.
    fn holder(&self, path: &str) -> Option<SessionId>;

    /// How many locks are held now. Only a snapshot, for the server's
    /// metrics.
    fn held(&self) -> usize;
}

/// Number of shards of [`MemLockTable`]. More shards than server worker
/// threads keep transfers of different files from contending on one mutex;
/// a power of two keeps the shard choice a cheap mask.
pub const LOCK_SHARDS: usize = 32;

/// The in-memory [`LockTable`]: [`LOCK_SHARDS`] mutex-protected maps from
/// path to holder, the shard chosen by a hash of the path, so that locking
/// different files rarely touches the same mutex.
#[derive(Debug)]
pub struct MemLockTable {
    shards: Box<[Mutex<HashMap<String, SessionId>>]>,
    hasher: RandomState,
}

impl MemLockTable {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            shards: (0..LOCK_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard that holds `path`, locked. A poisoned shard is still
    /// consistent (every update is a single map operation), so it is used.
    fn shard(&self, path: &str) -> MutexGuard<'_, HashMap<String, SessionId>> {
        let index = (self.hasher.hash_one(path) as usize) & (LOCK_SHARDS - 1);
        lock_map(&self.shards[index])
    }
}

impl Default for MemLockTable {
    fn default() -> Self {
        Self::new()
    }
}

/// Locks a shard, recovering from poison: see [`MemLockTable::shard`].
fn lock_map(
    shard: &Mutex<HashMap<String, SessionId>>,
) -> MutexGuard<'_, HashMap<String, SessionId>> {
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl LockTable for MemLockTable {
    fn try_lock(&self, path: &str, owner: SessionId) -> bool {
        let mut shard = self.shard(path);
        if shard.contains_key(path) {
            return false;
        }
        shard.insert(path.to_owned(), owner);
        true
    }

    fn release(&self, path: &str, owner: SessionId) -> bool {
        // Two lookups rather than `entry`, which would allocate the key.
        let mut shard = self.shard(path);
        let owned = shard.get(path) == Some(&owner);
        if owned {
            shard.remove(path);
        }
        owned
    }

    fn release_all(&self, owner: SessionId) -> usize {
        // One shard at a time, never two at once: no lock-order to get wrong.
        self.shards
            .iter()
            .map(|shard| {
                let mut map = lock_map(shard);
                let before = map.len();
                map.retain(|_, holder| *holder != owner);
                before - map.len()
            })
            .sum()
    }

    fn holder(&self, path: &str) -> Option<SessionId> {
        self.shard(path).get(path).copied()
    }

    /// One shard at a time, so the sum may be a moment stale; no shard is
    /// held while another is taken.
    fn held(&self) -> usize {
        self.shards.iter().map(|shard| lock_map(shard).len()).sum()
    }
}

/// A held lock that is released when dropped, so that no error path (an
/// early return, a `?`, a panic) can leak it. Borrows its table; see
/// [`OwnedLockGuard`] for one that can be stored in a transfer's state.
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard<'a> {
    table: &'a dyn LockTable,
    path: String,
    owner: SessionId,
}

/// Takes `path`'s lock for `owner` without waiting, as a guard that releases
/// it on drop. `None` when the path is held (reply STATUS 0x0040).
pub fn try_lock_guard<'a>(
    table: &'a dyn LockTable,
    path: &str,
    owner: SessionId,
) -> Option<LockGuard<'a>> {
    table.try_lock(path, owner).then(|| LockGuard {
        table,
        path: path.to_owned(),
        owner,
    })
}

impl LockGuard<'_> {
    /// The locked path, so the holder need not keep a second copy.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The session the lock belongs to.
    pub fn owner(&self) -> SessionId {
        self.owner
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        // False after release_all: then there is nothing left to free.
        self.table.release(&self.path, self.owner);
    }
}

impl std::fmt::Debug for LockGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("path", &self.path)
            .field("owner", &self.owner)
            .finish()
    }
}

/// Like [`LockGuard`], but it owns a handle on the table, so it is `'static`
/// and `Send`: a transfer's state can hold it for as long as the transfer
/// lasts, on whichever thread finishes it.
#[must_use = "dropping the guard releases the lock at once"]
pub struct OwnedLockGuard {
    table: Arc<dyn LockTable>,
    path: String,
    owner: SessionId,
}

/// Takes `path`'s lock for `owner` without waiting, as an [`OwnedLockGuard`].
/// `None` when the path is held (reply STATUS 0x0040).
pub fn try_lock_owned(
    table: &Arc<dyn LockTable>,
    path: &str,
    owner: SessionId,
) -> Option<OwnedLockGuard> {
    table.try_lock(path, owner).then(|| OwnedLockGuard {
        table: Arc::clone(table),
        path: path.to_owned(),
        owner,
    })
}

impl OwnedLockGuard {
    /// The locked path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The session the lock belongs to.
    pub fn owner(&self) -> SessionId {
        self.owner
    }
}

impl Drop for OwnedLockGuard {
    fn drop(&mut self) {
        self.table.release(&self.path, self.owner);
    }
}

impl std::fmt::Debug for OwnedLockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnedLockGuard")
            .field("path", &self.path)
            .field("owner", &self.owner)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn held_path_refuses_everyone_until_released() {
        let table = MemLockTable::new();
        assert!(table.try_lock("a", 1));
        assert_eq!(table.holder("a"), Some(1));
        assert!(!table.try_lock("a", 2), "another owner");
        assert!(!table.try_lock("a", 1), "the same owner again");
        assert!(table.try_lock("b", 2), "another path is independent");
        assert_eq!(table.held(), 2);
        assert!(table.release("a", 1));
        assert_eq!(table.holder("a"), None);
        assert!(!table.release("a", 1), "already released");
        assert!(table.try_lock("a", 2));
        assert_eq!(table.holder("a"), Some(2));
    }

    #[test]
    fn non_owner_release_changes_nothing() {
        let table = MemLockTable::new();
        assert!(table.try_lock("a", 1));
        assert!(!table.release("a", 2));
        assert!(!table.release("unheld", 2));
        assert_eq!(table.holder("a"), Some(1));
        assert_eq!(table.holder("unheld"), None);
    }

    #[test]
    fn release_all_frees_only_that_owner() {
        let table = MemLockTable::new();
        let paths: Vec<String> = (0..100).map(|i| format!("dir/{i}")).collect();
        for (i, path) in paths.iter().enumerate() {
            assert!(table.try_lock(path, (i % 3) as SessionId));
        }
        assert_eq!(table.release_all(1), 33);
        assert_eq!(table.release_all(1), 0);
        for (i, path) in paths.iter().enumerate() {
            let expected = (i % 3 != 1).then_some((i % 3) as SessionId);
            assert_eq!(table.holder(path), expected, "{path}");
        }
    }

    #[test]
    fn guard_releases_on_drop_and_on_error_paths() {
        let table = MemLockTable::new();
        {
            let guard = try_lock_guard(&table, "a", 7).expect("free");
            assert_eq!((guard.path(), guard.owner()), ("a", 7));
            assert!(try_lock_guard(&table, "a", 8).is_none());
        }
        assert_eq!(table.holder("a"), None);

        fn fails_midway(table: &dyn LockTable) -> Result<(), &'static str> {
            let _guard = try_lock_guard(table, "b", 1).ok_or("locked")?;
            Err("disk full")
        }
        assert_eq!(fails_midway(&table), Err("disk full"));
        assert_eq!(table.holder("b"), None, "the error path released it");
    }

    #[test]
    fn stale_guard_never_frees_a_new_holder() {
        let table: Arc<dyn LockTable> = Arc::new(MemLockTable::new());
        let guard = try_lock_owned(&table, "a", 1).expect("free");
        assert_eq!(table.release_all(1), 1, "session 1 is gone");
        assert!(table.try_lock("a", 2));
        drop(guard);
        assert_eq!(table.holder("a"), Some(2));
    }


    #[derive(Debug, Clone)]
    enum Op {
        TryLock(usize, SessionId),
        Release(usize, SessionId),
        ReleaseAll(SessionId),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..6usize, 0..4u64).prop_map(|(p, o)| Op::TryLock(p, o)),
            2 => (0..6usize, 0..4u64).prop_map(|(p, o)| Op::Release(p, o)),
            1 => (0..4u64).prop_map(Op::ReleaseAll),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_a_hash_map_model(ops in proptest::collection::vec(op(), 0..200)) {
            let table = MemLockTable::new();
            let mut model: HashMap<String, SessionId> = HashMap::new();
            for op in ops {
                match op {
                    Op::TryLock(p, owner) => {
                        let path = format!("f{p}");
                        let expected = !model.contains_key(&path);
                        if expected {
                            model.insert(path.clone(), owner);
                        }
                        prop_assert_eq!(table.try_lock(&path, owner), expected);
                    }
                    Op::Release(p, owner) => {
                        let path = format!("f{p}");
                        let expected = model.get(&path) == Some(&owner);
                        if expected {
                            model.remove(&path);
                        }
                        prop_assert_eq!(table.release(&path, owner), expected);
                    }
                    Op::ReleaseAll(owner) => {
                        let before = model.len();
                        model.retain(|_, holder| *holder != owner);
                        prop_assert_eq!(table.release_all(owner), before - model.len());
                    }
                }
                for p in 0..6 {
                    let path = format!("f{p}");
                    prop_assert_eq!(table.holder(&path), model.get(&path).copied());
                }
            }
        }
    }
}
