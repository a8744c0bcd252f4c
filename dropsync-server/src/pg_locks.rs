//! Per-file write locks across server instances (issue 18;
//! docs/SCALING.md): each lock this instance takes is also a session-level
//! advisory lock on one dedicated PostgreSQL connection, keyed by a 64-bit
//! hash of the path. Another instance's try-lock of the path then fails
//! (0x0040), and PostgreSQL releases them all when the holding instance's
//! connection ends: an instance killed mid-upload holds nothing.
//!
//! The database is asked only when this instance's own table lets the lock
//! be taken. If the connection breaks, a try-lock fails (the client gets
//! 0x0040 and tries again) until it is made again; locks taken before are
//! gone with it, which the catalog's compare-and-set covers: of two uploads
//! of one path on two instances, the second commit finds the row changed
//! and is refused.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use dropsync_core::locks::{LockTable, SessionId};
use postgres::Client;

/// The locks this instance holds, and its lock connection.
pub struct PgLockTable {
    url: String,
    inner: Mutex<Inner>,
}

struct Inner {
    held: HashMap<String, SessionId>,
    db: Option<Client>,
}

/// The advisory lock key of `path`: the first 8 bytes of its SHA-256, the
/// same on every instance, build and run. Two paths with one key would only
/// refuse each other (0x0040, tried again), never share a lock.
fn key(path: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(path.as_bytes());
    i64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

impl PgLockTable {
    /// A lock table whose locks also hold in the database at `url`.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), inner: Mutex::new(Inner { held: HashMap::new(), db: None }) }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    /// The lock connection, made (again) if needed; `None` when it cannot be.
    fn db(&mut self, url: &str) -> Option<&mut Client> {
        if self.db.as_ref().is_none_or(Client::is_closed) {
            if self.db.is_some() {
                log::warn!("PostgreSQL: the lock connection broke; the locks it held are gone");
            }
            self.db = crate::pg_catalog::connect(url)
                .map_err(|e| log::warn!("PostgreSQL: no lock connection ({e}); uploads are refused until there is"))
                .ok();
        }
        self.db.as_mut()
    }
}

impl LockTable for PgLockTable {
    fn try_lock(&self, path: &str, owner: SessionId) -> bool {
        let mut inner = self.inner();
        if inner.held.contains_key(path) {
            return false;
        }
        let Some(db) = inner.db(&self.url) else { return false };
        let taken = db
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key(path)])
            .map(|row| row.get::<_, bool>(0))
            .unwrap_or_else(|e| {
                log::warn!("PostgreSQL: try-lock of {path:?} failed: {e}");
                false
            });
        if taken {
            inner.held.insert(path.to_owned(), owner);
        }
        taken
    }

    fn release(&self, path: &str, owner: SessionId) -> bool {
        let mut inner = self.inner();
        if inner.held.get(path) != Some(&owner) {
            return false;
        }
        inner.held.remove(path);
        if let Some(db) = inner.db.as_mut().filter(|c| !c.is_closed()) {
            if let Err(e) = db.execute("SELECT pg_advisory_unlock($1)", &[&key(path)]) {
                log::warn!("PostgreSQL: unlock of {path:?} failed: {e}");
            }
        }
        true
    }

    fn release_all(&self, owner: SessionId) -> usize {
        let paths: Vec<String> =
            self.inner().held.iter().filter(|(_, o)| **o == owner).map(|(p, _)| p.clone()).collect();
        paths.iter().filter(|p| self.release(p, owner)).count()
    }

    fn holder(&self, path: &str) -> Option<SessionId> {
        self.inner().held.get(path).copied()
    }

    fn held(&self) -> usize {
        self.inner().held.len()
    }
}
