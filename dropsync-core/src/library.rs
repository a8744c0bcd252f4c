//! The server's files as the protocol sees them (PROTOCOL.md section 6):
//! the catalog of META-DATA, the store of committed contents, the per-file
//! locks, and the rules that decide each upload, DELETE and REQUEST.
//!
//! The catalog ([`Catalog`]) and the content store ([`BlobStore`]) are
//! traits: the server keeps them on its local disk today, and a shared
//! backend (a database, an object store) can replace either without
//! touching these rules. The wall clock comes in as an argument.
//!
//! The rules, each in one place:
//! - "An upload whose content equals the current version of a file (not a
//!   tombstone) is answered 0x0001 and changes nothing", content compared by
//!   its strong digest, never by MD5 alone ([`Library::commit_upload`]);
//! - "On commit: bump the version, update the META-DATA and persist it
//!   crash-safely before replying" (the catalog's `commit`);
//! - the stale-change rule's conflict copy ([`Library::commit_upload`],
//!   [`Library::delete`], with `stale::must_keep_overwritten`);
//! - "DELETE: F locked: 0x0040. F unknown or already a tombstone: 0x0020"
//!   ([`Library::delete`]);
//! - "REQUEST: F locked (being written): 0x0080. F unknown: 0x0020"
//!   ([`Library::request`]);
//! - [ext] what a commit replaces is kept (the catalog's history) with its
//!   content, for restores and undeletes, until retention drops it
//!   ([`Library::restore`], [`Library::undelete`], [`Library::expire`]).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use dropsync_proto::metadata::{Entry, EntryState, Strong};
use dropsync_proto::{Digest, StatusCode};

use crate::conflict::pick_conflict_name;
use crate::copies::{CopyOrigins, Origin};
use crate::locks::{try_lock_guard, LockTable, SessionId};
use crate::meta_server::{Catalog, Change};
use crate::stale::{must_keep_overwritten, SeenVersions};
use crate::CoreError;

/// Where committed contents are kept, by their strong digest, with a
/// reference count per content (identical files and conflict copies share
/// one).
pub trait BlobStore: Send + Sync {
    /// An upload's content being written, which knows its strong digest.
    type Temp;
    /// Committed content opened for reading (to send it).
    type Reader;
    /// A new, empty upload.
    fn temp(&self) -> io::Result<Self::Temp>;
    /// The committed content of `key`; `NotFound` if it is not stored.
    fn open(&self, key: &Strong) -> io::Result<Self::Reader>;
    /// The strong digest of what `temp` holds.
    fn strong_of(&self, temp: &Self::Temp) -> Strong;
    /// Makes `temp` durable as the content of its digest (returned) before
    /// any catalog line names it; content already stored is not stored twice.
    fn install(&self, temp: Self::Temp) -> io::Result<Strong>;
    /// [`install`](Self::install) for a group commit: what makes the
    /// install durable may wait for [`sync_installed`](Self::sync_installed)
    /// (a folder's fsync shared by the batch). The temp's data is durable
    /// already (the caller made it so).
    fn install_unsynced(&self, temp: Self::Temp) -> io::Result<Strong> {
        self.install(temp)
    }
    /// Makes every [`install_unsynced`](Self::install_unsynced) so far
    /// durable.
    fn sync_installed(&self) -> io::Result<()> {
        Ok(())
    }
    /// One more catalog line refers to `key`.
    fn add_ref(&self, key: &Strong);
    /// One less; the content goes when none is left.
    fn drop_ref(&self, key: &Strong);
}

/// The wall-clock time of a change, for its META-DATA line and a conflict
/// copy's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallTime {
    /// Nanoseconds since the Unix epoch.
    pub unix_ns: i64,
}

impl WallTime {
    fn secs(self) -> i64 {
        self.unix_ns.div_euclid(1_000_000_000)
    }
}

/// What an undelete brought back and what it left.
#[derive(Debug, Default)]
pub struct Undeleted {
    /// The new versions it committed.
    pub back: Vec<Entry>,
    /// Files being written at that moment, left (run it again).
    pub locked: usize,
    /// Paths where a file or folder made since stands in the way.
    pub in_the_way: Vec<String>,
}

/// What a commit did, for the reply and the fan-out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// A new version: `entry`; `conflict` names the conflict copy that was
    /// made of the overwritten version first, if any. Reply 0x0001, then
    /// queue both for the other clients.
    New {
        /// The committed line.
        entry: Entry,
        /// The conflict copy's path.
        conflict: Option<String>,
    },
    /// The upload equals the current version: 0x0001, nothing changed.
    Unchanged,
    /// DELETE of an unknown path or a tombstone: 0x0020.
    NoFile,
    /// DELETE of a path whose lock another transfer holds: 0x0040.
    Locked,
}

/// The server's files and the rules of section 6.
pub struct Library<C, B> {
    catalog: C,
    blobs: B,
    locks: Arc<dyn LockTable>,
    /// Label of each path's last uploader (for conflict-copy names; not
    /// persisted: after a restart it is "unknown", as section 6 says).
    uploaders: Mutex<HashMap<String, String>>,
    /// Serializes commits so that reference counts and conflict names are
    /// decided on a table no one else is changing.
    commit_lock: Mutex<()>,
    /// The versions COPY made, for deliveries by COPY (`copies`).
    copies: Mutex<CopyOrigins>,
    conflict_copies: bool,
    /// Conflict copies committed for a change whose own commit then failed
    /// (with a shared catalog: another instance committed the path first).
    /// No caller queued them for this server's clients, so the next
    /// [`follow`](Self::follow) returns them.
    unreported: Mutex<Vec<String>>,
}

impl<C: Catalog, B: BlobStore> Library<C, B> {
    /// The rules over `catalog`, `blobs` and `locks`. `conflict_copies:
    /// false` is the server's `--no-conflict-copies`.
    pub fn new(catalog: C, blobs: B, locks: Arc<dyn LockTable>, conflict_copies: bool) -> Self {
        Library {
            catalog,
            blobs,
            locks,
            uploaders: Mutex::new(HashMap::new()),
            commit_lock: Mutex::new(()),
            copies: Mutex::new(CopyOrigins::default()),
            conflict_copies,
            unreported: Mutex::new(Vec::new()),
        }
    }

    /// The META-DATA table.
    pub fn catalog(&self) -> &C {
        &self.catalog
    }

    /// The committed contents.
    pub fn blobs(&self) -> &B {
        &self.blobs
    }

    /// A new, empty upload, to be committed with
    /// [`commit_upload`](Self::commit_upload).
    pub fn temp(&self) -> io::Result<B::Temp> {
        self.blobs.temp()
    }

    /// The META-DATA text for a newly paired client and the version
    /// counter it lists up to (`Catalog::snapshot`: never a change of a
    /// group commit that is not durable yet).
    pub fn snapshot(&self, since: Option<u64>) -> (String, u64) {
        self.catalog.snapshot(since)
    }

    /// [`snapshot`](Self::snapshot) since `since` [ext], without the lines
    /// `skip` takes out (`Catalog::snapshot_skipping`).
    pub fn snapshot_skipping(&self, since: u64, skip: &dyn Fn(&Entry) -> bool) -> (String, u64) {
        self.catalog.snapshot_skipping(Some(since), skip)
    }

    /// The committed content of `entry`, to send it.
    pub fn open_content(&self, entry: &Entry) -> io::Result<B::Reader> {
        match &entry.strong {
            Some(key) => self.blobs.open(key),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "content without a strong digest")),
        }
    }

    /// The per-path write locks.
    pub fn locks(&self) -> &Arc<dyn LockTable> {
        &self.locks
    }

    /// True unless `--no-conflict-copies`: whether the stale-change rule
    /// applies (and so whether a change must wait for a delivery's reply).
    pub fn conflict_copies(&self) -> bool {
        self.conflict_copies
    }

    fn uploader_of(&self, path: &str) -> String {
        self.uploaders.lock().unwrap_or_else(PoisonError::into_inner).get(path).cloned().unwrap_or_default()
    }

    fn set_uploader(&self, path: &str, label: &str) {
        self.uploaders.lock().unwrap_or_else(PoisonError::into_inner).insert(path.to_owned(), label.to_owned());
    }

    /// Commits an upload whose whole-file MD5 checked out; the caller holds
    /// the path's lock. Its content is known by the strong digest its temp
    /// computed as it was written: that decides whether it equals the
    /// current version, and names its content.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_upload(
        &self,
        path: &str,
        temp: B::Temp,
        md5: Digest,
        size: u64,
        seen: &Mutex<SeenVersions>,
        label: &str,
        now: WallTime,
    ) -> Result<Committed, CoreError> {
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.upload_held(path, temp, (md5, size), (seen, label), now, false)
    }

    /// [`commit_upload`](Self::commit_upload) under the commit lock;
    /// `batched`: in a group commit.
    fn upload_held(
        &self,
        path: &str,
        temp: B::Temp,
        (md5, size): (Digest, u64),
        (seen, label): (&Mutex<SeenVersions>, &str),
        now: WallTime,
        batched: bool,
    ) -> Result<Committed, CoreError> {
        let strong = self.blobs.strong_of(&temp);
        let current = self.catalog.get(path);
        if let Some(unchanged) = unchanged(current.as_ref(), strong, size, seen) {
            return Ok(unchanged);
        }
        let installed = if batched { self.blobs.install_unsynced(temp) } else { self.blobs.install(temp) };
        let strong = installed.map_err(CoreError::Io)?;
        self.commit_content(path, current.as_ref(), (md5, size, strong), seen, label, now)
    }

    /// Commits `content` (MD5, size, strong digest) as a new version of
    /// `path` (whose line was `current`), under the commit lock: the overwritten version first kept
    /// as a conflict copy if the sender never saw it; then the line, which
    /// holds one reference to the content. The overwritten version's
    /// reference passes to the history, which releases it when retention
    /// drops the version.
    #[allow(clippy::too_many_arguments)]
    fn commit_content(
        &self,
        path: &str,
        current: Option<&Entry>,
        (md5, size, strong): (Digest, u64, Strong),
        seen: &Mutex<SeenVersions>,
        label: &str,
        now: WallTime,
    ) -> Result<Committed, CoreError> {
        // Counted before the conflict copy, so that a copy that fails to
        // commit releases an upload's installed content (gone, or a
        // candidate of a shared bucket's collector) rather than leave it
        // unreferenced.
        self.blobs.add_ref(&strong);
        let conflict = match self.conflict_if_stale(current, seen, now) {
            Ok(c) => c,
            Err(e) => {
                self.blobs.drop_ref(&strong);
                return Err(e);
            }
        };
        let change = Change::File { md5, size, mtime_ns: now.unix_ns, strong };
        let entry = match self.catalog.commit(path, change) {
            Ok(e) => e,
            Err(e) => {
                self.blobs.drop_ref(&strong);
                self.keep_unreported(conflict);
                return Err(e);
            }
        };
        self.set_uploader(path, label);
        seen.lock().unwrap_or_else(PoisonError::into_inner).saw(path, entry.version);
        Ok(Committed::New { entry, conflict })
    }

    /// COPY [ext] of `from`'s content to `path`, whose MD5 the client gave
    /// as `md5`; the caller holds `path`'s lock. The content is the one
    /// `from` holds now, and only when the client has seen that version (so
    /// it names content it was sent or sent itself, and the MD5 only checks
    /// that both mean the same version, never picks content by itself).
    /// `NoFile` otherwise: the client then uploads the file the usual way.
    /// Committed by section 6's rules like an upload of that content: an
    /// identical one changes nothing, a stale one keeps what it overwrites.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_copy(
        &self,
        path: &str,
        from: &str,
        md5: Digest,
        seen: &Mutex<SeenVersions>,
        label: &str,
        now: WallTime,
    ) -> Result<Committed, CoreError> {
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.copy_held(path, from, md5, (seen, label), now)
    }

    /// [`commit_copy`](Self::commit_copy) under the commit lock.
    fn copy_held(
        &self,
        path: &str,
        from: &str,
        md5: Digest,
        (seen, label): (&Mutex<SeenVersions>, &str),
        now: WallTime,
    ) -> Result<Committed, CoreError> {
        let Some(source) = self.copy_source(from, md5, seen) else {
            return Ok(Committed::NoFile);
        };
        let Some(strong) = source.strong else {
            return Ok(Committed::NoFile);
        };
        let current = self.catalog.get(path);
        if let Some(unchanged) = unchanged(current.as_ref(), strong, source.size, seen) {
            return Ok(unchanged);
        }
        let content = (source.md5, source.size, strong);
        let committed = self.commit_content(path, current.as_ref(), content, seen, label, now)?;
        if let Committed::New { entry, .. } = &committed {
            let origin = Origin { version: entry.version, from: from.to_owned(), from_version: source.version };
            self.copies.lock().unwrap_or_else(PoisonError::into_inner).record(path, origin);
        }
        Ok(committed)
    }

    /// Where `version` of `path` took its content from, when a COPY made
    /// it (and it is still remembered).
    pub fn copied_from(&self, path: &str, version: u64) -> Option<Origin> {
        self.copies.lock().unwrap_or_else(PoisonError::into_inner).of(path, version).cloned()
    }

    /// The current line of `from` when it is a file with MD5 `md5` whose
    /// version the session has seen: the content a COPY may name.
    fn copy_source(&self, from: &str, md5: Digest, seen: &Mutex<SeenVersions>) -> Option<Entry> {
        let cur = self.catalog.get(from).filter(|c| c.state == EntryState::File && c.md5 == md5)?;
        let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.has_seen(from, cur.version).then_some(cur)
    }

    /// A DELETE of `path` from session `owner`: takes the path's lock
    /// without waiting, records a tombstone with a new version.
    pub fn delete(
        &self,
        path: &str,
        owner: SessionId,
        seen: &Mutex<SeenVersions>,
        now: WallTime,
    ) -> Result<Committed, CoreError> {
        let Some(_lock) = try_lock_guard(self.locks.as_ref(), path, owner) else {
            return Ok(Committed::Locked);
        };
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.delete_held(path, seen, now)
    }

    /// [`delete`](Self::delete) with the path's lock and the commit lock
    /// held.
    fn delete_held(&self, path: &str, seen: &Mutex<SeenVersions>, now: WallTime) -> Result<Committed, CoreError> {
        let current = match self.catalog.get(path) {
            Some(c) if c.state == EntryState::File => c,
            _ => return Ok(Committed::NoFile),
        };
        let conflict = self.conflict_if_stale(Some(&current), seen, now)?;
        // The deleted version's reference passes to the history.
        let entry = match self.catalog.commit(path, Change::Delete { mtime_ns: now.unix_ns }) {
            Ok(e) => e,
            Err(e) => {
                self.keep_unreported(conflict);
                return Err(e);
            }
        };
        seen.lock().unwrap_or_else(PoisonError::into_inner).saw(path, entry.version);
        Ok(Committed::New { entry, conflict })
    }

    /// Restores `version` of `path` from its history (or its current line)
    /// as a new version, to be queued for every client: undo and undelete.
    /// `Unchanged` when the path holds that content already; `NoFile` when
    /// no file version `version` of `path` is known; `Locked` while a
    /// transfer holds the path.
    pub fn restore(&self, path: &str, version: u64, owner: SessionId, now: WallTime) -> Result<Committed, CoreError> {
        let current = self.catalog.get(path);
        let found = match current.as_ref().filter(|c| c.version == version) {
            Some(c) => Some(c.clone()),
            None => self.catalog.history(path).into_iter().find(|k| k.entry.version == version).map(|k| k.entry),
        };
        match found {
            Some(e) if e.state == EntryState::File => self.bring_back(&e, current.as_ref(), owner, now),
            _ => Ok(Committed::NoFile),
        }
    }

    /// Undeletes the folder `prefix` (every path for an empty one) as it
    /// was at `at`: each file live then whose content is not the path's
    /// now comes back as a new version. Returns what was committed, to be
    /// queued for every client, and what was left.
    pub fn undelete(&self, prefix: &str, at: WallTime, owner: SessionId, now: WallTime) -> Result<Undeleted, CoreError> {
        let mut out = Undeleted::default();
        for e in self.catalog.live_at(prefix, at.unix_ns) {
            let current = self.catalog.get(&e.path);
            // A file or folder made since stands where this one would go
            // (`path_rules`): left, and named, not put beside it.
            if current.as_ref().is_none_or(|c| c.state != EntryState::File)
                && self.catalog.path_conflict(&e.path, false).is_some()
            {
                out.in_the_way.push(e.path.clone());
                continue;
            }
            match self.bring_back(&e, current.as_ref(), owner, now)? {
                Committed::New { entry, .. } => out.back.push(entry),
                Committed::Locked => out.locked += 1,
                Committed::Unchanged | Committed::NoFile => {}
            }
        }
        Ok(out)
    }

    /// Commits `old`'s content at its path, over `current`.
    fn bring_back(&self, old: &Entry, current: Option<&Entry>, owner: SessionId, now: WallTime) -> Result<Committed, CoreError> {
        let Some(strong) = old.strong else { return Ok(Committed::NoFile) };
        if current.is_some_and(|c| c.state == EntryState::File && c.strong == Some(strong)) {
            return Ok(Committed::Unchanged);
        }
        let Some(_lock) = try_lock_guard(self.locks.as_ref(), &old.path, owner) else {
            return Ok(Committed::Locked);
        };
        self.blobs.open(&strong).map_err(CoreError::Io)?;
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        self.blobs.add_ref(&strong);
        let change = Change::File { md5: old.md5, size: old.size, mtime_ns: now.unix_ns, strong };
        match self.catalog.commit(&old.path, change) {
            Ok(entry) => Ok(Committed::New { entry, conflict: None }),
            Err(e) => {
                self.blobs.drop_ref(&strong);
                Err(e)
            }
        }
    }

    /// Retention: drops what was replaced before `cutoff` from the history
    /// and releases its content (which goes once nothing names it); with a
    /// size `budget`, also the oldest versions beyond it. Returns how many
    /// versions went.
    pub fn expire(&self, cutoff: WallTime, budget: Option<u64>) -> Result<usize, CoreError> {
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let by_size = budget.and_then(|b| self.catalog.budget_cutoff(b)).unwrap_or(i64::MIN);
        let gone = self.catalog.expire(cutoff.unix_ns.max(by_size))?;
        for k in gone.iter().filter(|k| k.is_file()) {
            if let Some(key) = &k.entry.strong {
                self.blobs.drop_ref(key);
            }
        }
        Ok(gone.len())
    }

    /// Applies what other server instances committed since the last call
    /// (`Catalog::follow`) and returns their lines, to be queued for this
    /// instance's clients. Their contents are counted as referred to here.
    /// Conflict copies a failed commit left unqueued come first (their
    /// contents are counted already).
    pub fn follow(&self) -> Result<Vec<Entry>, CoreError> {
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let lines = self.catalog.follow()?;
        for e in lines.iter().filter(|e| e.state == EntryState::File) {
            if let Some(key) = &e.strong {
                self.blobs.add_ref(key);
            }
        }
        let copies = std::mem::take(&mut *self.unreported.lock().unwrap_or_else(PoisonError::into_inner));
        Ok(copies.iter().filter_map(|name| self.catalog.get(name)).chain(lines).collect())
    }

    /// A change's commit failed after its conflict copy was committed: the
    /// copy is for every client all the same (see `unreported`).
    fn keep_unreported(&self, conflict: Option<String>) {
        if let Some(name) = conflict {
            self.unreported.lock().unwrap_or_else(PoisonError::into_inner).push(name);
        }
    }

    /// What is in the way of a new file at `path` (`path_rules`): checked
    /// at the first message of an upload, before its lock.
    pub fn path_conflict(&self, path: &str, case_twins: bool) -> Option<crate::path_rules::PathConflict> {
        self.catalog.path_conflict(path, case_twins)
    }

    /// The reply to a REQUEST of `path`; on 0x0001 the caller queues the
    /// path for that client (after the reply).
    pub fn request(&self, path: &str) -> StatusCode {
        if self.locks.holder(path).is_some() {
            return StatusCode::IN_USE;
        }
        if self.catalog.get(path).is_none() {
            return StatusCode::NO_FILE;
        }
        StatusCode::OK
    }

    /// Keeps `current` as a conflict copy first if the change's sender
    /// never saw it (the stale-change rule). Runs under the commit lock.
    fn conflict_if_stale(
        &self,
        current: Option<&Entry>,
        seen: &Mutex<SeenVersions>,
        now: WallTime,
    ) -> Result<Option<String>, CoreError> {
        let stale = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            must_keep_overwritten(current, &seen, self.conflict_copies)
        };
        match current {
            Some(cur) if stale => self.keep_conflict_copy(cur, now).map(Some),
            _ => Ok(None),
        }
    }

    /// Commits `current`'s content under a conflict-copy name, labelled
    /// with its uploader.
    fn keep_conflict_copy(&self, current: &Entry, now: WallTime) -> Result<String, CoreError> {
        let label = self.uploader_of(&current.path);
        let name = pick_conflict_name(&current.path, &label, now.secs(), |n| {
            self.catalog.get(n).is_some_and(|e| e.state == EntryState::File)
        });
        let strong = current.strong.ok_or_else(|| CoreError::Io(io::Error::other("content without a strong digest")))?;
        self.blobs.add_ref(&strong);
        let change = Change::File { md5: current.md5, size: current.size, mtime_ns: now.unix_ns, strong };
        match self.catalog.commit(&name, change) {
            // The name held no file (at most a tombstone, which refers to
            // no content), so no reference is released here.
            Ok(_) => {
                self.set_uploader(&name, &label);
                Ok(name)
            }
            Err(e) => {
                self.blobs.drop_ref(&strong);
                Err(e)
            }
        }
    }
}

/// Section 6: an upload whose content (`strong`, `size`) equals the current
/// version of a file changes nothing; the sender has seen that version.
fn unchanged(current: Option<&Entry>, strong: Strong, size: u64, seen: &Mutex<SeenVersions>) -> Option<Committed> {
    let cur = current.filter(|c| c.state == EntryState::File && c.strong == Some(strong) && c.size == size)?;
    seen.lock().unwrap_or_else(PoisonError::into_inner).saw(&cur.path, cur.version);
    Some(Committed::Unchanged)
}

#[path = "group_commit.rs"]
mod group_commit;
pub use group_commit::Pending;

#[cfg(test)]
#[path = "library_tests.rs"]
mod tests;
