//! Committed file contents, stored by MD5 under `<root>/blobs/`, and the
//! temp files uploads are written to under `<root>/tmp/`.
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
use dropsync_proto::digest::{from_hex, to_hex};
use dropsync_proto::Digest;

/// The blob directory with reference counts.
#[derive(Debug)]
pub struct BlobStore {
    blobs: PathBuf,
    tmp: PathBuf,
    refs: Mutex<HashMap<Digest, u64>>,
    next_tmp: AtomicU64,
    /// Prefix folders (`blobs/xx`, by first digest byte) known to exist:
    /// looked up in memory, not with a stat per blob.
    made_dirs: Mutex<[bool; 256]>,
    /// Referenced blobs found missing at start: an upload of that content
    /// installs it again.
    missing: Mutex<HashSet<Digest>>,
}

/// An upload in progress: a temp file that is removed on drop unless it
/// was installed as a blob.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    file: Option<File>,
}

impl TempBlob {
    /// Appends accepted chunk bytes.
    pub fn append(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(data),
            None => Err(io::Error::other("temp file already closed")),
        }
    }
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
        Ok(Self { blobs, tmp, refs: Mutex::new(HashMap::new()), next_tmp: AtomicU64::new(0), made_dirs: Mutex::new([false; 256]), missing: Mutex::new(HashSet::new()) })
    }

    fn path_of(&self, digest: &Digest) -> PathBuf {
        let hex = to_hex(digest);
        self.blobs.join(&hex[..2]).join(hex)
    }

    /// Sets the reference counts from the loaded META-DATA and removes every
    /// blob nothing refers to (left by a crash between install and journal).
    /// Returns (orphans removed, referenced blobs missing).
    pub fn recover(&self, referenced: impl Iterator<Item = Digest>) -> io::Result<(usize, Vec<Digest>)> {
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
                let known = f.file_name().and_then(|n| n.to_str()).and_then(from_hex);
                if known.is_none_or(|d| !refs.contains_key(&d)) {
                    fs::remove_file(&f)?;
                    orphans += 1;
                }
            }
        }
        let missing: Vec<Digest> = refs.keys().filter(|d| !self.path_of(d).exists()).copied().collect();
        *self.missing.lock().unwrap_or_else(PoisonError::into_inner) = missing.iter().copied().collect();
        Ok((orphans, missing))
    }

    /// A new temp file for an upload.
    pub fn temp(&self) -> io::Result<TempBlob> {
        let n = self.next_tmp.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp.join(format!("upload-{n}"));
        let file = File::create(&path)?;
        Ok(TempBlob { path, file: Some(file) })
    }

    /// Makes `temp` (whose content has MD5 `digest`) durable as a blob: fsync,
    /// rename into place, fsync the directory. If the blob already exists
    /// the temp file is simply dropped.
    pub fn install(&self, mut temp: TempBlob, digest: &Digest) -> io::Result<()> {
        let Some(file) = temp.file.take() else {
            return Err(io::Error::other("temp file already closed"));
        };
        let target = self.path_of(digest);
        // A referenced blob exists (the counts are set from the disk at
        // start and kept with every install and removal): no stat needed.
        let was_missing = self.missing.lock().unwrap_or_else(PoisonError::into_inner).contains(digest);
        if !was_missing && self.refs.lock().unwrap_or_else(PoisonError::into_inner).contains_key(digest) {
            drop(file);
            return fs::remove_file(&temp.path);
        }
        file.sync_all()?;
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
        sync_dir(dir)?;
        if was_missing {
            self.missing.lock().unwrap_or_else(PoisonError::into_inner).remove(digest);
        }
        Ok(())
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

    /// Opens a blob for reading.
    pub fn open_blob(&self, digest: &Digest) -> io::Result<File> {
        File::open(self.path_of(digest))
    }

    /// One more META-DATA entry refers to `digest`.
    pub fn add_ref(&self, digest: &Digest) {
        *self.refs.lock().unwrap_or_else(PoisonError::into_inner).entry(*digest).or_insert(0) += 1;
    }

    /// One fewer entry refers to `digest`; the blob is removed when none
    /// does. Call only after the META-DATA change is durable.
    pub fn drop_ref(&self, digest: &Digest) {
        let mut refs = self.refs.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(n) = refs.get_mut(digest) else { return };
        *n -= 1;
        if *n == 0 {
            refs.remove(digest);
            // A sender that already opened it keeps reading the open file.
            let _ = fs::remove_file(self.path_of(digest));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_proto::md5;

    fn stored(store: &BlobStore, bytes: &[u8]) -> Digest {
        let mut t = store.temp().unwrap();
        t.append(bytes).unwrap();
        let d = md5(bytes);
        store.install(t, &d).unwrap();
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
        let other = md5(b"other");
        fs::remove_dir_all(root.join("blobs")).unwrap();
        fs::create_dir(root.join("blobs")).unwrap();
        let mut t = store.temp().unwrap();
        t.append(b"hello").unwrap();
        store.refs.lock().unwrap().clear();
        store.install(t, &d).unwrap();
        assert_eq!(fs::read(store.path_of(&d)).unwrap(), b"hello");
        assert_eq!(stored(&store, b"other"), other);
        fs::remove_dir_all(&root).unwrap();
    }
}
