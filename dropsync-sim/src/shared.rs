//! One simulated instance's side of the shared database: its catalog (core's
//! `SharedView` over the database of [`crate::db`], as `dropsync-server`'s
//! `PgCatalog` is the same view over SQL) and its lock table (modelled on
//! `pg_locks`: a lock is taken in the instance's own table, then as an
//! advisory lock of its database session, which ends when the instance
//! dies).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dropsync_core::history::{self, Kept};
use dropsync_core::locks::{LockTable, SessionId};
use dropsync_core::meta_server::{Catalog, Change, ServerMeta};
use dropsync_core::path_rules::PathConflict;
use dropsync_core::shared_catalog::SharedView;
use dropsync_core::CoreError;
use dropsync_proto::metadata::{Entry, Strong};

use crate::db::{self, Conn, DbSession, SharedDbHandle};

/// Locks `m` (a poisoned lock is still consistent: the simulation is one
/// thread).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An instance's view of the shared catalog, which the checks read too.
pub type View = Arc<Mutex<SharedView>>;

/// What the run reaches into an instance for: its view and database
/// session (the checks, a kill -9 in a commit) and its lock table (a
/// broken lock connection).
#[derive(Clone)]
pub struct Handles {
    /// The catalog's view.
    pub view: View,
    /// The catalog's database session.
    pub session: DbSession,
    /// The lock table.
    pub locks: Arc<SharedLocks>,
}

/// An instance's catalog: core's shared-catalog rules over the simulated
/// database, on the instance's session.
pub struct SharedCatalog {
    db: SharedDbHandle,
    session: DbSession,
    view: View,
}

impl SharedCatalog {
    /// The view of what the database holds now, for an instance starting
    /// with `session`.
    pub fn open(db: SharedDbHandle, session: DbSession) -> Result<Self, CoreError> {
        let view = SharedView::open(&mut Conn { db: &db, session })?;
        Ok(SharedCatalog { db, session, view: Arc::new(Mutex::new(view)) })
    }

    /// The view, for the checks.
    pub fn view(&self) -> View {
        self.view.clone()
    }

    fn conn(&self) -> Conn<'_> {
        Conn { db: &self.db, session: self.session }
    }
}

impl Catalog for SharedCatalog {
    fn get(&self, path: &str) -> Option<Entry> {
        lock(&self.view).get(path)
    }
    fn commit(&self, path: &str, change: Change) -> Result<Entry, CoreError> {
        lock(&self.view).commit(&mut self.conn(), path, change)
    }
    fn snapshot_skipping(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> (String, u64) {
        lock(&self.view).snapshot(since, skip)
    }
    fn history(&self, path: &str) -> Vec<Kept> {
        lock(&self.view).history(path)
    }
    fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry> {
        lock(&self.view).live_at(prefix, t_ns)
    }
    fn expire(&self, cutoff_ns: i64) -> Result<Vec<Kept>, CoreError> {
        db::lock(&self.db).expire(cutoff_ns);
        Ok(lock(&self.view).expire(cutoff_ns))
    }
    fn contents(&self) -> Vec<Strong> {
        lock(&self.view).contents()
    }
    fn history_size(&self) -> history::Size {
        lock(&self.view).history_size()
    }
    fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        lock(&self.view).path_conflict(path, case_twins)
    }
    fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        lock(&self.view).budget_cutoff(budget)
    }
    fn len(&self) -> usize {
        lock(&self.view).table().len()
    }
    fn walk_table(&self, f: &mut dyn FnMut(&ServerMeta)) {
        f(lock(&self.view).table())
    }
    fn follow(&self) -> Result<Vec<Entry>, CoreError> {
        lock(&self.view).follow(&mut self.conn())
    }
    fn shared(&self) -> bool {
        true
    }
}

/// An instance's lock table: its own locks, each also an advisory lock of
/// the database session of its lock connection (`pg_locks::PgLockTable`).
pub struct SharedLocks {
    db: SharedDbHandle,
    session: Mutex<DbSession>,
    held: Mutex<BTreeMap<String, SessionId>>,
}

impl SharedLocks {
    /// The lock table of an instance starting: its lock connection is a
    /// session of its own.
    pub fn new(db: SharedDbHandle) -> Self {
        let session = db::lock(&db).open_session();
        SharedLocks { db, session: Mutex::new(session), held: Mutex::new(BTreeMap::new()) }
    }

    /// The lock connection broke: the database drops its advisory locks,
    /// while this table still holds them (`pg_locks` logs "the locks it
    /// held are gone"), and the next lock makes a new connection. Two
    /// uploads of one path may then overlap on two instances; the
    /// compare-and-set of the commit is what refuses the second.
    pub fn break_connection(&self) {
        let mut session = lock(&self.session);
        let mut db = db::lock(&self.db);
        db.end_session(*session);
        *session = db.open_session();
    }

    /// The lock connection ends with its instance.
    pub fn end(&self) {
        db::lock(&self.db).end_session(*lock(&self.session));
    }
}

impl LockTable for SharedLocks {
    fn try_lock(&self, path: &str, owner: SessionId) -> bool {
        let mut held = lock(&self.held);
        if held.contains_key(path) {
            return false;
        }
        let taken = db::lock(&self.db).try_advisory(path, *lock(&self.session));
        if taken {
            held.insert(path.to_owned(), owner);
        }
        taken
    }

    fn release(&self, path: &str, owner: SessionId) -> bool {
        let mut held = lock(&self.held);
        if held.get(path) != Some(&owner) {
            return false;
        }
        held.remove(path);
        db::lock(&self.db).unlock_advisory(path, *lock(&self.session));
        true
    }

    fn release_all(&self, owner: SessionId) -> usize {
        let paths: Vec<String> =
            lock(&self.held).iter().filter(|(_, o)| **o == owner).map(|(p, _)| p.clone()).collect();
        paths.iter().filter(|p| self.release(p, owner)).count()
    }

    fn holder(&self, path: &str) -> Option<SessionId> {
        lock(&self.held).get(path).copied()
    }

    fn held(&self) -> usize {
        lock(&self.held).len()
    }
}
