//! A catalog that several server instances share (issue 18;
//! docs/SCALING.md), without the database itself: each instance's view in
//! memory ([`SharedView`]), and the commit and catch-up rules over any
//! database that offers the few statements they need ([`SharedDb`],
//! [`CommitTx`]).
//!
//! They live here, not beside the SQL, so that one copy of them runs in
//! both places that need them: `dropsync-server`'s catalog on PostgreSQL
//! runs them over SQL, and the simulator (`dropsync-sim --instances N`)
//! over its in-memory database, so what the simulator finds about commits
//! across instances holds for the real catalog.
//!
//! The rules:
//! - reads are served from the view: the table and the history are core's
//!   own structures, loaded at start and kept up to date;
//! - a commit is one transaction. The path's row is locked and its version
//!   compared with the one this view holds (compare-and-set): another
//!   instance committed first, so this view catches up and the commit is
//!   refused (the client tries again, judged against the new line). The
//!   next version comes from one counter whose lock is held until the
//!   commit, so versions are handed out in commit order, strictly
//!   increasing, whatever instance commits. Only once the transaction is
//!   committed is the line applied to the view (section 6: persist before
//!   0x0001);
//! - catching up reads the change log after the view's cursor, in version
//!   order, each row with its path's current line, and the history rows
//!   after the view's own cursor into them. What a refused commit caught up
//!   on waits for the next [`SharedView::follow`], which returns it first:
//!   the cursor has moved past it, so the follower would never read it
//!   again, and it must reach this instance's clients all the same.

use dropsync_proto::metadata::{Entry, EntryState, Strong};

use crate::history::{self, History, Kept};
use crate::meta_server::{Change, ServerMeta};
use crate::path_rules::PathConflict;
use crate::CoreError;

/// One commit's transaction on the shared database. Dropped without
/// [`commit`](Self::commit), it is rolled back.
pub trait CommitTx {
    /// The version the database holds for `path` (`None`: no row), the row
    /// locked until the transaction ends.
    fn lock_row(&mut self, path: &str) -> Result<Option<u64>, CoreError>;
    /// The next value of the server-wide counter, its row locked until the
    /// transaction ends.
    fn next_version(&mut self) -> Result<u64, CoreError>;
    /// Writes the line `entry` replaces into the history (if any), `entry`
    /// into the table and `(version, path)` into the change log, and wakes
    /// the other instances once committed.
    fn write(&mut self, replaced: Option<&Kept>, entry: &Entry) -> Result<(), CoreError>;
    /// Commits: durable once this returns `Ok`.
    fn commit(self) -> Result<(), CoreError>;
}

/// The statements the shared catalog needs of its database.
pub trait SharedDb {
    /// A commit's transaction.
    type Tx<'a>: CommitTx
    where
        Self: 'a;
    /// Starts a commit's transaction.
    fn begin(&mut self) -> Result<Self::Tx<'_>, CoreError>;
    /// The counter's value and every line of the table (at start).
    fn load(&mut self) -> Result<(u64, Vec<Entry>), CoreError>;
    /// The change log after `cursor`, in version order, each row with its
    /// path's line as the table holds it now (a path changed twice since
    /// comes twice, with its newest line both times).
    fn changes_since(&mut self, cursor: u64) -> Result<Vec<(u64, Entry)>, CoreError>;
    /// The history rows after `id`, in id order, each with its id. Ids are
    /// handed out while the counter's lock is held, so in commit order.
    fn history_since(&mut self, id: i64) -> Result<Vec<(i64, Kept)>, CoreError>;
}

/// What one instance holds of the shared catalog in memory.
#[derive(Debug, Default)]
pub struct SharedView {
    table: ServerMeta,
    history: History,
    /// Every change up to this version is applied here.
    cursor: u64,
    /// Every history row up to this id is applied here.
    history_cursor: i64,
    /// Lines a refused commit caught up on (other instances' commits),
    /// applied here but not yet handed to the follower: `follow` reads the
    /// change log from the cursor, which they moved past, so it returns
    /// these first (queued for this instance's clients, their contents
    /// counted, as any followed line).
    pending: Vec<Entry>,
}

/// The error of a commit another instance got in first.
fn changed_elsewhere(path: &str) -> CoreError {
    CoreError::Io(std::io::Error::other(format!(
        "{path:?} was changed by another server instance; not committed (the client tries again)"
    )))
}

impl SharedView {
    /// The view of what `db` holds now.
    pub fn open(db: &mut impl SharedDb) -> Result<Self, CoreError> {
        let (last, entries) = db.load()?;
        let mut view = SharedView::default();
        for e in entries {
            view.table.put(e);
        }
        view.cursor = last;
        view.read_history(db)?;
        Ok(view)
    }

    /// Commits `change` of `path` through `db` (see the module's rules) and
    /// returns the new line.
    pub fn commit(&mut self, db: &mut impl SharedDb, path: &str, change: Change) -> Result<Entry, CoreError> {
        let known = self.table.get(path).map(|e| e.version);
        let mut tx = db.begin()?;
        if tx.lock_row(path)? != known {
            drop(tx);
            // What it brings waits for the follower, which queues it for
            // this instance's clients: the cursor moves past it here.
            let caught = self.catch_up(db)?;
            self.pending.extend(caught);
            return Err(changed_elsewhere(path));
        }
        let version = tx.next_version()?;
        let entry = self.table.line_for(path, change, version);
        let replaced = self.table.get(path).cloned().map(|p| Kept { entry: p, replaced_ns: entry.mtime_ns });
        tx.write(replaced.as_ref(), &entry)?;
        tx.commit()?;
        // Durable: now in memory. The history row is read back (with any
        // other instance's since), so that it is held once, by its id.
        self.table.put(entry.clone());
        if self.cursor + 1 == entry.version {
            self.cursor = entry.version;
        }
        if replaced.is_some() {
            self.read_history(db)?;
        }
        Ok(entry)
    }

    /// Applies what other instances committed since the last call, in
    /// commit order, and returns the lines that changed here (first those
    /// a refused commit applied in between).
    pub fn follow(&mut self, db: &mut impl SharedDb) -> Result<Vec<Entry>, CoreError> {
        let more = self.catch_up(db)?;
        let mut lines = std::mem::take(&mut self.pending);
        lines.extend(more);
        Ok(lines)
    }

    fn catch_up(&mut self, db: &mut impl SharedDb) -> Result<Vec<Entry>, CoreError> {
        let mut changed = Vec::new();
        for (version, entry) in db.changes_since(self.cursor)? {
            if self.table.put(entry.clone()).is_some() {
                changed.push(entry);
            }
            self.cursor = self.cursor.max(version);
        }
        self.read_history(db)?;
        Ok(changed)
    }

    fn read_history(&mut self, db: &mut impl SharedDb) -> Result<(), CoreError> {
        for (id, kept) in db.history_since(self.history_cursor)? {
            self.history.keep(kept.entry, kept.replaced_ns);
            self.history_cursor = self.history_cursor.max(id);
        }
        Ok(())
    }

    /// The table.
    pub fn table(&self) -> &ServerMeta {
        &self.table
    }

    /// Every version up to this one is applied here.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The newest line for `path`.
    pub fn get(&self, path: &str) -> Option<Entry> {
        self.table.get(path).cloned()
    }

    /// The META-DATA text for a newly paired client, and the version up to
    /// which it lists every version (`Catalog::snapshot`; the stale-change
    /// rule counts each as seen by that client): the cursor, not the
    /// newest version here. A commit of this instance's own is applied
    /// before the others' older ones are, so the table may hold a version
    /// above versions it has not applied yet, which the text does not list.
    pub fn snapshot(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> (String, u64) {
        (self.table.render_since(since, skip), self.cursor)
    }

    /// What the history keeps of `path`, oldest first.
    pub fn history(&self, path: &str) -> Vec<Kept> {
        self.history.of(path).to_vec()
    }

    /// The file version of each path under `prefix` live at `t_ns`.
    pub fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry> {
        history::live_at(self.table.entries(), &self.history, prefix, t_ns)
    }

    /// Drops from memory what was replaced before `cutoff_ns` (the caller
    /// deleted its rows) and returns it.
    pub fn expire(&mut self, cutoff_ns: i64) -> Vec<Kept> {
        self.history.expire(cutoff_ns)
    }

    /// Every reference to stored content: once per live file and once per
    /// file version the history keeps.
    pub fn contents(&self) -> Vec<Strong> {
        let live = self.table.entries().filter(|e| e.state == EntryState::File);
        let kept = self.history.iter().filter(|k| k.is_file()).map(|k| &k.entry);
        live.chain(kept).filter_map(|e| e.strong).collect()
    }

    /// How much the history keeps.
    pub fn history_size(&self) -> history::Size {
        self.history.size()
    }

    /// What is in the way of a new file at `path` (`path_rules`).
    pub fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        self.table.path_conflict(path, case_twins)
    }

    /// The retention cutoff that keeps the history within `budget` bytes.
    pub fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        self.history.budget_cutoff(budget)
    }
}

#[cfg(test)]
#[path = "shared_catalog_tests.rs"]
mod tests;
