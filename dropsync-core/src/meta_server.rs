//! The server's META-DATA (PROTOCOL.md sections 5 and 6): path → newest
//! version, content digest, size, time and whether it is a tombstone, with a
//! server-wide version counter, persisted through a [`JournaledStore`].
//!
//! The [`Catalog`] trait is what the server's logic talks to, so that a later
//! backend can keep the same table outside this process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use dropsync_proto::metadata::{self, Entry, EntryState, Strong};
use dropsync_proto::Digest;

use crate::history::{self, History, Kept, HISTORY};
use crate::path_rules::{PathConflict, PathIndex};
use crate::storage::Storage;
use crate::store::JournaledStore;
use crate::CoreError;

/// A change to commit to one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// New content: its MD5, size, modification time (ns since the epoch)
    /// and strong digest.
    File {
        /// MD5 of the whole file.
        md5: Digest,
        /// Size in bytes.
        size: u64,
        /// When the upload finished.
        mtime_ns: i64,
        /// SHA-256 of the whole file: what identifies the content (section 6).
        strong: Strong,
    },
    /// A delete, recorded as a tombstone at `mtime_ns`.
    Delete {
        /// When the delete was accepted.
        mtime_ns: i64,
    },
}

/// The server's table. Versions only grow: every commit takes the next value
/// of one counter, so "newer" is comparable across paths.
#[derive(Debug, Default)]
pub struct ServerMeta {
    entries: HashMap<String, Entry>,
    last_version: u64,
    /// The live files counted for the path rules (`path_rules`).
    index: PathIndex,
    /// The text [`render`](Self::render) made of the table as it is, until
    /// the table changes. Every client that pairs is sent the META-DATA:
    /// clients reconnecting after a restart of the server (or of the
    /// network) would each sort and render the whole table again, 0.7 s of
    /// a core at a million paths (issue 19, B8 reconnect). It costs the
    /// text's size in memory while the table stays as it is.
    rendered: Mutex<Option<String>>,
}

impl ServerMeta {
    /// A table from loaded entries; the counter continues after the largest.
    pub fn from_entries(entries: HashMap<String, Entry>) -> Self {
        let last_version = entries.values().map(|e| e.version).max().unwrap_or(0);
        let index = PathIndex::of(entries.values());
        Self { entries, last_version, index, rendered: Mutex::default() }
    }

    /// What is in the way of a new file at `path` (`path_rules`); the
    /// letter-case rule with `case_twins`.
    pub fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        self.index.conflict(path, case_twins, || Box::new(self.entries.values()), |p| self.entries.get(p))
    }

    /// Puts `path`'s line back as it was before a change that did not
    /// become durable (`None`: it had none).
    pub fn put_back(&mut self, path: &str, previous: Option<Entry>, last_version: u64) {
        self.changed();
        self.index.count(self.entries.get(path), false);
        self.index.count(previous.as_ref(), true);
        match previous {
            Some(p) => self.entries.insert(path.to_owned(), p),
            None => self.entries.remove(path),
        };
        self.last_version = last_version;
    }

    /// Forgets the text rendered of the table as it was.
    fn changed(&mut self) {
        *self.rendered.get_mut().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// The newest line for `path`.
    pub fn get(&self, path: &str) -> Option<&Entry> {
        self.entries.get(path)
    }

    /// The value of the version counter (the newest version of any path).
    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    /// Number of paths, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no path was ever committed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = &Entry> {
        self.entries.values()
    }

    /// Applies `change` to `path` with the next version and returns the new
    /// line. The caller has already decided that the change is allowed.
    pub fn apply(&mut self, path: &str, change: Change) -> Entry {
        self.changed();
        self.last_version += 1;
        let entry = self.line_for(path, change, self.last_version);
        self.index.count(self.entries.get(path), false);
        self.index.count(Some(&entry), true);
        self.entries.insert(path.to_owned(), entry.clone());
        entry
    }

    /// Takes `entry` as committed elsewhere (a catalog whose versions come
    /// from a database): kept only if newer than the line it replaces, and
    /// the counter follows. Returns the line it replaced, if it did.
    pub fn put(&mut self, entry: Entry) -> Option<Option<Entry>> {
        if self.entries.get(&entry.path).is_some_and(|cur| cur.version >= entry.version) {
            return None;
        }
        self.changed();
        self.last_version = self.last_version.max(entry.version);
        self.index.count(self.entries.get(&entry.path), false);
        self.index.count(Some(&entry), true);
        Some(self.entries.insert(entry.path.clone(), entry))
    }

    /// The line `change` of `path` would commit as `version`, over what the
    /// table holds now (a tombstone keeps the last version's digests and
    /// size), without applying it.
    pub fn line_for(&self, path: &str, change: Change, version: u64) -> Entry {
        let (md5, size, mtime_ns, state, strong) = match change {
            Change::File { md5, size, mtime_ns, strong } => (md5, size, mtime_ns, EntryState::File, Some(strong)),
            Change::Delete { mtime_ns } => {
                let (md5, size, strong) = self.entries.get(path).map(|e| (e.md5, e.size, e.strong)).unwrap_or_default();
                (md5, size, mtime_ns, EntryState::Deleted, strong)
            }
        };
        Entry { version, md5, size, mtime_ns, state, path: path.to_owned(), strong }
    }

    /// Records the strong digest of `path`'s content without a new version
    /// (adopting a store written before strong digests; the content is the
    /// same). False for an unknown path.
    pub fn set_strong(&mut self, path: &str, strong: Strong) -> bool {
        self.changed();
        match self.entries.get_mut(path) {
            Some(e) => {
                e.strong = Some(strong);
                true
            }
            None => false,
        }
    }

    /// The META-DATA text sent to a client on pairing (section 1), sorted by
    /// path so that the same table always renders the same bytes.
    pub fn render(&self) -> String {
        let mut rendered = self.rendered.lock().unwrap_or_else(PoisonError::into_inner);
        let text = rendered.get_or_insert_with(|| self.render_before(&HashMap::new(), None, &|_| false));
        String::clone(text)
    }

    /// [`render`](Self::render) (kept), or with `since` [ext] the lines of
    /// versions above it that `skip` does not take out.
    pub fn render_since(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> String {
        match since {
            None => self.render(),
            Some(_) => self.render_before(&HashMap::new(), since, skip),
        }
    }

    /// [`render`](Self::render) of the table as it was before the changes
    /// `before` holds: each changed path's line before them (`None`: it
    /// had none). With `since` [ext], only the lines of versions above it
    /// that `skip` does not take out (`dropsync_proto::index`: META-DATA
    /// since a version).
    pub fn render_before(
        &self,
        before: &HashMap<&str, Option<&Entry>>,
        since: Option<u64>,
        skip: &dyn Fn(&Entry) -> bool,
    ) -> String {
        // Sorted by the first 16 bytes of each path, held beside it, and by
        // the whole path only where those are the same: most comparisons
        // then read no path (at a million paths, the sort took half of
        // the render, in cache misses on the paths).
        let mut sorted: Vec<(u128, &Entry)> = self
            .entries
            .values()
            .filter_map(|e| match before.get(e.path.as_str()) {
                Some(earlier) => *earlier,
                None => Some(e),
            })
            .filter(|e| since.is_none_or(|since| e.version > since && !skip(e)))
            .map(|e| (path_prefix(&e.path), e))
            .collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.path.cmp(&b.1.path)));
        let mut out = String::with_capacity(32 + sorted.len() * 96);
        metadata::render_header(&mut out);
        for (_, e) in sorted {
            metadata::render_entry(e, &mut out);
        }
        out
    }
}

/// The first 16 bytes of `path` as a number that sorts as they do: a
/// shorter path is padded with zero bytes, which no name holds (section
/// 3), so it sorts before every longer path it begins.
fn path_prefix(path: &str) -> u128 {
    let mut bytes = [0u8; 16];
    let n = path.len().min(16);
    bytes[..n].copy_from_slice(&path.as_bytes()[..n]);
    u128::from_be_bytes(bytes)
}

/// What the server's logic needs of its META-DATA, whatever keeps it.
pub trait Catalog: Send + Sync {
    /// The newest line for `path`.
    fn get(&self, path: &str) -> Option<Entry>;
    /// Commits `change` durably and returns the new line. Returns only once
    /// the change would survive a crash (section 6: persist before 0x0001).
    fn commit(&self, path: &str, change: Change) -> Result<Entry, CoreError>;
    /// The META-DATA text for a newly paired client, and the version counter
    /// at that instant (every version up to it is listed in the text). With
    /// `since` [ext], only the lines of versions above it (a client that
    /// acknowledged the listing up to `since`: `dropsync_proto::index`).
    fn snapshot(&self, since: Option<u64>) -> (String, u64) {
        self.snapshot_skipping(since, &|_| false)
    }
    /// [`snapshot`](Self::snapshot); with `since`, without the lines `skip`
    /// takes out too (the versions a session received already).
    fn snapshot_skipping(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> (String, u64);
    /// What commits replaced of `path` and the history still keeps, oldest
    /// first (the current line is [`get`](Self::get)'s).
    fn history(&self, path: &str) -> Vec<Kept>;
    /// The file version of each path under `prefix` that was live at
    /// `t_ns` (see [`history::live_at`]).
    fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry>;
    /// Drops, durably, what was replaced before `cutoff_ns`, and returns it:
    /// the caller releases the content of each file version.
    fn expire(&self, cutoff_ns: i64) -> Result<Vec<Kept>, CoreError>;
    /// Every reference to stored content, to count at start: once per live
    /// file and once per file version the history keeps.
    fn contents(&self) -> Vec<Strong>;
    /// How much the history keeps.
    fn history_size(&self) -> history::Size;
    /// What is in the way of a new file at `path` (`path_rules`).
    fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict>;
    /// The retention cutoff that keeps the history within `budget` bytes
    /// (`History::budget_cutoff`).
    fn budget_cutoff(&self, budget: u64) -> Option<i64>;
    /// Number of paths, tombstones included.
    fn len(&self) -> usize;
    /// True when the catalog holds no path.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f` with the table, under the catalog's lock (the status
    /// page's walk).
    fn walk_table(&self, f: &mut dyn FnMut(&ServerMeta));
    /// Folds what is journaled into a snapshot, where the catalog keeps one
    /// (at shutdown); nothing to do elsewhere.
    fn fold(&self) -> Result<(), CoreError> {
        Ok(())
    }
    /// The lines other server instances committed since the last call,
    /// applied here, in commit order (a catalog only this instance writes
    /// has none).
    fn follow(&self) -> Result<Vec<Entry>, CoreError> {
        Ok(Vec::new())
    }
    /// True when other instances may commit to this catalog too: content
    /// may then be referred to by lines this instance has not seen yet.
    fn shared(&self) -> bool {
        false
    }
    /// Begins a group commit, where the catalog keeps one: until
    /// [`end_batch`](Self::end_batch), [`commit`](Self::commit) applies
    /// each change at once but makes none durable, so that the batch shares
    /// one durable write. The caller serializes commits and holds the paths'
    /// locks, and makes no change's reply or delivery before `end_batch`
    /// returns; [`snapshot`](Self::snapshot) meanwhile lists the table as
    /// it was before the batch. False where each commit is durable by
    /// itself (nothing to end then).
    fn begin_batch(&self) -> bool {
        false
    }
    /// Makes every change since [`begin_batch`](Self::begin_batch) durable
    /// together. On failure none is: every one is undone, and the error
    /// returned.
    fn end_batch(&self) -> Result<(), CoreError> {
        Ok(())
    }
}

/// A boxed catalog is one (the server picks the embedded one or
/// PostgreSQL's at start).
impl<C: Catalog + ?Sized> Catalog for Box<C> {
    fn get(&self, path: &str) -> Option<Entry> {
        (**self).get(path)
    }
    fn commit(&self, path: &str, change: Change) -> Result<Entry, CoreError> {
        (**self).commit(path, change)
    }
    fn snapshot_skipping(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> (String, u64) {
        (**self).snapshot_skipping(since, skip)
    }
    fn history(&self, path: &str) -> Vec<Kept> {
        (**self).history(path)
    }
    fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry> {
        (**self).live_at(prefix, t_ns)
    }
    fn expire(&self, cutoff_ns: i64) -> Result<Vec<Kept>, CoreError> {
        (**self).expire(cutoff_ns)
    }
    fn contents(&self) -> Vec<Strong> {
        (**self).contents()
    }
    fn history_size(&self) -> history::Size {
        (**self).history_size()
    }
    fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        (**self).path_conflict(path, case_twins)
    }
    fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        (**self).budget_cutoff(budget)
    }
    fn len(&self) -> usize {
        (**self).len()
    }
    fn walk_table(&self, f: &mut dyn FnMut(&ServerMeta)) {
        (**self).walk_table(f)
    }
    fn fold(&self) -> Result<(), CoreError> {
        (**self).fold()
    }
    fn follow(&self) -> Result<Vec<Entry>, CoreError> {
        (**self).follow()
    }
    fn shared(&self) -> bool {
        (**self).shared()
    }
    fn begin_batch(&self) -> bool {
        (**self).begin_batch()
    }
    fn end_batch(&self) -> Result<(), CoreError> {
        (**self).end_batch()
    }
}

/// The embedded catalog: the table in memory behind one mutex, journaled to
/// a [`Storage`], with the [`History`] of what commits replaced beside it.
#[derive(Debug)]
pub struct MemCatalog<S: Storage> {
    inner: Mutex<(ServerMeta, JournaledStore<S>, History)>,
    /// The group commit under way, if any (taken after `inner`).
    batch: Mutex<Option<Batch>>,
}

/// What a group commit applied and has yet to make durable.
#[derive(Debug, Default)]
struct Batch {
    /// The history lines of what its changes replaced, in order.
    history_text: String,
    /// Those versions, kept in memory once the lines are durable.
    kept: Vec<Kept>,
    /// The new lines, for the journal.
    entries: Vec<Entry>,
    /// Each change's path and the line it replaced, to undo a batch that
    /// cannot be made durable.
    undo: Vec<(String, Option<Entry>)>,
    /// The version counter before the batch.
    version_before: u64,
}

/// Reads the history file. A torn or unreadable tail is cut off, so that
/// the next append does not glue a line to it, and so is a kept line of a
/// version still current (its commit never became durable).
fn load_history<S: Storage>(storage: &S, table: &ServerMeta) -> Result<History, CoreError> {
    let Some(bytes) = storage.read(HISTORY)? else { return Ok(History::default()) };
    let text = String::from_utf8_lossy(&bytes);
    let mut history = History::parse(&text)?;
    let stale = history.drop_where(|k| table.get(&k.entry.path).is_some_and(|c| c.version <= k.entry.version));
    let lines = text.split('\n').filter(|l| !l.is_empty()).count();
    if stale > 0 || (!text.is_empty() && (!text.ends_with('\n') || lines != history.len())) {
        storage.replace(HISTORY, history.render().as_bytes())?;
    }
    Ok(history)
}

/// The table and its history as `storage` holds them, writing nothing (see
/// [`crate::store::read_only`]).
pub fn read_only<S: Storage>(storage: &S) -> Result<(ServerMeta, History), CoreError> {
    let loaded = crate::store::read_only(storage)?;
    let history = match storage.read(HISTORY)? {
        Some(bytes) => History::parse(&String::from_utf8_lossy(&bytes))?,
        None => History::default(),
    };
    Ok((ServerMeta::from_entries(loaded.entries), history))
}

impl<S: Storage> MemCatalog<S> {
    /// Loads the table and its history from `storage` (empty if nothing is
    /// stored yet).
    pub fn open(storage: S) -> Result<Self, CoreError> {
        let (store, loaded) = JournaledStore::open(storage)?;
        let table = ServerMeta::from_entries(loaded.entries);
        let history = load_history(store.storage(), &table)?;
        Ok(Self { inner: Mutex::new((table, store, history)), batch: Mutex::new(None) })
    }

    fn lock(&self) -> MutexGuard<'_, (ServerMeta, JournaledStore<S>, History)> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the table while holding its lock (for consistent reads of
    /// several paths, e.g. in tests and benchmarks).
    pub fn with_table<R>(&self, f: impl FnOnce(&ServerMeta) -> R) -> R {
        f(&self.lock().0)
    }

    /// Records the strong digest of `path`'s content, in memory (see
    /// [`ServerMeta::set_strong`]); [`compact`](Self::compact) makes it
    /// durable.
    pub fn set_strong(&self, path: &str, strong: Strong) -> bool {
        self.lock().0.set_strong(path, strong)
    }

    /// Writes a fresh snapshot and drops the journal (e.g. at shutdown).
    pub fn compact(&self) -> Result<(), CoreError> {
        let mut guard = self.lock();
        let (table, store, _) = &mut *guard;
        store.compact(table.entries())
    }
}

impl<S: Storage> Catalog for MemCatalog<S> {
    fn get(&self, path: &str) -> Option<Entry> {
        self.lock().0.get(path).cloned()
    }

    fn commit(&self, path: &str, change: Change) -> Result<Entry, CoreError> {
        let mut guard = self.lock();
        let (table, store, history) = &mut *guard;
        let previous = table.get(path).cloned();
        let previous_version = table.last_version;
        let entry = table.apply(path, change);
        if let Some(batch) = self.batch.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            if let Some(p) = &previous {
                let k = history::Kept { entry: p.clone(), replaced_ns: entry.mtime_ns };
                k.render(&mut batch.history_text);
                batch.kept.push(k);
            }
            batch.entries.push(entry.clone());
            batch.undo.push((path.to_owned(), previous));
            return Ok(entry);
        }
        // What this commit replaces is kept durably before the commit is:
        // a crash between the two leaves a kept line for a version still
        // current, which the next start drops (found by the simulator: the
        // other order lost the replaced version when the crash came first).
        let kept = previous.clone().map(|p| history::Kept { entry: p, replaced_ns: entry.mtime_ns });
        let mut written = Ok(());
        if let Some(k) = &kept {
            let mut line = String::with_capacity(128);
            k.render(&mut line);
            written = store.storage().append(HISTORY, line.as_bytes()).map_err(CoreError::Io);
        }
        if let Err(e) = written.and_then(|()| store.append(std::slice::from_ref(&entry))) {
            // Not durable: not committed. Put the table back as it was.
            table.put_back(path, previous, previous_version);
            return Err(e);
        }
        if let Some(k) = kept {
            // Kept with its content's reference.
            history.keep(k.entry, k.replaced_ns);
        }
        if store.should_compact(table.len()) {
            // The change is already durable in the journal; a failed
            // compaction only leaves the journal longer.
            let _ = store.compact(table.entries());
        }
        Ok(entry)
    }

    fn begin_batch(&self) -> bool {
        let guard = self.lock();
        let version_before = guard.0.last_version();
        *self.batch.lock().unwrap_or_else(PoisonError::into_inner) = Some(Batch { version_before, ..Batch::default() });
        true
    }

    /// The history lines first, then the journal's, each with one sync:
    /// the same order as one commit's (what a change replaced is kept
    /// durably before the change is).
    fn end_batch(&self) -> Result<(), CoreError> {
        let mut guard = self.lock();
        let Some(batch) = self.batch.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return Ok(());
        };
        let (table, store, history) = &mut *guard;
        let mut written = Ok(());
        if !batch.history_text.is_empty() {
            written = store.storage().append(HISTORY, batch.history_text.as_bytes()).map_err(CoreError::Io);
        }
        if !batch.entries.is_empty() {
            written = written.and_then(|()| store.append(&batch.entries));
        }
        if let Err(e) = written {
            // Not durable: not committed. The versions handed out stay
            // used, so that no later change is mistaken for one of these.
            let last = table.last_version;
            for (path, previous) in batch.undo.into_iter().rev() {
                table.put_back(&path, previous, last);
            }
            return Err(e);
        }
        for k in batch.kept {
            history.keep(k.entry, k.replaced_ns);
        }
        if store.should_compact(table.len()) {
            let _ = store.compact(table.entries());
        }
        Ok(())
    }

    /// In the middle of a group commit, the table as it was before the
    /// batch: its changes are not durable yet (and may be undone).
    fn snapshot_skipping(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> (String, u64) {
        let guard = self.lock();
        let batch = self.batch.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(batch) = batch.as_ref() else {
            return (guard.0.render_since(since, skip), guard.0.last_version());
        };
        let mut before: HashMap<&str, Option<&Entry>> = HashMap::with_capacity(batch.undo.len());
        for (path, previous) in &batch.undo {
            // A path changed twice in a batch (a conflict copy's name, say):
            // its first line before the batch.
            before.entry(path.as_str()).or_insert(previous.as_ref());
        }
        (guard.0.render_before(&before, since, skip), batch.version_before)
    }

    fn history(&self, path: &str) -> Vec<Kept> {
        self.lock().2.of(path).to_vec()
    }

    fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry> {
        let guard = self.lock();
        history::live_at(guard.0.entries(), &guard.2, prefix, t_ns)
    }

    fn expire(&self, cutoff_ns: i64) -> Result<Vec<Kept>, CoreError> {
        let mut guard = self.lock();
        let (_, store, history) = &mut *guard;
        let kept = |k: &Kept| k.replaced_ns >= cutoff_ns;
        if history.iter().all(kept) {
            return Ok(Vec::new());
        }
        // Durable first: a crash now leaves the old file, whose lines still
        // hold their content.
        store.storage().replace(HISTORY, history.render_where(kept).as_bytes())?;
        Ok(history.expire(cutoff_ns))
    }

    fn contents(&self) -> Vec<Strong> {
        let guard = self.lock();
        let live = guard.0.entries().filter(|e| e.state == EntryState::File);
        let kept = guard.2.iter().filter(|k| k.is_file()).map(|k| &k.entry);
        live.chain(kept).filter_map(|e| e.strong).collect()
    }

    fn history_size(&self) -> history::Size {
        self.lock().2.size()
    }

    fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        self.lock().0.path_conflict(path, case_twins)
    }

    fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        self.lock().2.budget_cutoff(budget)
    }

    fn len(&self) -> usize {
        self.lock().0.len()
    }

    fn walk_table(&self, f: &mut dyn FnMut(&ServerMeta)) {
        f(&self.lock().0)
    }

    fn fold(&self) -> Result<(), CoreError> {
        self.compact()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use std::sync::Arc;

    type Shared = Arc<MemStorage>;

    fn file(md5: u8, size: u64) -> Change {
        Change::File { md5: [md5; 16], size, mtime_ns: 5, strong: [md5; 32] }
    }

    #[test]
    fn versions_grow_across_paths_and_tombstones_keep_the_digest() {
        let cat = MemCatalog::open(MemStorage::new()).unwrap();
        assert_eq!(cat.commit("a", file(1, 10)).unwrap().version, 1);
        assert_eq!(cat.commit("b", file(2, 20)).unwrap().version, 2);
        let tomb = cat.commit("a", Change::Delete { mtime_ns: 9 }).unwrap();
        assert_eq!((tomb.version, tomb.state, tomb.md5, tomb.size), (3, EntryState::Deleted, [1; 16], 10));
        let (text, last) = cat.snapshot(None);
        assert_eq!(last, 3);
        let doc = metadata::parse_document(&text).unwrap();
        assert_eq!(doc.entries.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    }

    proptest::proptest! {
        /// The order by prefix, then path, is the order of the paths.
        #[test]
        fn the_prefix_order_is_the_path_order(a in "[a-c/ .]{0,20}", b in "[a-c/ .]{0,20}") {
            let by_prefix = path_prefix(&a).cmp(&path_prefix(&b)).then_with(|| a.cmp(&b));
            proptest::prop_assert_eq!(by_prefix, a.cmp(&b));
        }
    }

    /// The rendered text is kept until the table changes, whichever way.
    #[test]
    fn the_kept_text_follows_every_change_of_the_table() {
        let mut t = ServerMeta::default();
        let fresh = |t: &ServerMeta| t.render_before(&HashMap::new(), None, &|_| false);
        let first = t.apply("a", file(1, 1));
        assert_eq!(t.render(), fresh(&t));
        t.apply("b", file(2, 2));
        assert_eq!(t.render(), fresh(&t), "after apply");
        t.put(Entry { version: 9, ..first.clone() });
        assert_eq!(t.render(), fresh(&t), "after put");
        t.put_back("a", Some(first), 9);
        assert_eq!(t.render(), fresh(&t), "after put_back");
        assert!(t.set_strong("b", [7; 32]));
        assert_eq!(t.render(), fresh(&t), "after set_strong");
    }

    #[test]
    fn a_snapshot_in_the_middle_of_a_group_commit_lists_the_table_as_before_it() {
        let disk = std::sync::Arc::new(MemStorage::new());
        let cat = MemCatalog::open(disk.clone()).unwrap();
        cat.commit("a", file(1, 1)).unwrap();
        cat.commit("gone", file(2, 2)).unwrap();
        let before = cat.snapshot(None);
        assert!(cat.begin_batch());
        cat.commit("a", file(3, 3)).unwrap();
        cat.commit("a", file(4, 4)).unwrap();
        cat.commit("new", file(5, 5)).unwrap();
        cat.commit("gone", Change::Delete { mtime_ns: 9 }).unwrap();
        assert_eq!(cat.snapshot(None), before, "nothing of the batch is durable yet");
        assert_eq!(MemCatalog::open(disk.clone()).unwrap().snapshot(None), before, "as a restart would read it");
        cat.end_batch().unwrap();
        let after = cat.snapshot(None);
        assert_eq!(after.1, 6);
        assert_ne!(after.0, before.0);
        assert_eq!(MemCatalog::open(disk).unwrap().snapshot(None), after);
    }

    #[test]
    fn reopen_restores_table_and_counter() {
        let s = Shared::default();
        let cat = MemCatalog::open(s.clone()).unwrap();
        cat.commit("a", file(1, 1)).unwrap();
        cat.commit("a", file(2, 2)).unwrap();
        cat.compact().unwrap();
        cat.commit("b", file(3, 3)).unwrap();
        drop(cat);
        let cat = MemCatalog::open(s).unwrap();
        assert_eq!(cat.get("a").unwrap().md5, [2; 16]);
        assert_eq!(cat.commit("c", file(4, 4)).unwrap().version, 4);
    }

    /// Storage whose appends fail, to check a failed persist is no commit.
    struct Failing;
    impl Storage for Failing {
        fn read(&self, _: &str) -> std::io::Result<Option<Vec<u8>>> {
            Ok(None)
        }
        fn replace(&self, _: &str, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
        fn append(&self, _: &str, _: &[u8]) -> std::io::Result<()> {
            Err(std::io::Error::other("disk full"))
        }
        fn remove(&self, _: &str) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn failed_persist_is_not_a_commit() {
        let cat = MemCatalog::open(Failing).unwrap();
        assert!(cat.commit("a", file(1, 1)).is_err());
        assert!(cat.get("a").is_none());
        assert_eq!(cat.snapshot(None).1, 0);
    }
}
