//! Durable storage of small named files in one local folder, made crash-safe
//! with fsync: the [`Storage`] both programs keep their META-DATA in.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use dropsync_core::storage::Storage;

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
    let mut new = Replacement::begin(path)?;
    new.file().write_all(bytes)?;
    new.commit()
}

/// A crash-safe replacement of a file written in as many pieces as the
/// writer likes ([`replace_file`] in one): the temp file `<name>.tmp`
/// beside it, then [`commit`](Self::commit) syncs it, renames it over the
/// file and syncs the folder. Dropped uncommitted, the file stays as it was.
#[derive(Debug)]
pub struct Replacement {
    path: PathBuf,
    tmp: PathBuf,
    file: File,
}

impl Replacement {
    /// Starts replacing `path` (its temp file is created, or emptied).
    pub fn begin(path: &Path) -> io::Result<Self> {
        let dir = path.parent().unwrap_or_else(|| Path::new("."));
        let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
        tmp_name.push(".tmp");
        let tmp = dir.join(tmp_name);
        let file = File::create(&tmp)?;
        Ok(Self { path: path.to_path_buf(), tmp, file })
    }

    /// The temp file, to write the new content to.
    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }

    /// Makes the new content durable and puts it in place of the old.
    pub fn commit(self) -> io::Result<()> {
        let Self { path, tmp, file } = self;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &path)?;
        sync_dir(path.parent().unwrap_or_else(|| Path::new(".")))
    }
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
    use dropsync_core::storage::check_contract;

    #[test]
    fn dir_storage_semantics() {
        let dir = std::env::temp_dir().join(format!("dropsync-storage-{}", std::process::id()));
        let s = DirStorage::new(&dir).unwrap();
        check_contract(&s).unwrap();
        assert!(!dir.join("a.tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
