//! Durable storage of small named files (META-DATA snapshot and journal),
//! behind a trait so tests keep them in memory and a later backend can keep
//! them elsewhere.
//!
//! [`DirStorage`] is the one place in this crate that touches `std::fs`: both
//! binaries need exactly these crash-safe primitives, and keeping them here
//! means they are written (and tested) once.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

/// Crash-safe operations on named blobs. Every method returns only once the
/// change is durable: after a crash the blob is either wholly old or wholly
/// new (`replace`), or ends with the appended bytes or a prefix of them
/// (`append`).
pub trait Storage: Send + Sync {
    /// The blob's bytes, or `None` if it does not exist.
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>>;
    /// Atomically replaces (or creates) the blob.
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Appends to (or creates) the blob and makes the append durable.
    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Removes the blob; absent is not an error.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// A shared handle stores where its target stores: a test keeps one `Arc`
/// to inspect (or tamper with) what the component under test wrote.
impl<S: Storage + ?Sized> Storage for std::sync::Arc<S> {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        (**self).read(name)
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        (**self).replace(name, bytes)
    }
    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        (**self).append(name, bytes)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        (**self).remove(name)
    }
}

/// In-memory storage for tests: "durable" means "in the map".
#[derive(Debug, Default)]
pub struct MemStorage {
    blobs: Mutex<HashMap<String, Vec<u8>>>,
}

impl MemStorage {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Storage for MemStorage {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.map().get(name).cloned())
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.map().insert(name.to_owned(), bytes.to_vec());
        Ok(())
    }
    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.map().entry(name.to_owned()).or_default().extend_from_slice(bytes);
        Ok(())
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.map().remove(name);
        Ok(())
    }
}

/// Blobs as files in one directory, made durable with fsync.
#[derive(Debug)]
pub struct DirStorage {
    dir: PathBuf,
    /// Open append handles, so a journal append is one write and one fdatasync.
    appenders: Mutex<HashMap<String, File>>,
}

impl DirStorage {
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, appenders: Mutex::new(HashMap::new()) })
    }

    /// The directory the blobs live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn sync_dir(&self) -> io::Result<()> {
        sync_dir(&self.dir)
    }
}

/// fsyncs a directory so that a rename or create inside it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `bytes` to `path` crash-safely: a temp file beside it, fsync,
/// rename over `path`, fsync of the directory.
pub fn replace_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

impl Storage for DirStorage {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn replace(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        // A cached append handle would point at the replaced inode.
        self.appenders.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        replace_file(&self.dir.join(name), bytes)
    }

    fn append(&self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut handles = self.appenders.lock().unwrap_or_else(PoisonError::into_inner);
        if !handles.contains_key(name) {
            let path = self.dir.join(name);
            let existed = path.exists();
            let f = OpenOptions::new().create(true).append(true).open(&path)?;
            if !existed {
                self.sync_dir()?;
            }
            handles.insert(name.to_owned(), f);
        }
        let Some(f) = handles.get_mut(name) else {
            return Err(io::Error::other("append handle vanished"));
        };
        f.write_all(bytes)?;
        f.sync_data()
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.appenders.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => self.sync_dir(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(s: &dyn Storage) {
        assert_eq!(s.read("a").unwrap(), None);
        s.append("a", b"one\n").unwrap();
        s.append("a", b"two\n").unwrap();
        assert_eq!(s.read("a").unwrap().as_deref(), Some(&b"one\ntwo\n"[..]));
        s.replace("a", b"new").unwrap();
        s.append("a", b"+").unwrap();
        assert_eq!(s.read("a").unwrap().as_deref(), Some(&b"new+"[..]));
        s.remove("a").unwrap();
        s.remove("a").unwrap();
        assert_eq!(s.read("a").unwrap(), None);
    }

    #[test]
    fn mem_storage_semantics() {
        exercise(&MemStorage::new());
    }

    #[test]
    fn dir_storage_semantics() {
        let dir = std::env::temp_dir().join(format!("dropsync-storage-{}", std::process::id()));
        let s = DirStorage::new(&dir).unwrap();
        exercise(&s);
        assert!(!dir.join("a.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
