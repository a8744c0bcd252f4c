//! Mapping between wire names (PROTOCOL.md section 3: relative, `/`
//! separated, UTF-8) and paths under the synced folder, and the checks that
//! keep every write inside that folder.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use dropsync_proto::name::{is_reserved, validate_name};

/// Folder (under the synced folder) holding the client's own state; nothing
/// under it is ever synced (its name is reserved by section 3).
pub const STATE_DIR: &str = ".dropsync";

/// The state folder of the synced folder `folder`, for the commands that
/// talk to its client through files there; an error for a folder no client
/// has synced.
pub fn state_dir_of(folder: &Path) -> Result<PathBuf, String> {
    let state = folder.join(STATE_DIR);
    if state.is_dir() {
        Ok(state)
    } else {
        Err(format!("{} is not a synced folder (no {STATE_DIR}/ in it)", folder.display()))
    }
}

/// Why a local path has no wire name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsyncable {
    /// Not under the folder, or the folder itself.
    Outside,
    /// `.dropsync*`: the client's own state.
    Reserved,
    /// Not UTF-8, or breaks a rule of section 3 (a backslash, say).
    BadName(String),
    /// Not in NFC: renamed first (`names::normalize_on_disk`).
    NotNfc,
}

/// The wire name of `path`, a path under `root` (both absolute, `root`
/// canonical).
pub fn name_for(root: &Path, path: &Path) -> Result<String, Unsyncable> {
    let rel = path.strip_prefix(root).map_err(|_| Unsyncable::Outside)?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(os) => match os.to_str() {
                Some(s) => parts.push(s),
                None => return Err(Unsyncable::BadName(os.to_string_lossy().into_owned())),
            },
            _ => return Err(Unsyncable::Outside),
        }
    }
    if parts.is_empty() {
        return Err(Unsyncable::Outside);
    }
    checked(parts.join("/"))
}

/// The wire name of `child`, an entry of the folder whose wire name is
/// `folder` ("" for the root): [`name_for`] of its path, without taking
/// the path apart again (a walk names a million files).
pub fn child_name(folder: &str, child: &OsStr) -> Result<String, Unsyncable> {
    let Some(child) = child.to_str() else { return Err(Unsyncable::BadName(child.to_string_lossy().into_owned())) };
    let mut name = String::with_capacity(folder.len() + 1 + child.len());
    if !folder.is_empty() {
        name.push_str(folder);
        name.push('/');
    }
    name.push_str(child);
    checked(name)
}

/// `name` if it is a wire name this client syncs.
fn checked(name: String) -> Result<String, Unsyncable> {
    if is_reserved(&name) {
        return Err(Unsyncable::Reserved);
    }
    if !crate::names::is_nfc_name(&name) {
        return Err(Unsyncable::NotNfc);
    }
    match validate_name(&name, false) {
        Ok(()) => Ok(name),
        Err(e) => Err(Unsyncable::BadName(format!("{name}: {e}"))),
    }
}

/// The local path of a wire name that passed `validate_name`.
pub fn local_path(root: &Path, name: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(name.split('/'));
    p
}

/// True when `path` is inside the client's state folder (or is it).
pub fn is_state_path(root: &Path, path: &Path) -> bool {
    path.strip_prefix(root)
        .ok()
        .and_then(|rel| rel.components().next())
        .is_some_and(|c| c.as_os_str().to_str().is_some_and(is_reserved))
}

/// Checks that every existing folder between `root` and the file `name` is a
/// real directory, not a symlink (which could point outside the folder) nor
/// a file; with `create`, makes the missing ones. Returns the file's path.
///
/// This is what keeps an incoming name like `link/x`, where `link` is a
/// local symlink to `/etc`, from writing or deleting outside the folder.
pub fn checked_path(root: &Path, name: &str, create: bool) -> io::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = name.split('/').collect();
    let (file, parents) = parts.split_last().ok_or_else(|| io::Error::other("empty name"))?;
    for (i, part) in parents.iter().enumerate() {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(md) if md.file_type().is_symlink() => {
                return Err(io::Error::other(format!("{} is a symlink", dir.display())));
            }
            Ok(_) => return Err(io::Error::other(format!("{} is not a folder", dir.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => fs::create_dir(&dir)
                .or_else(|e| if e.kind() == io::ErrorKind::AlreadyExists { Ok(()) } else { Err(e) })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Nothing below a missing folder exists either.
                dir.extend(&parts[i + 1..]);
                return Ok(dir);
            }
            Err(e) => return Err(e),
        }
    }
    dir.push(file);
    Ok(dir)
}

/// True when a folder above `name` is now a regular file (reached through
/// real folders only): a folder replaced by a file, which takes every path
/// below it away (issue 17: folder ↔ file swaps). A symlink on the way is
/// not this: what lies behind one is never synced.
pub fn parent_is_file(root: &Path, name: &str) -> bool {
    let mut dir = root.to_path_buf();
    let parts: Vec<&str> = name.split('/').collect();
    let Some((_, parents)) = parts.split_last() else { return false };
    for part in parents {
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(md) if md.is_dir() => {}
            Ok(md) => return md.is_file(),
            Err(_) => return false,
        }
    }
    false
}

/// Removes the now-empty folders above `name`, deepest first, stopping at
/// the first one that is not empty (empty folders are not synced, so a
/// folder emptied by a remote delete goes too). Best effort.
pub fn remove_empty_parents(root: &Path, name: &str) {
    let mut parts: Vec<&str> = name.split('/').collect();
    parts.pop();
    while !parts.is_empty() {
        let dir = local_path(root, &parts.join("/"));
        if fs::remove_dir(&dir).is_err() {
            return;
        }
        parts.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_reserved_paths_are_refused() {
        let root = Path::new("/sync");
        assert_eq!(name_for(root, Path::new("/sync/a/b.txt")), Ok("a/b.txt".to_owned()));
        assert_eq!(local_path(root, "a/b.txt"), PathBuf::from("/sync/a/b.txt"));
        assert_eq!(name_for(root, Path::new("/sync/.dropsync/metadata")), Err(Unsyncable::Reserved));
        assert_eq!(name_for(root, Path::new("/sync/.dropsync-x")), Err(Unsyncable::Reserved));
        assert_eq!(name_for(root, Path::new("/sync/sub/.dropsync")), Ok("sub/.dropsync".to_owned()));
        assert_eq!(name_for(root, Path::new("/sync")), Err(Unsyncable::Outside));
        assert_eq!(name_for(root, Path::new("/other/x")), Err(Unsyncable::Outside));
        assert!(matches!(name_for(root, Path::new("/sync/a\\b")), Err(Unsyncable::BadName(_))));
        assert!(is_state_path(root, Path::new("/sync/.dropsync/tmp/in-1")));
        assert!(!is_state_path(root, Path::new("/sync/a/.dropsync")));
    }

    #[test]
    fn a_child_is_named_as_its_path_is() {
        let root = Path::new("/r");
        let long = "x".repeat(256);
        for (folder, child) in [
            ("", "a"),
            ("", ".dropsync"),
            ("", ".dropsync-x"),
            ("d", ".dropsync"),
            ("d/e", "f.txt"),
            ("d", "e\u{301}"),
            ("d", "bad\\name"),
            ("d", long.as_str()),
        ] {
            let path = root.join(folder).join(child);
            assert_eq!(child_name(folder, OsStr::new(child)), name_for(root, &path), "{folder:?} {child:?}");
        }
    }

    #[test]
    fn non_utf8_names_are_unsyncable() {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let root = Path::new("/sync");
        let p = root.join(OsStr::from_bytes(b"bad\xff"));
        assert!(matches!(name_for(root, &p), Err(Unsyncable::BadName(_))));
    }

    #[test]
    fn checked_path_refuses_symlinked_and_file_parents() {
        let dir = std::env::temp_dir().join(format!("dropsync-paths-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("real")).unwrap();
        fs::write(dir.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("/tmp", dir.join("link")).unwrap();

        assert_eq!(checked_path(&dir, "real/x", false).unwrap(), dir.join("real/x"));
        assert_eq!(checked_path(&dir, "new/deep/x", false).unwrap(), dir.join("new/deep/x"));
        assert!(!dir.join("new").exists(), "not created without `create`");
        assert_eq!(checked_path(&dir, "new/deep/x", true).unwrap(), dir.join("new/deep/x"));
        assert!(dir.join("new/deep").is_dir());
        assert!(checked_path(&dir, "link/x", true).is_err());
        assert!(checked_path(&dir, "file/x", true).is_err());

        fs::write(dir.join("new/deep/x"), b"x").unwrap();
        fs::remove_file(dir.join("new/deep/x")).unwrap();
        remove_empty_parents(&dir, "new/deep/x");
        assert!(!dir.join("new").exists());
        remove_empty_parents(&dir, "real/x");
        assert!(!dir.join("real").exists());
        assert!(dir.exists(), "never the root");
        fs::remove_dir_all(&dir).unwrap();
    }
}
