//! Looking at synced folders the way a test compares them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Every regular file under `dir` by `/`-separated relative name, leaving
/// out `.dropsync*` entries at the top (a client's state folder), as `(name,
/// absolute path)`. A folder that vanishes while it is walked is skipped.
pub fn files(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    while let Some((path, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&path) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if prefix.is_empty() && name.starts_with(".dropsync") {
                continue;
            }
            let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
            let Ok(kind) = entry.file_type() else { continue };
            if kind.is_dir() {
                stack.push((entry.path(), rel));
            } else if kind.is_file() {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    out
}

/// Every file under `dir` by relative `/`-separated name, with its bytes,
/// leaving out the sync engine's own `.dropsync*` entries at the top (a
/// client's state folder). Symlinks are not followed. A file that vanishes
/// while it is read is left out, so this can be polled on a live folder.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files(dir).into_iter().filter_map(|(rel, path)| Some((rel, std::fs::read(path).ok()?))).collect()
}

/// Writes `bytes` to `dir/rel`, creating the folders on the way.
pub fn write_file(dir: &Path, rel: &str, bytes: &[u8]) {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}
