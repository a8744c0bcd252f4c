//! Names travel as NFC (issue 17; docs/PROTOCOL.md, "Names"): `café.txt`
//! written with a combining accent (NFD, as macOS writes it) and with a
//! precomposed one (NFC) are one name to a person and two to Linux, and a
//! folder holding both cannot be synced to a Mac. Like Syncthing's
//! autoNormalize, the client renames a local entry whose name is not NFC to
//! its NFC form, so that what it sends is NFC; when the NFC name is taken
//! already (twins), the NFD one is kept under a conflict-copy name instead,
//! so nothing is overwritten.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use dropsync_core::conflict::pick_conflict_name;
use unicode_normalization::{is_nfc, UnicodeNormalization};

/// The label in the conflict-copy name of an NFD twin.
const TWIN_LABEL: &str = "unicode twin";

/// The label in the conflict-copy name of a case twin.
const CASE_TWIN_LABEL: &str = "case twin";

/// Of `names`, one that differs from `name` in letter case alone.
pub fn case_twin<'a>(names: impl Iterator<Item = &'a str>, name: &str) -> Option<String> {
    let folded = name.to_lowercase();
    names.filter(|n| *n != name).find(|n| n.to_lowercase() == folded).map(str::to_owned)
}

/// True when `name` exists under `root` with exactly that spelling (a
/// lookup on a case-insensitive file system would also find its twins).
pub fn exists_exactly(root: &Path, name: &str) -> bool {
    let path = crate::paths::local_path(root, name);
    let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else { return false };
    fs::read_dir(dir).is_ok_and(|mut entries| entries.any(|e| e.is_ok_and(|e| e.file_name() == file)))
}

/// Renames the local file of `name`, refused as a case twin, to a
/// conflict-copy name, and returns that name.
pub fn keep_case_twin(root: &Path, name: &str) -> io::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let taken = |c: &str| fs::symlink_metadata(crate::paths::local_path(root, c)).is_ok();
    let copy = pick_conflict_name(name, CASE_TWIN_LABEL, now, taken);
    fs::rename(crate::paths::local_path(root, name), crate::paths::local_path(root, &copy))?;
    Ok(copy)
}

/// True when every component of `name` is in NFC.
pub fn is_nfc_name(name: &str) -> bool {
    is_nfc(name)
}

/// Renames the first entry on the way from `root` to `path` whose name is
/// not NFC to its NFC form (or, when that is taken, to a conflict-copy
/// name), and returns the path `path` has now. A folder renamed takes what
/// is in it along; the caller looks at the new path again.
pub fn normalize_on_disk(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let rel = path.strip_prefix(root).map_err(io::Error::other)?;
    let mut at = root.to_path_buf();
    let mut components = rel.components();
    for c in components.by_ref() {
        let Component::Normal(os) = c else { return Err(io::Error::other("not a plain relative path")) };
        let Some(part) = os.to_str() else { return Err(io::Error::other("not UTF-8")) };
        if is_nfc(part) {
            at.push(part);
            continue;
        }
        let nfc: String = part.nfc().collect();
        let target = free_name(&at, &nfc);
        let from = at.join(part);
        let to = at.join(&target);
        fs::rename(&from, &to)?;
        if target == nfc {
            log::info!("renamed {} to its NFC form (names travel as NFC)", from.display());
        } else {
            log::warn!("{} and its NFC twin {nfc:?} both exist: kept it as {target:?}", from.display());
        }
        at = to;
        break;
    }
    at.extend(components);
    Ok(at)
}

/// `nfc` if no entry of `dir` has that name, else the first free
/// conflict-copy name for it.
fn free_name(dir: &Path, nfc: &str) -> String {
    if fs::symlink_metadata(dir.join(nfc)).is_err() {
        return nfc.to_owned();
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    pick_conflict_name(nfc, TWIN_LABEL, now, |c| fs::symlink_metadata(dir.join(c)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFD: &str = "cafe\u{301}.txt";
    const NFC: &str = "caf\u{e9}.txt";

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ds-names-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_nfd_file_or_folder_is_renamed_to_nfc() {
        let root = dir("rename");
        assert!(!is_nfc_name(NFD) && is_nfc_name(NFC));
        fs::write(root.join(NFD), b"x").unwrap();
        let now = normalize_on_disk(&root, &root.join(NFD)).unwrap();
        assert_eq!(now, root.join(NFC));
        assert_eq!(fs::read(root.join(NFC)).unwrap(), b"x");
        // A folder on the way: renamed, its files along with it.
        fs::create_dir_all(root.join(NFD.replace(".txt", "")).join("sub")).unwrap();
        fs::write(root.join(NFD.replace(".txt", "")).join("sub/f"), b"y").unwrap();
        let deep = root.join(NFD.replace(".txt", "")).join("sub/f");
        let now = normalize_on_disk(&root, &deep).unwrap();
        assert_eq!(now, root.join(NFC.replace(".txt", "")).join("sub/f"));
        assert_eq!(fs::read(&now).unwrap(), b"y");
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn an_nfd_twin_of_an_existing_nfc_name_is_kept_as_a_conflict_copy() {
        let root = dir("twin");
        fs::write(root.join(NFC), b"precomposed").unwrap();
        fs::write(root.join(NFD), b"combining").unwrap();
        let now = normalize_on_disk(&root, &root.join(NFD)).unwrap();
        let name = now.file_name().unwrap().to_str().unwrap().to_owned();
        assert!(name.starts_with("caf\u{e9} (conflicted copy unicode twin ") && name.ends_with(").txt"), "{name}");
        assert_eq!(fs::read(root.join(NFC)).unwrap(), b"precomposed", "never overwritten");
        assert_eq!(fs::read(&now).unwrap(), b"combining");
        let _ = fs::remove_dir_all(&root);
    }
}
