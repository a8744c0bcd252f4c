//! The database several simulated server instances share (`--instances
//! N`), standing for PostgreSQL as `dropsync-server` uses it
//! (docs/SCALING.md): the tables of `pg_catalog` (the counter, the table
//! of lines, the append-only change log, the history with ids handed out
//! in commit order), the advisory locks of `pg_locks` (held by a database
//! session, gone when it ends), the candidates ledger of `pg_gc`, and
//! the notifications a commit sends.
//!
//! Core's `shared_catalog` runs its commit and catch-up rules over it
//! ([`Conn`] is its `SharedDb`), exactly as over SQL. A transaction here
//! is atomic: the simulation runs one event at a time, so no two
//! transactions interleave, which is what PostgreSQL's row locks give the
//! real one (the counter row's lock serializes commits). A transaction
//! that a kill -9 cut off before its COMMIT is modelled by rolling the
//! last one back ([`Db::roll_back_last`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use dropsync_core::history::Kept;
use dropsync_core::shared_catalog::{CommitTx, SharedDb};
use dropsync_core::CoreError;
use dropsync_proto::metadata::{Entry, EntryState, Strong};

/// A database session: an instance's connections, for as long as that
/// instance runs (its advisory locks go with it).
pub type DbSession = u64;

/// What a committed transaction changed, to roll it back.
#[derive(Debug, Clone)]
struct Undo {
    session: DbSession,
    version: u64,
    path: String,
    previous: Option<Entry>,
    history_rows: usize,
}

/// The tables.
#[derive(Debug, Default)]
pub struct Db {
    counter: u64,
    entries: BTreeMap<String, Entry>,
    changes: Vec<(u64, String)>,
    history: Vec<(i64, Kept)>,
    /// A bigserial: not rolled back with a transaction, as PostgreSQL's
    /// sequences are not.
    next_history_id: i64,
    /// Advisory locks: path → the session holding it.
    advisory: BTreeMap<String, DbSession>,
    next_session: DbSession,
    /// Contents some instance no longer refers to, and since when (ns).
    candidates: BTreeMap<Strong, i64>,
    /// Versions committed since the last [`take_notices`](Self::take_notices).
    notices: Vec<u64>,
    /// Transactions committed so far.
    commits: u64,
    last: Option<Undo>,
}

impl Db {
    /// The counter.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// How many transactions were committed so far (rolled-back ones too).
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// The table of lines.
    pub fn entries(&self) -> &BTreeMap<String, Entry> {
        &self.entries
    }

    /// Every history row.
    pub fn history(&self) -> impl Iterator<Item = &Kept> {
        self.history.iter().map(|(_, k)| k)
    }

    /// Whether a line of the table (a live file) or of the history (a file
    /// version) names `key`: the collector's test.
    pub fn names(&self, key: &Strong) -> bool {
        let live = self.entries.values().any(|e| e.state == EntryState::File && e.strong == Some(*key));
        live || self.history().any(|k| k.is_file() && k.entry.strong == Some(*key))
    }

    /// Retention: `DELETE FROM dropsync_history WHERE replaced_ns < cutoff`.
    pub fn expire(&mut self, cutoff_ns: i64) {
        self.history.retain(|(_, k)| k.replaced_ns >= cutoff_ns);
        self.last = None;
    }

    /// A new session (an instance starting).
    pub fn open_session(&mut self) -> DbSession {
        self.next_session += 1;
        self.next_session
    }

    /// The session ended (its instance died): its advisory locks go, as
    /// PostgreSQL drops a closed connection's.
    pub fn end_session(&mut self, session: DbSession) {
        self.advisory.retain(|_, s| *s != session);
    }

    /// `pg_try_advisory_lock`: false if another session holds `path`.
    pub fn try_advisory(&mut self, path: &str, session: DbSession) -> bool {
        match self.advisory.get(path) {
            Some(_) => false,
            None => {
                self.advisory.insert(path.to_owned(), session);
                true
            }
        }
    }

    /// `pg_advisory_unlock`.
    pub fn unlock_advisory(&mut self, path: &str, session: DbSession) {
        if self.advisory.get(path) == Some(&session) {
            self.advisory.remove(path);
        }
    }

    /// Advisory locks held now.
    pub fn advisory_held(&self) -> usize {
        self.advisory.len()
    }

    /// `pg_gc::candidate`.
    pub fn add_candidate(&mut self, key: Strong, since_ns: i64) {
        self.candidates.insert(key, since_ns);
    }

    /// `pg_gc::claim`.
    pub fn claim(&mut self, key: &Strong) {
        self.candidates.remove(key);
    }

    /// The candidates.
    pub fn candidates(&self) -> &BTreeMap<Strong, i64> {
        &self.candidates
    }

    /// `pg_gc::collect`: each candidate older than `cutoff_ns` goes from
    /// the ledger, and is returned when no line names it (its object is to
    /// be deleted, which the caller does while the ledger is still held).
    pub fn collect(&mut self, cutoff_ns: i64) -> Vec<Strong> {
        let due: Vec<Strong> = self.candidates.iter().filter(|(_, &t)| t <= cutoff_ns).map(|(k, _)| *k).collect();
        let mut gone = Vec::new();
        for key in due {
            if !self.names(&key) {
                gone.push(key);
            }
            self.candidates.remove(&key);
        }
        gone
    }

    /// The versions committed since the last call (each one NOTIFY).
    pub fn take_notices(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.notices)
    }

    /// The last transaction, if it was `session`'s commit of `version`,
    /// never happened (kill -9 before its COMMIT): the tables are put back.
    /// Returns the line it had written; `None` (nothing undone) if the
    /// last transaction was another.
    pub fn roll_back_last(&mut self, session: DbSession, version: u64) -> Option<Entry> {
        let u = self.last.take_if(|u| u.session == session && u.version == version)?;
        self.counter = u.version - 1;
        self.changes.pop();
        self.history.truncate(u.history_rows);
        let written = match u.previous {
            Some(p) => self.entries.insert(u.path, p),
            None => self.entries.remove(&u.path),
        };
        self.notices.retain(|v| *v != u.version);
        written
    }
}

/// The database, shared by every instance.
pub type SharedDbHandle = Arc<Mutex<Db>>;

/// Locks the database (a poisoned lock is still consistent: the
/// simulation is one thread).
pub fn lock(db: &Mutex<Db>) -> MutexGuard<'_, Db> {
    db.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One instance's connection, as core's `SharedDb`.
pub struct Conn<'a> {
    /// The database.
    pub db: &'a Mutex<Db>,
    /// The instance's session.
    pub session: DbSession,
}

/// A commit's transaction: its writes apply at COMMIT.
pub struct Tx<'a> {
    db: &'a Mutex<Db>,
    session: DbSession,
    version: Option<u64>,
    writes: Option<(Option<Kept>, Entry)>,
}

impl CommitTx for Tx<'_> {
    fn lock_row(&mut self, path: &str) -> Result<Option<u64>, CoreError> {
        Ok(lock(self.db).entries.get(path).map(|e| e.version))
    }

    fn next_version(&mut self) -> Result<u64, CoreError> {
        let v = lock(self.db).counter + 1;
        self.version = Some(v);
        Ok(v)
    }

    fn write(&mut self, replaced: Option<&Kept>, entry: &Entry) -> Result<(), CoreError> {
        self.writes = Some((replaced.cloned(), entry.clone()));
        Ok(())
    }

    fn commit(self) -> Result<(), CoreError> {
        let (Some(version), Some((replaced, entry))) = (self.version, self.writes) else {
            return Err(CoreError::Io(std::io::Error::other("a commit with nothing written")));
        };
        let mut db = lock(self.db);
        let history_rows = db.history.len();
        if let Some(k) = replaced {
            db.next_history_id += 1;
            let id = db.next_history_id;
            db.history.push((id, k));
        }
        db.counter = version;
        db.changes.push((version, entry.path.clone()));
        let previous = db.entries.insert(entry.path.clone(), entry.clone());
        db.notices.push(version);
        db.commits += 1;
        db.last = Some(Undo { session: self.session, version, path: entry.path, previous, history_rows });
        Ok(())
    }
}

impl SharedDb for Conn<'_> {
    type Tx<'a>
        = Tx<'a>
    where
        Self: 'a;

    fn begin(&mut self) -> Result<Tx<'_>, CoreError> {
        Ok(Tx { db: self.db, session: self.session, version: None, writes: None })
    }

    fn load(&mut self) -> Result<(u64, Vec<Entry>), CoreError> {
        let db = lock(self.db);
        Ok((db.counter, db.entries.values().cloned().collect()))
    }

    fn changes_since(&mut self, cursor: u64) -> Result<Vec<(u64, Entry)>, CoreError> {
        let db = lock(self.db);
        let after = db.changes.partition_point(|(v, _)| *v <= cursor);
        Ok(db.changes[after..].iter().filter_map(|(v, p)| db.entries.get(p).map(|e| (*v, e.clone()))).collect())
    }

    fn history_since(&mut self, id: i64) -> Result<Vec<(i64, Kept)>, CoreError> {
        let db = lock(self.db);
        let after = db.history.partition_point(|(i, _)| *i <= id);
        Ok(db.history[after..].to_vec())
    }
}
