//! Durable storage of small named files (META-DATA snapshot and journal),
//! behind a trait so tests keep them in memory and a later backend can keep
//! them elsewhere. The implementation on a local folder, which touches the
//! file system, is `dropsync_io::dir_storage::DirStorage`.

use std::collections::HashMap;
use std::io;
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

/// Checks the [`Storage`] contract on an empty store: reads, appends,
/// replaces and removes, as every implementation's tests must. `Err` says
/// which step broke it.
pub fn check_contract(s: &dyn Storage) -> Result<(), String> {
    let expect = |step: &str, got: io::Result<Option<Vec<u8>>>, want: Option<&[u8]>| match got {
        Ok(g) if g.as_deref() == want => Ok(()),
        other => Err(format!("{step}: read gave {other:?}, expected {want:?}")),
    };
    let io = |step: &str, r: io::Result<()>| r.map_err(|e| format!("{step}: {e}"));
    expect("fresh", s.read("a"), None)?;
    io("append", s.append("a", b"one\n"))?;
    io("append", s.append("a", b"two\n"))?;
    expect("after appends", s.read("a"), Some(b"one\ntwo\n"))?;
    io("replace", s.replace("a", b"new"))?;
    io("append after replace", s.append("a", b"+"))?;
    expect("after replace", s.read("a"), Some(b"new+"))?;
    io("remove", s.remove("a"))?;
    io("remove again", s.remove("a"))?;
    expect("after remove", s.read("a"), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_storage_semantics() {
        check_contract(&MemStorage::new()).unwrap();
    }
}
