//! The states the checks compare: a client folder as path → content
//! digest (without the client's `.dropsync/`), and the server's view,
//! rebuilt from its META-DATA (snapshot plus journal, read the way the
//! server reads them) and its content-addressed blobs.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use dropsync_core::storage::Storage;
use dropsync_core::store::JournaledStore;
use dropsync_proto::digest::push_hex;
use dropsync_proto::metadata::{Entry, EntryState, Strong};

use crate::model::{Tree, Version};

pub use dropsync_testkit::files;

/// Reads a folder's tree, hashing a file only when its inode, size or
/// mtime changed since the last call (files in a synced folder are
/// replaced by rename, so a new version is a new inode). Used for polling.
#[derive(Debug, Default)]
pub struct TreeCache {
    known: HashMap<PathBuf, (u64, u64, i64, Version)>,
}

impl TreeCache {
    /// The tree of `dir` now. Files that vanish while read are left out.
    pub fn tree(&mut self, dir: &Path) -> Tree {
        let mut out = Tree::new();
        let mut seen = HashSet::new();
        for (name, path) in files(dir) {
            let Ok(md) = fs::symlink_metadata(&path) else { continue };
            let key = (md.ino(), md.size(), md.mtime() * 1_000_000_000 + md.mtime_nsec());
            let v = match self.known.get(&path) {
                Some(&(ino, size, mtime, v)) if (ino, size, mtime) == key => v,
                _ => {
                    let Ok(bytes) = fs::read(&path) else { continue };
                    let v = Version::of(&bytes);
                    self.known.insert(path.clone(), (key.0, key.1, key.2, v));
                    v
                }
            };
            seen.insert(path);
            out.insert(name, v);
        }
        self.known.retain(|p, _| seen.contains(p));
        out
    }
}

/// The tree of `dir`, every file hashed afresh.
pub fn tree(dir: &Path) -> Tree {
    files(dir).into_iter().filter_map(|(name, path)| Some((name, Version::of(&fs::read(path).ok()?)))).collect()
}

/// `<root>/meta` read-only: [`JournaledStore::open`] only reads, so the
/// live server's files are loaded exactly as the server would load them.
struct ReadOnly(PathBuf);

impl Storage for ReadOnly {
    fn read(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.0.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn replace(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn append(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
    fn remove(&self, _: &str) -> io::Result<()> {
        Err(io::Error::other("read-only"))
    }
}

/// The server's META-DATA entries (the newest line of every path).
pub fn server_entries(root: &Path) -> Result<HashMap<String, Entry>, String> {
    let (_, loaded) = JournaledStore::open(ReadOnly(root.join("meta"))).map_err(|e| format!("server META-DATA: {e}"))?;
    Ok(loaded.entries)
}

/// Where the server keeps the content with SHA-256 `key` (its strong
/// content key; MD5 names nothing on the server).
pub fn blob_path(root: &Path, key: &Strong) -> PathBuf {
    let mut hex = String::with_capacity(64);
    push_hex(key, &mut hex);
    root.join("blobs").join(&hex[..2]).join(hex)
}

/// The blob of every file path of the server's META-DATA (`None`: a line
/// without a strong digest, which the server never writes).
pub fn server_blobs(root: &Path) -> Result<HashMap<String, Option<PathBuf>>, String> {
    Ok(server_entries(root)?
        .into_values()
        .filter(|e| e.state == EntryState::File)
        .map(|e| (e.path, e.strong.map(|k| blob_path(root, &k))))
        .collect())
}

/// The blobs of the versions the server's history keeps (issue 17), and
/// whether it has a history file.
pub fn kept_blobs(root: &Path) -> Result<(Vec<PathBuf>, bool), String> {
    let file = root.join("meta").join(dropsync_core::history::HISTORY);
    let Ok(bytes) = fs::read(&file) else { return Ok((Vec::new(), false)) };
    let history = dropsync_core::history::History::parse(&String::from_utf8_lossy(&bytes)).map_err(|e| e.to_string())?;
    Ok((history.iter().filter(|k| k.is_file()).filter_map(|k| k.entry.strong).map(|k| blob_path(root, &k)).collect(), true))
}

/// The server's files (`F` entries) as a tree, from META-DATA alone.
pub fn server_tree(root: &Path) -> Result<Tree, String> {
    Ok(server_entries(root)?
        .into_values()
        .filter(|e| e.state == EntryState::File)
        .map(|e| (e.path, Version { md5: e.md5, size: e.size }))
        .collect())
}

/// Checks that every file of the server's view has its blob, holding
/// exactly that content; returns the problems.
pub fn check_blobs(root: &Path, view: &Tree) -> Vec<String> {
    let blobs = match server_blobs(root) {
        Ok(b) => b,
        Err(e) => return vec![e],
    };
    let mut out = Vec::new();
    for (path, v) in view {
        let Some(Some(blob)) = blobs.get(path) else {
            out.push(format!("server META-DATA names no blob for {path:?}"));
            continue;
        };
        match fs::read(blob) {
            Ok(bytes) if Version::of(&bytes) == *v => {}
            Ok(bytes) => out.push(format!(
                "server blob of {path:?} ({}) holds {} bytes with another digest",
                blob.display(),
                bytes.len()
            )),
            Err(e) => out.push(format!("server blob of {path:?} ({}) unreadable: {e}", blob.display())),
        }
    }
    out
}

/// The names directly in `dir` (empty when it cannot be read).
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

/// Every file (any kind but folders) anywhere under `dir`, relative.
pub fn all_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            match entry.file_type() {
                Ok(k) if k.is_dir() => stack.push((entry.path(), rel)),
                _ => out.push(rel),
            }
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_testkit::{write_file, TempDir};

    #[test]
    fn trees_leave_out_the_state_folder_and_the_cache_notices_replacements() {
        let tmp = TempDir::new("soak-views");
        let d = tmp.path();
        write_file(d, "a.txt", b"one");
        write_file(d, "x/y/z.bin", b"two");
        write_file(d, ".dropsync/metadata", b"state");
        let mut cache = TreeCache::default();
        let t = cache.tree(d);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["a.txt", "x/y/z.bin"]);
        assert_eq!(t["a.txt"], Version::of(b"one"));
        write_file(d, "new", b"three");
        fs::rename(d.join("new"), d.join("a.txt")).unwrap();
        assert_eq!(cache.tree(d)["a.txt"], Version::of(b"three"));
        assert_eq!(cache.tree(d), tree(d));
        assert_eq!(all_files(d), [".dropsync/metadata", "a.txt", "x/y/z.bin"]);
    }
}
