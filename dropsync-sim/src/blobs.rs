//! The server's disk in memory: the content store behind core's
//! `BlobStore` (what was installed survives a crash of the simulated
//! server: it was made durable before any catalog line named it; temps do
//! not; a "disk full" switch makes new uploads fail), and the catalog's
//! storage behind core's `Storage`, whose last append a crash may tear (a
//! crash in the middle of it, before its commit was acknowledged: what
//! was synced survives, the rest is a prefix, as the ALICE study found
//! file systems leave it).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};

use dropsync_core::library::BlobStore;
use dropsync_core::storage::{MemStorage, Storage};
use dropsync_proto::metadata::Strong;
use sha2::{Digest as _, Sha256};

/// An upload being written.
#[derive(Debug)]
pub struct SimTemp {
    bytes: Vec<u8>,
    open: Arc<Mutex<usize>>,
}

impl SimTemp {
    /// A new temp, counted in `open` until it is dropped.
    pub fn new(open: Arc<Mutex<usize>>) -> Self {
        *open.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        SimTemp { bytes: Vec::new(), open }
    }

    /// What was written.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Appends `bytes`.
    pub fn append(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
    }
}

impl Drop for SimTemp {
    fn drop(&mut self) {
        let mut n = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
    }
}

#[derive(Debug, Default)]
struct Stored {
    bytes: HashMap<Strong, Arc<Vec<u8>>>,
    refs: HashMap<Strong, u64>,
}

/// The store. Clones share it (the server keeps one across restarts).
#[derive(Debug, Clone, Default)]
pub struct MemBlobs {
    stored: Arc<Mutex<Stored>>,
    open: Arc<Mutex<usize>>,
    full: Arc<Mutex<bool>>,
}

impl MemBlobs {
    fn stored(&self) -> std::sync::MutexGuard<'_, Stored> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Temps not yet installed or dropped.
    pub fn temps_open(&self) -> usize {
        *self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes new uploads fail (`true`) or work again.
    pub fn set_full(&self, full: bool) {
        *self.full.lock().unwrap_or_else(PoisonError::into_inner) = full;
    }

    /// The bytes of `key`, if stored.
    pub fn get(&self, key: &Strong) -> Option<Arc<Vec<u8>>> {
        self.stored().bytes.get(key).cloned()
    }

    /// After a restart: the reference counts are the catalog's to rebuild.
    pub fn reset_refs(&self) {
        self.stored().refs.clear();
    }

    /// At start, once the catalog's references are counted: contents no
    /// line names (an install whose commit never became durable) go, as the
    /// real server's `BlobStore::recover` removes orphans. Returns how many.
    pub fn remove_orphans(&self) -> usize {
        let mut s = self.stored();
        let before = s.bytes.len();
        let Stored { bytes, refs } = &mut *s;
        bytes.retain(|k, _| refs.contains_key(k));
        before - bytes.len()
    }

    /// Stored contents with no reference (leaked by a commit that failed
    /// half-way, or by a reference count gone wrong).
    pub fn unreferenced(&self) -> usize {
        let s = self.stored();
        s.bytes.keys().filter(|k| !s.refs.contains_key(*k)).count()
    }

    /// The SHA-256 of `bytes`.
    pub fn strong(bytes: &[u8]) -> Strong {
        Sha256::digest(bytes).into()
    }
}

impl BlobStore for MemBlobs {
    type Temp = SimTemp;
    type Reader = Arc<Vec<u8>>;

    fn temp(&self) -> io::Result<SimTemp> {
        if *self.full.lock().unwrap_or_else(PoisonError::into_inner) {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device (simulated)"));
        }
        Ok(SimTemp::new(self.open.clone()))
    }

    fn open(&self, key: &Strong) -> io::Result<Arc<Vec<u8>>> {
        self.get(key).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such content"))
    }

    fn strong_of(&self, temp: &SimTemp) -> Strong {
        Self::strong(&temp.bytes)
    }

    fn install(&self, temp: SimTemp) -> io::Result<Strong> {
        let key = Self::strong(&temp.bytes);
        let mut s = self.stored();
        s.bytes.entry(key).or_insert_with(|| Arc::new(temp.bytes.clone()));
        Ok(key)
    }

    fn add_ref(&self, key: &Strong) {
        *self.stored().refs.entry(*key).or_insert(0) += 1;
    }

    fn drop_ref(&self, key: &Strong) {
        let mut s = self.stored();
        let Some(n) = s.refs.get_mut(key) else { return };
        *n -= 1;
        if *n == 0 {
            s.refs.remove(key);
            s.bytes.remove(key);
        }
    }
}

/// The catalog's storage: in memory, with the last append remembered so a
/// crash during it can tear it.
#[derive(Debug, Default)]
pub struct SimStorage {
    inner: MemStorage,
    last_append: Mutex<Option<(String, usize)>>,
}

impl SimStorage {
    fn last(&self) -> std::sync::MutexGuard<'_, Option<(String, usize)>> {
        self.last_append.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A crash in the middle of the last append: only `keep(len)` of its
    /// `len` bytes reached the disk (`keep` < `len`). False if the last
    /// write was not an append (a replace is atomic).
    pub fn tear_last_append(&self, keep: impl FnOnce(usize) -> usize) -> bool {
        let Some((name, len)) = self.last().take() else { return false };
        let Ok(Some(mut bytes)) = self.inner.read(&name) else { return false };
        let kept = keep(len).min(len.saturating_sub(1));
        bytes.truncate(bytes.len() - len + kept);
        self.inner.replace(&name, &bytes).is_ok()
    }
}

impl Storage for SimStorage {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        self.inner.read(name)
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        *self.last() = None;
        self.inner.replace(name, bytes)
    }
    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        *self.last() = Some((name.to_owned(), bytes.len()));
        self.inner.append(name, bytes)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        *self.last() = None;
        self.inner.remove(name)
    }
}
