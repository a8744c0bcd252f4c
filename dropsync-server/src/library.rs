//! The server's synchronized META-DATA with per-file locks (ASSIGNMENT.md
//! "Synchronization", PROTOCOL.md section 6): the catalog, the blob store,
//! the lock table and the commit rules, including the stale-change rule.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use dropsync_core::conflict::pick_conflict_name;
use dropsync_core::locks::{LockTable, MemLockTable};
use dropsync_core::meta_server::{Catalog, Change, MemCatalog};
use dropsync_core::stale::{must_keep_overwritten, SeenVersions};
use dropsync_io::dir_storage::DirStorage;
use dropsync_core::CoreError;
use dropsync_proto::metadata::{Entry, EntryState, Strong};
use dropsync_proto::Digest;

use crate::blobs::{BlobStore, TempBlob};
use crate::clock;

/// What a commit did, for the caller's reply and fan-out.
#[derive(Debug)]
pub enum Committed {
    /// A new version: `entry`; `conflict` names the conflict copy that was
    /// made of the overwritten version first, if any.
    New {
        /// The committed line.
        entry: Entry,
        /// The conflict copy's path.
        conflict: Option<String>,
    },
    /// The upload equals the current version: nothing changed (section 6).
    Unchanged,
    /// DELETE of an unknown path or a tombstone: 0x0020.
    NoFile,
}

/// Everything the server knows about files.
pub struct Library {
    /// The META-DATA table.
    pub catalog: MemCatalog<DirStorage>,
    /// Committed contents.
    pub blobs: BlobStore,
    /// Per-path write locks.
    pub locks: Arc<dyn LockTable>,
    /// Label of each path's last uploader (for conflict-copy names; not
    /// persisted: after a restart it is "unknown", as section 6 says).
    uploaders: Mutex<HashMap<String, String>>,
    /// Serializes commits so that reference counts and conflict names are
    /// decided on a table no one else is changing.
    commit_lock: Mutex<()>,
    conflict_copies: bool,
}

impl Library {
    /// Opens the storage under `root` and reconciles the blobs with the
    /// META-DATA (removes orphans, reports missing ones).
    pub fn open(root: &Path, conflict_copies: bool) -> Result<Self, CoreError> {
        let catalog = MemCatalog::open(DirStorage::new(root.join("meta"))?)?;
        let blobs = BlobStore::open(root)?;
        adopt_legacy_blobs(&catalog, &blobs)?;
        let referenced: Vec<Strong> = catalog.with_table(|t| {
            t.entries().filter(|e| e.state == EntryState::File).filter_map(|e| e.strong).collect()
        });
        let (orphans, missing) = blobs.recover(referenced.into_iter())?;
        if orphans > 0 {
            log::info!("removed {orphans} unreferenced blob(s) left by an interrupted commit or an older layout");
        }
        if !missing.is_empty() {
            log::error!("META-DATA refers to {} missing content blob(s)", missing.len());
        }
        Ok(Self {
            catalog,
            blobs,
            locks: Arc::new(MemLockTable::new()),
            uploaders: Mutex::new(HashMap::new()),
            commit_lock: Mutex::new(()),
            conflict_copies,
        })
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

    /// Keeps `current` (content its sender never saw) under a conflict-copy
    /// name before it is overwritten. Must run under the commit lock.
    fn keep_conflict_copy(&self, current: &Entry) -> Result<String, CoreError> {
        let label = self.uploader_of(&current.path);
        let name = pick_conflict_name(&current.path, &label, clock::now_secs(), |n| {
            self.catalog.get(n).is_some_and(|e| e.state == EntryState::File)
        });
        let strong = current.strong.ok_or_else(|| CoreError::Io(io::Error::other("content without a strong digest")))?;
        self.blobs.add_ref(&strong);
        let change = Change::File { md5: current.md5, size: current.size, mtime_ns: clock::now_ns(), strong };
        match self.catalog.commit(&name, change) {
            // The name held no file (at most a tombstone, which refers to
            // no blob), so no reference is released here.
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

    /// Commits an uploaded file whose whole-file MD5 checked out. The
    /// caller holds the path's lock. Its content is known by the SHA-256
    /// its temp file computed as it was written (section 6: never by MD5
    /// alone): that decides whether it equals the current version, and
    /// names its blob.
    pub fn commit_upload(
        &self,
        path: &str,
        temp: TempBlob,
        digest: Digest,
        size: u64,
        seen: &Mutex<SeenVersions>,
        label: &str,
    ) -> Result<Committed, CoreError> {
        let strong = temp.strong();
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.catalog.get(path);
        if let Some(cur) = &current {
            if cur.state == EntryState::File && cur.strong == Some(strong) && cur.size == size {
                seen.lock().unwrap_or_else(PoisonError::into_inner).saw(path, cur.version);
                return Ok(Committed::Unchanged);
            }
        }
        let strong = self.blobs.install(temp).map_err(CoreError::Io)?;
        let conflict = self.conflict_if_stale(current.as_ref(), seen)?;
        self.blobs.add_ref(&strong);
        let entry = match self.catalog.commit(path, Change::File { md5: digest, size, mtime_ns: clock::now_ns(), strong }) {
            Ok(e) => e,
            Err(e) => {
                self.blobs.drop_ref(&strong);
                return Err(e);
            }
        };
        if let Some(old) = current.filter(|c| c.state == EntryState::File).and_then(|c| c.strong) {
            self.blobs.drop_ref(&old);
        }
        self.set_uploader(path, label);
        seen.lock().unwrap_or_else(PoisonError::into_inner).saw(path, entry.version);
        Ok(Committed::New { entry, conflict })
    }

    /// Commits a DELETE. The caller holds the path's lock.
    pub fn commit_delete(&self, path: &str, seen: &Mutex<SeenVersions>) -> Result<Committed, CoreError> {
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let current = match self.catalog.get(path) {
            Some(c) if c.state == EntryState::File => c,
            _ => return Ok(Committed::NoFile),
        };
        let conflict = self.conflict_if_stale(Some(&current), seen)?;
        let entry = self.catalog.commit(path, Change::Delete { mtime_ns: clock::now_ns() })?;
        if let Some(old) = current.strong {
            self.blobs.drop_ref(&old);
        }
        seen.lock().unwrap_or_else(PoisonError::into_inner).saw(path, entry.version);
        Ok(Committed::New { entry, conflict })
    }

    fn conflict_if_stale(&self, current: Option<&Entry>, seen: &Mutex<SeenVersions>) -> Result<Option<String>, CoreError> {
        let stale = {
            let seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
            must_keep_overwritten(current, &seen, self.conflict_copies)
        };
        match current {
            Some(cur) if stale => {
                let name = self.keep_conflict_copy(cur)?;
                log::info!("{}: overwrites version {} its sender never saw; kept as {name:?}", cur.path, cur.version);
                Ok(Some(name))
            }
            _ => Ok(None),
        }
    }

    /// Opens the committed content of `entry` for sending.
    pub fn open_content(&self, entry: &Entry) -> io::Result<std::fs::File> {
        match &entry.strong {
            Some(key) => self.blobs.open_blob(key),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "content without a strong digest")),
        }
    }
}

/// A store written before content was known by SHA-256 keeps blobs under
/// their MD5 and lines without a strong digest: each such file's blob is
/// hashed and adopted under its SHA-256 (`BlobStore::adopt_legacy`), the
/// digests are recorded in the table, and a snapshot makes them durable.
/// Content shared by several paths (one MD5 then) is hashed once.
fn adopt_legacy_blobs(catalog: &MemCatalog<DirStorage>, blobs: &BlobStore) -> Result<(), CoreError> {
    let legacy: Vec<(String, Digest)> = catalog.with_table(|t| {
        t.entries().filter(|e| e.state == EntryState::File && e.strong.is_none()).map(|e| (e.path.clone(), e.md5)).collect()
    });
    if legacy.is_empty() {
        return Ok(());
    }
    log::info!("adopting {} file(s) stored by MD5 under their SHA-256", legacy.len());
    let mut known: HashMap<Digest, Option<Strong>> = HashMap::new();
    for (path, md5) in legacy {
        let strong = match known.get(&md5) {
            Some(s) => *s,
            None => {
                let s = blobs.adopt_legacy(&md5).map_err(CoreError::Io)?;
                known.insert(md5, s);
                s
            }
        };
        match strong {
            Some(s) => {
                catalog.set_strong(&path, s);
            }
            None => log::error!("{path:?}: its content (MD5 {}) is missing", dropsync_proto::digest::to_hex(&md5)),
        }
    }
    catalog.compact()
}
