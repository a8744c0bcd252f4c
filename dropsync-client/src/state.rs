//! The client's state shared between its threads, and its META-DATA file
//! `<folder>/.dropsync/metadata` (PROTOCOL.md section 5; the states it uses
//! are documented in `dropsync_core::meta_client`).
//!
//! One mutex guards everything the control thread and the receive thread
//! both touch: the per-path records, and the paths each of them has a
//! transfer open for. It is only ever held for bookkeeping and renames,
//! never while a socket is read or written, nor while a file is hashed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use dropsync_core::meta_client::{ClientMeta, ClientRecord, LocalSeen};
use dropsync_core::reconcile::Content;
use dropsync_core::storage::replace_file;
use dropsync_proto::ClientId;

use crate::paths::STATE_DIR;

/// File name of the client's META-DATA inside the state folder.
pub const METADATA_FILE: &str = "metadata";

/// Folder (inside the state folder) for incoming files being received.
pub const TMP_DIR: &str = "tmp";

/// What the threads share, behind [`Shared::lock`].
#[derive(Debug)]
pub struct State {
    /// The client's id and per-path records.
    pub meta: ClientMeta,
    /// True when `meta` changed since it was last saved.
    pub unsaved: bool,
    /// Paths with an upload or DELETE of ours under way, from its first
    /// message to the reply that ends it. An incoming transfer or DELETE of
    /// one of these is refused with 0x0080 (PROTOCOL.md section 7).
    pub outgoing: HashSet<String>,
    /// Paths with an incoming transfer open on the receive connection.
    pub incoming: HashSet<String>,
}

impl State {
    /// The record of `name` (an empty one if there is none).
    pub fn record(&self, name: &str) -> ClientRecord {
        self.meta.records.get(name).copied().unwrap_or_default()
    }

    /// Records that `name` now holds `content`, in common with the server
    /// (after an accepted upload or a received file), as seen at `mtime_ns`.
    pub fn set_synced(&mut self, name: &str, content: Content, mtime_ns: i64) {
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        rec.base = Some(content);
        rec.base_version = 0;
        rec.local = Some(LocalSeen { mtime_ns, content });
        self.unsaved = true;
    }

    /// Records that `name` is gone on both sides (an accepted or received
    /// delete).
    pub fn set_deleted(&mut self, name: &str) {
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        *rec = ClientRecord { base: None, base_version: rec.base_version, local: None };
        self.unsaved = true;
    }

    /// Records what the local file of `name` is now, leaving its base. A
    /// path never seen before and absent now gets no record (editors' short
    /// lived temp files would otherwise pile up as tombstones).
    pub fn set_local(&mut self, name: &str, local: Option<LocalSeen>) {
        if local.is_none() && !self.meta.records.contains_key(name) {
            return;
        }
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        if rec.local != local {
            rec.local = local;
            self.unsaved = true;
        }
    }

    /// Sets the base of `name` (reconciliation's "record it").
    pub fn set_base(&mut self, name: &str, base: Option<Content>, version: u64) {
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        rec.base = base;
        rec.base_version = version;
        self.unsaved = true;
    }
}

/// The shared state.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<State>,
}

impl Shared {
    /// Wraps a loaded META-DATA.
    pub fn new(meta: ClientMeta) -> Self {
        Shared {
            inner: Mutex::new(State { meta, unsaved: false, outgoing: HashSet::new(), incoming: HashSet::new() }),
        }
    }

    /// Locks the state. A thread that panicked while holding it left
    /// consistent data (every update is a single assignment), so a poisoned
    /// lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every thread of the client needs to know, fixed for its lifetime.
#[derive(Debug)]
pub struct Ctx {
    /// The synced folder (canonical).
    pub root: PathBuf,
    /// Where incoming files are written before they are renamed into place.
    pub tmp_dir: PathBuf,
    /// This client's label (HELLO, conflict-copy names).
    pub label: String,
    /// Keep conflict copies (section 7 [ext]); false: plain overwrite.
    pub conflict_copies: bool,
    /// The shared state.
    pub shared: Shared,
}

/// The META-DATA file on disk.
#[derive(Debug)]
pub struct MetaFile {
    path: PathBuf,
}

impl MetaFile {
    /// The META-DATA file of the folder `root`, creating its state folder
    /// and emptying the temp folder (files left by a crash mid-transfer).
    pub fn prepare(root: &Path) -> io::Result<(Self, PathBuf)> {
        let state_dir = root.join(STATE_DIR);
        let tmp_dir = state_dir.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir)?;
        for entry in fs::read_dir(&tmp_dir)?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok((MetaFile { path: state_dir.join(METADATA_FILE) }, tmp_dir))
    }

    /// Loads the META-DATA, or starts a new one with a fresh client id on
    /// the first run. A file that cannot be parsed is moved aside (its name
    /// is logged) and a new one started: reconciliation then compares
    /// contents without a base, which at worst keeps extra conflict copies.
    pub fn load(&self) -> io::Result<ClientMeta> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let parsed = String::from_utf8(bytes).map_err(|e| e.to_string()).and_then(|text| {
                    ClientMeta::parse(&text).map_err(|e| e.to_string())
                });
                match parsed {
                    Ok(meta) => return Ok(meta),
                    Err(e) => {
                        let stamp = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let aside = self.path.with_extension(format!("corrupt-{stamp}"));
                        log::error!(
                            "{}: {e}; moved to {} and starting afresh with a new client id",
                            self.path.display(),
                            aside.display()
                        );
                        fs::rename(&self.path, &aside)?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let meta = ClientMeta::new(new_client_id()?);
        self.save(&meta.render())?;
        Ok(meta)
    }

    /// Replaces the file atomically (temp file, fsync, rename).
    pub fn save(&self, text: &str) -> io::Result<()> {
        replace_file(&self.path, text.as_bytes())
    }

    /// Saves the shared state if it changed since the last save. Only one
    /// thread (the control thread) saves, so saves never interleave.
    pub fn save_if_changed(&self, shared: &Shared) {
        let text = {
            let mut st = shared.lock();
            if !st.unsaved {
                return;
            }
            st.unsaved = false;
            st.meta.render()
        };
        if let Err(e) = self.save(&text) {
            log::error!("cannot save {}: {e}", self.path.display());
            shared.lock().unsaved = true;
        }
    }
}

/// A fresh random client id (PROTOCOL.md section 1: "made on the client's
/// first run and kept in its META-DATA").
fn new_client_id() -> io::Result<ClientId> {
    let mut id = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_made_once_and_kept() {
        let root = std::env::temp_dir().join(format!("dropsync-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let (file, tmp) = MetaFile::prepare(&root).unwrap();
        assert!(tmp.is_dir());
        let first = file.load().unwrap();
        assert_ne!(first.client_id, [0; 16]);
        let shared = Shared::new(first.clone());
        shared.lock().set_synced("a", Content { md5: [1; 16], size: 1 }, 5);
        file.save_if_changed(&shared);
        let again = file.load().unwrap();
        assert_eq!(again.client_id, first.client_id);
        assert_eq!(again.records["a"].base, Some(Content { md5: [1; 16], size: 1 }));

        fs::write(root.join(".dropsync/metadata"), "garbage").unwrap();
        let fresh = file.load().unwrap();
        assert_ne!(fresh.client_id, first.client_id);
        assert!(fresh.records.is_empty());
        fs::remove_dir_all(&root).unwrap();
    }
}
