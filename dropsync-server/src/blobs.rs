//! Committed file contents, stored by their SHA-256 under `<root>/blobs/`,
//! and the temp files uploads are written to under `<root>/tmp/`.
//!
//! Content is known by a strong hash, never by MD5 (PROTOCOL.md section 6:
//! two different files with one MD5 are easy to make): a temp file hashes
//! what is appended to it, and that digest names the blob, decides whether
//! two uploads are the same content, and counts references.
//!
//! Content addressing is what makes commits crash-safe without checking
//! every file at start-up: a blob is written to a temp file, fsynced and
//! renamed into place *before* the META-DATA line naming it is journaled, so
//! whatever the META-DATA says exists on disk. A crash in between leaves
//! only an unreferenced blob, removed at the next start. A blob never
//! changes once in place, so a thread sending it to a client never sees a
//! half-written version, and identical files (and conflict copies) share one.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use dropsync_io::dir_storage::sync_dir;
use dropsync_proto::digest::{bytes_from_hex, push_hex};
use dropsync_proto::metadata::Strong;
use dropsync_proto::Digest;
use sha2::{Digest as _, Sha256};

/// The blob directory with reference counts.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    refs: Mutex<HashMap<Strong, u64>>,
    next_tmp: AtomicU64,
    /// Prefix folders (`blobs/xx`, by first digest byte) known to exist:
    /// looked up in memory, not with a stat per blob.
    made_dirs: Mutex<[bool; 256]>,
    /// Prefix folders with a blob installed by
    /// [`install_unsynced`](Self::install_unsynced) since the last
    /// [`sync_installed`](Self::sync_installed).
    unsynced: Mutex<std::collections::BTreeSet<u8>>,
    /// Referenced blobs found missing at start: an upload of that content
    /// installs it again.
    missing: Mutex<HashSet<Strong>>,
    /// The bucket that holds the durable copy, when contents are in S3
    /// (`--blobs s3://...`); `blobs/` is then its local cache.
    remote: Option<crate::s3::Remote>,
    /// Other instances may share the bucket (the catalog is shared): the
    /// start-up sweep, which trusts this instance's counts, is off, and
    /// deletes go through the shared ledger (`gc`).
    remote_shared: bool,
    /// The shared ledger of contents no instance may rely on any more,
    /// with a shared catalog (`pg_gc`).
    gc: Option<std::sync::Arc<crate::pg_gc::PgGc>>,
}

/// An upload in progress: a temp file that is removed on drop unless it
/// was installed as a blob.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    file: Option<File>,
    /// SHA-256 of what was appended, computed as it is written.
    hasher: Sha256,
    /// Its data was made durable ([`TempBlob::make_all_durable`]).
    durable: bool,
}

impl TempBlob {
    /// Appends accepted chunk bytes (and hashes them).
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) => {
                f.write_all(data)?;
                self.hasher.update(data);
                Ok(())
            }
            None => Err(io::Error::other("temp file already closed")),
        }
    }

    /// Flushes the data of many temps (a group commit's) to the disk, their
    /// fsyncs side by side, before the commit lock is taken; the result of
    /// each. The commit lock is then held only for the renames and the
    /// catalog's own write.
    pub fn make_all_durable(temps: &mut [&mut TempBlob]) -> Vec<io::Result<()>> {
        let files: Vec<&File> = temps.iter().filter_map(|t| t.file.as_ref()).collect();
        let mut synced = dropsync_io::sync_many::sync_all(&files).into_iter();
        temps
            .iter_mut()
            .map(|t| {
                if t.file.is_none() {
                    return Ok(());
                }
                let r = synced.next().unwrap_or_else(|| Err(io::Error::other("not synced")));
                t.durable = r.is_ok();
                r
            })
            .collect()
    }

    /// Where the temp file is (until it is installed or dropped).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SHA-256 of everything appended so far.
    pub fn strong(&self) -> Strong {
        self.hasher.clone().finalize().into()
    }
}

/// The lower-case hex of a strong digest (a blob's file name).
fn strong_hex(key: &Strong) -> String {
    let mut s = String::with_capacity(64);
    push_hex(key, &mut s);
    s
}

/// The SHA-256 of a whole file, read in pieces.
fn hash_file(path: &Path) -> io::Result<Strong> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().into())
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    /// Opens `<root>/blobs` and `<root>/tmp`, deleting every leftover temp
    /// file (uploads that were never acknowledged).
    pub fn open(root: &Path) -> io::Result<Self> {
        let blobs = root.join("blobs");
        let tmp = root.join("tmp");
        fs::create_dir_all(&blobs)?;
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        Ok(Self { blobs, tmp, refs: Mutex::new(HashMap::new()), next_tmp: AtomicU64::new(0), made_dirs: Mutex::new([false; 256]), unsynced: Mutex::default(), missing: Mutex::new(HashSet::new()), remote: None, remote_shared: false, gc: None })
    }

    /// The same store with its durable copy in `remote` (S3), which other
    /// instances share when `shared`.
    pub fn with_remote(mut self, remote: crate::s3::Remote, gc: Option<std::sync::Arc<crate::pg_gc::PgGc>>) -> Self {
        self.remote = Some(remote);
        self.remote_shared = gc.is_some();
        self.gc = gc;
        self
    }

    /// Collects, across instances, contents no line names any more (the
    /// shared catalog's collector, `pg_gc`); how many objects went.
    pub fn collect_shared(&self, now_ns: i64) -> io::Result<usize> {
        match (&self.gc, &self.remote) {
            (Some(gc), Some(remote)) => gc.collect(remote, now_ns, 100),
            _ => Ok(0),
        }
    }

    /// With a shared bucket, before a commit relies on `key`'s object: off
    /// the candidates, then there (put from `local` if the bucket lacks it).
    fn rely_on(&self, key: &Strong, local: &Path) -> io::Result<()> {
        let (Some(gc), Some(remote)) = (&self.gc, &self.remote) else { return Ok(()) };
        gc.claim(key)?;
        if !remote.exists(key)? {
            remote.put(key, local)?;
        }
        Ok(())
    }

    /// Removes from the bucket every content nothing refers to that is
    /// older than `s3::ORPHAN_AGE` (a younger one may be an upload another
    /// instance is about to commit). Call after [`recover`](Self::recover).
    /// Returns how many went.
    pub fn sweep_remote(&self, now_secs: i64) -> io::Result<usize> {
        let Some(remote) = self.remote.as_ref().filter(|_| !self.remote_shared) else { return Ok(0) };
        let listed = remote.list()?;
        let refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        let mut gone = 0;
        for (key, modified) in listed {
            let age = rfc3339_secs(&modified).map(|t| now_secs - t);
            if !refs.contains_key(&key) && age.is_some_and(|a| a >= crate::s3::ORPHAN_AGE.as_secs() as i64) {
                remote.delete(&key)?;
                gone += 1;
            }
        }
        Ok(gone)
    }

    fn path_of(&self, key: &Strong) -> PathBuf {
        let hex = strong_hex(key);
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Where a store from before strong keys kept the content with MD5
    /// `md5` (`blobs/xx/<md5 hex>`).
    fn legacy_path_of(&self, md5: &Digest) -> PathBuf {
        let hex = dropsync_proto::digest::to_hex(md5);
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Gives the content a store from before strong keys kept under MD5
    /// `md5` its name by SHA-256, and returns that digest; `None` when there
    /// is no such file. Crash-safe: the new name is a hard link, made
    /// durable, and the old name stays until the caller has recorded the
    /// digests (it is then an orphan for [`recover`](Self::recover)). Done
    /// again after a crash, it finds the link already there.
    pub fn adopt_legacy(&self, md5: &Digest) -> io::Result<Option<Strong>> {
        let old = self.legacy_path_of(md5);
        let strong = match hash_file(&old) {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let target = self.path_of(&strong);
        let dir = target.parent().unwrap_or(&self.blobs);
        self.make_prefix_dir(strong[0], dir, false)?;
        match fs::hard_link(&old, &target) {
            Ok(()) => sync_dir(dir)?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(Some(strong))
    }

    /// Sets the reference counts from the loaded META-DATA and removes every
    /// blob nothing refers to (left by a crash between install and journal).
    /// Returns (orphans removed, referenced blobs missing).
    pub fn recover(&self, referenced: impl Iterator<Item = Strong>) -> io::Result<(usize, Vec<Strong>)> {
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        refs.clear();
        for d in referenced {
            *refs.entry(d).or_insert(0) += 1;
        }
        let mut orphans = 0;
        for dir in fs::read_dir(&self.blobs)? {
            let dir = dir?.path();
            if !dir.is_dir() {
                continue;
            }
            for f in fs::read_dir(&dir)? {
                let f = f?.path();
                let known = f.file_name().and_then(|n| n.to_str()).and_then(bytes_from_hex::<32>);
                if known.is_none_or(|d| !refs.contains_key(&d)) {
                    fs::remove_file(&f)?;
                    orphans += 1;
                }
            }
        }
        // With a bucket, the local folder is a cache: what it lacks is
        // fetched when needed.
        let missing: Vec<Strong> = match &self.remote {
            Some(_) => Vec::new(),
            None => refs.keys().filter(|d| !self.path_of(d).exists()).copied().collect(),
        };
        *self.missing.lock().unwrap_or_else(PoisonError::into_inner) = missing.iter().copied().collect();
        Ok((orphans, missing))
    }

    /// A new temp file for an upload.
    pub fn temp(&self) -> io::Result<TempBlob> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("upload-{n}"));
        let file = File::create(&path)?;
        Ok(TempBlob { path, file: Some(file), hasher: Sha256::new(), durable: false })
    }

    /// Makes `temp` durable as the blob of its SHA-256 (returned): fsync,
    /// rename into place, fsync the directory. If that blob already exists
    /// the temp file is simply dropped.
    pub fn install(&self, temp: TempBlob) -> io::Result<Strong> {
        self.install_as(temp, true)
    }

    /// [`install`](Self::install) for a group commit: the blob folder's
    /// fsync waits for [`sync_installed`](Self::sync_installed), shared by
    /// the batch. With contents in a bucket, the PUT is what makes the
    /// content durable, and it is made at once.
    pub fn install_unsynced(&self, temp: TempBlob) -> io::Result<Strong> {
        self.install_as(temp, self.remote.is_some())
    }

    /// Syncs the blob folders of the installs since the last call.
    pub fn sync_installed(&self) -> io::Result<()> {
        let dirs = std::mem::take(&mut *self.unsynced.lock().unwrap_or_else(PoisonError::into_inner));
        for dir in dirs {
            sync_dir(&self.blobs.join(format!("{dir:02x}")))?;
        }
        Ok(())
    }

    fn install_as(&self, mut temp: TempBlob, sync_now: bool) -> io::Result<Strong> {
        let key = temp.strong();
        let digest = &key;
        let Some(file) = temp.file.take() else {
            return Err(io::Error::other("temp file already closed"));
        };
        let target = self.path_of(digest);
        // A referenced blob exists (the counts are set from the disk at
        // start and kept with every install and removal): no stat needed.
        let was_missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner).contains(digest);
        if !was_missing && self.refs.lock().unwrap_or_else(PoisonError::into_inner).contains_key(digest) {
            drop(file);
            // Stored already; with a shared bucket, made sure of first.
            let relied = self.rely_on(digest, &temp.path);
            fs::remove_file(&temp.path)?;
            return relied.map(|()| key);
        }
        if !temp.durable {
            file.sync_all()?;
        }
        drop(file);
        let dir = target.parent().unwrap_or(&self.blobs);
        self.make_prefix_dir(digest[0], dir, false)?;
        if let Err(e) = fs::rename(&temp.path, &target) {
            if e.kind() != io::ErrorKind::NotFound {
                return Err(e);
            }
            // The folder went away under us: make it again, once.
            self.make_prefix_dir(digest[0], dir, true)?;
            fs::rename(&temp.path, &target)?;
        }
        if sync_now {
            sync_dir(dir)?;
        } else {
            self.unsynced.lock().unwrap_or_else(PoisonError::into_inner).insert(digest[0]);
        }
        // In the bucket before any catalog line names it.
        if let Some(remote) = &self.remote {
            match &self.gc {
                Some(gc) => {
                    gc.claim(digest)?;
                    remote.put(digest, &target)?;
                }
                None => remote.put(digest, &target)?,
            }
        }
        if was_missing {
            self.missing.lock().unwrap_or_else(PoisonError::into_inner).remove(digest);
        }
        Ok(key)
    }

    /// Makes blob folder `dir` (prefix `prefix`) unless it is known to
    /// exist (`again`: known wrongly), durably in `blobs/`.
    fn make_prefix_dir(&self, prefix: u8, dir: &Path, again: bool) -> io::Result<()> {
        let mut made = self.made_dirs.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut made[usize::from(prefix)];
        if *slot && !again {
            return Ok(());
        }
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            sync_dir(&self.blobs)?;
        }
        *slot = true;
        Ok(())
    }

    /// How many distinct contents are stored (one map lookup's lock: cheap
    /// enough for every metrics scrape).
    pub fn blob_count(&self) -> usize {
        self.refs.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// Opens a blob for reading; with a bucket, one the local cache lacks
    /// is fetched first (whole, verified, then renamed into place).
    pub fn open_blob(&self, key: &Strong) -> io::Result<File> {
        let path = self.path_of(key);
        match (File::open(&path), &self.remote) {
            (Err(e), Some(remote)) if e.kind() == io::ErrorKind::NotFound => {
                let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
                let tmp = self.tmp.join(format!("fetch-{n}"));
                let fetched = remote.get(key, &tmp).and_then(|()| {
                    let dir = path.parent().unwrap_or(&self.blobs);
                    self.make_prefix_dir(key[0], dir, false)?;
                    fs::rename(&tmp, &path)
                });
                if fetched.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                fetched?;
                File::open(&path)
            }
            (opened, _) => opened,
        }
    }

    /// One more META-DATA entry refers to `digest`.
    pub fn add_ref(&self, digest: &Strong) {
        *self.refs.lock().unwrap_or_else(PoisonError::into_inner).entry(*digest).or_insert(0) += 1;
    }

    /// One fewer entry refers to `digest`; the blob is removed when none
    /// does. Call only after the META-DATA change is durable.
    pub fn drop_ref(&self, digest: &Strong) {
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(n) = refs.get_mut(digest) else { return };
        *n -= 1;
        if *n == 0 {
            refs.remove(digest);
            // A sender that already opened it keeps reading the open file.
            let _ = fs::remove_file(self.path_of(digest));
            if let Some(gc) = &self.gc {
                if let Err(e) = gc.candidate(digest, crate::clock::now_ns()) {
                    log::warn!("cannot record a content this instance no longer refers to (its object stays): {e}");
                }
            } else if let Some(remote) = &self.remote {
                if let Err(e) = remote.delete(digest) {
                    log::warn!("cannot delete a content nothing refers to from the bucket (the next start's sweep will): {e}");
                }
            }
        }
    }
}

/// Seconds since the epoch of an RFC 3339 time as S3 gives it
/// (`2026-12-07T01:40:00.000Z`), to whole seconds.
fn rfc3339_secs(text: &str) -> Option<i64> {
    let head = text.get(..19)?.replace('T', " ");
    dropsync_core::utc::parse(&head)
}

/// What core's commit rules need of a content store.
impl dropsync_core::library::BlobStore for BlobStore {
    type Temp = TempBlob;
    type Reader = File;
    fn temp(&self) -> io::Result<TempBlob> {
        BlobStore::temp(self)
    }
    fn open(&self, key: &Strong) -> io::Result<File> {
        self.open_blob(key)
    }
    fn strong_of(&self, temp: &TempBlob) -> Strong {
        temp.strong()
    }
    fn install(&self, temp: TempBlob) -> io::Result<Strong> {
        BlobStore::install(self, temp)
    }
    fn install_unsynced(&self, temp: TempBlob) -> io::Result<Strong> {
        BlobStore::install_unsynced(self, temp)
    }
    fn sync_installed(&self) -> io::Result<()> {
        BlobStore::sync_installed(self)
    }
    fn add_ref(&self, key: &Strong) {
        BlobStore::add_ref(self, key)
    }
    fn drop_ref(&self, key: &Strong) {
        BlobStore::drop_ref(self, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn sha256(bytes: &[u8]) -> Strong {
        Sha256::digest(bytes).into()
    }

    fn stored(store: &BlobStore, bytes: &[u8]) -> Strong {
        let mut t = store.temp().unwrap();
        t.append(bytes).unwrap();
        let d = store.install(t).unwrap();
        assert_eq!(d, sha256(bytes));
        d
    }

    /// Installing known content again leaves one blob and no temp file; a
    /// blob found missing at start is installed again by the next upload of
    /// that content.
    #[test]
    fn content_is_stored_once_and_a_missing_blob_comes_back() {
        let root = std::env::temp_dir().join(format!("dropsync-blobs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = BlobStore::open(&root).unwrap();
        let d = stored(&store, b"hello");
        store.add_ref(&d);
        assert_eq!(stored(&store, b"hello"), d);
        assert_eq!(fs::read(store.path_of(&d)).unwrap(), b"hello");
        assert_eq!(fs::read_dir(root.join("tmp")).unwrap().count(), 0, "the second temp file is removed");

        fs::remove_file(store.path_of(&d)).unwrap();
        let (orphans, missing) = store.recover([d].into_iter()).unwrap();
        assert_eq!((orphans, missing), (0, vec![d]));
        stored(&store, b"hello");
        assert_eq!(fs::read(store.path_of(&d)).unwrap(), b"hello", "installed again");

        // A blob folder removed under the running server is made again.
        let other = sha256(b"other");
        fs::remove_dir_all(root.join("blobs")).unwrap();
        fs::create_dir(root.join("blobs")).unwrap();
        let mut t = store.temp().unwrap();
        t.append(b"hello").unwrap();
        store.refs.lock().unwrap().clear();
        assert_eq!(store.install(t).unwrap(), d);
        assert_eq!(fs::read(store.path_of(&d)).unwrap(), b"hello");
        assert_eq!(stored(&store, b"other"), other);
        fs::remove_dir_all(&root).unwrap();
    }

    /// The published MD5 collision pair (Wang et al., 2004): two different
    /// 128-byte blocks with one MD5. Stored by SHA-256, each keeps its bytes.
    pub const COLLISION_A: &str = "d131dd02c5e6eec4693d9a0698aff95c2fcab58712467eab4004583eb8fb7f8955ad340609f4b30283e488832571415a085125e8f7cdc99fd91dbdf280373c5bd8823e3156348f5bae6dacd436c919c6dd53e2b487da03fd02396306d248cda0e99f33420f577ee8ce54b67080a80d1ec69821bcb6a8839396f9652b6ff72a70";
    /// The other half of the pair.
    pub const COLLISION_B: &str = "d131dd02c5e6eec4693d9a0698aff95c2fcab50712467eab4004583eb8fb7f8955ad340609f4b30283e4888325f1415a085125e8f7cdc99fd91dbd7280373c5bd8823e3156348f5bae6dacd436c919c6dd53e23487da03fd02396306d248cda0e99f33420f577ee8ce54b67080280d1ec69821bcb6a8839396f965ab6ff72a70";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn two_files_with_one_md5_are_two_blobs() {
        let (a, b) = (unhex(COLLISION_A), unhex(COLLISION_B));
        assert_ne!(a, b);
        assert_eq!(dropsync_proto::md5(&a), dropsync_proto::md5(&b), "the pair collides");
        let root = std::env::temp_dir().join(format!("dropsync-blobs-collide-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = BlobStore::open(&root).unwrap();
        let (ka, kb) = (stored(&store, &a), stored(&store, &b));
        store.add_ref(&ka);
        store.add_ref(&kb);
        assert_ne!(ka, kb);
        assert_eq!(fs::read(store.path_of(&ka)).unwrap(), a);
        assert_eq!(fs::read(store.path_of(&kb)).unwrap(), b);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_blob_stored_by_md5_is_adopted_under_its_sha256() {
        let root = std::env::temp_dir().join(format!("dropsync-blobs-legacy-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let store = BlobStore::open(&root).unwrap();
        let md5 = dropsync_proto::md5(b"old layout");
        let old = store.legacy_path_of(&md5);
        fs::create_dir_all(old.parent().unwrap()).unwrap();
        fs::write(&old, b"old layout").unwrap();
        let key = store.adopt_legacy(&md5).unwrap();
        assert_eq!(key, Some(sha256(b"old layout")));
        // Again (as after a crash before the digests were recorded).
        assert_eq!(store.adopt_legacy(&md5).unwrap(), key);
        assert_eq!(store.adopt_legacy(&dropsync_proto::md5(b"none")).unwrap(), None);
        // Once recorded, the old name is an orphan.
        let (orphans, missing) = store.recover(key.into_iter()).unwrap();
        assert_eq!((orphans, missing.len()), (1, 0));
        assert!(!old.exists());
        assert_eq!(fs::read(store.path_of(&sha256(b"old layout"))).unwrap(), b"old layout");
        fs::remove_dir_all(&root).unwrap();
    }
}
