//! Names that cannot live beside the live files (issue 17): a new file may
//! not sit where a live file is a folder on the way (`p` when `p/q` is
//! live, or `p/q` when `p` is), so the server never holds both and no
//! replica meets a file where it needs a folder; and, unless the server
//! is told its clients are all case-sensitive, a new file may not differ
//! from a live one in letter case alone (`README.TXT` beside `readme.txt`),
//! which a case-insensitive file system (macOS, Windows) cannot hold.
//!
//! [`PathIndex`] counts the live files by a hash of each folder above them
//! and of their case-folded names, kept up to date with every change of the
//! table, so that a check costs a few hash lookups; a hit is confirmed by a
//! walk over the table, which only a real conflict (or a hash collision)
//! pays.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use dropsync_proto::metadata::{Entry, EntryState};

/// Why a new file cannot be committed at a path, with the live path in
/// the way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathConflict {
    /// A live file is a folder on the way of the new path (`p` for `p/q`).
    FileAbove(String),
    /// The new path is a folder of live files (`p/q` for `p`).
    FilesBelow(String),
    /// A live file differs from the new path in letter case alone.
    CaseTwin(String),
}

/// Live files counted by hashes of their folders and folded names.
#[derive(Debug, Default, Clone)]
pub struct PathIndex {
    /// Live files below each folder (by the folder's hash).
    below: HashMap<u64, u32>,
    /// Live files by the hash of their lower-cased path.
    folded: HashMap<u64, u32>,
}

fn key(text: &str) -> u64 {
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

/// Each folder on the way to `path`: `a`, `a/b` for `a/b/c`.
fn folders(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

fn bump(map: &mut HashMap<u64, u32>, k: u64, up: bool) {
    if up {
        *map.entry(k).or_insert(0) += 1;
    } else if let Some(n) = map.get_mut(&k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&k);
        }
    }
}

impl PathIndex {
    /// The index of `entries`.
    pub fn of<'a>(entries: impl Iterator<Item = &'a Entry>) -> Self {
        let mut index = Self::default();
        for e in entries {
            index.count(Some(e), true);
        }
        index
    }

    /// Counts `entry` in (`up`) or out, if it is a live file.
    pub fn count(&mut self, entry: Option<&Entry>, up: bool) {
        let Some(e) = entry.filter(|e| e.state == EntryState::File) else { return };
        for folder in folders(&e.path) {
            bump(&mut self.below, key(folder), up);
        }
        bump(&mut self.folded, key(&e.path.to_lowercase()), up);
    }

    /// What is in the way of a new file at `path` among `entries` (the
    /// table this index counts); `case_twins` turns the letter-case rule on.
    pub fn conflict<'a>(
        &self,
        path: &str,
        case_twins: bool,
        mut entries: impl FnMut() -> Box<dyn Iterator<Item = &'a Entry> + 'a>,
        get: impl Fn(&str) -> Option<&'a Entry>,
    ) -> Option<PathConflict> {
        let live = |e: &&Entry| e.state == EntryState::File;
        if let Some(above) = folders(path).find(|f| get(f).filter(live).is_some()) {
            return Some(PathConflict::FileAbove(above.to_owned()));
        }
        if self.below.contains_key(&key(path)) {
            let under = format!("{path}/");
            if let Some(e) = entries().filter(live).find(|e| e.path.starts_with(&under)) {
                return Some(PathConflict::FilesBelow(e.path.clone()));
            }
        }
        if case_twins {
            let folded = path.to_lowercase();
            let own = u32::from(get(path).filter(live).is_some());
            if self.folded.get(&key(&folded)).copied().unwrap_or(0) > own {
                let twin = entries().filter(live).find(|e| e.path != path && e.path.to_lowercase() == folded);
                if let Some(e) = twin {
                    return Some(PathConflict::CaseTwin(e.path.clone()));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn file(path: &str) -> Entry {
        Entry {
            version: 1,
            md5: [0; 16],
            size: 0,
            mtime_ns: 0,
            state: EntryState::File,
            path: path.into(),
            strong: None,
        }
    }

    fn check(table: &BTreeMap<String, Entry>, path: &str) -> Option<PathConflict> {
        let index = PathIndex::of(table.values());
        index.conflict(path, true, || Box::new(table.values()), |p| table.get(p))
    }

    fn table(paths: &[&str]) -> BTreeMap<String, Entry> {
        paths.iter().map(|p| (p.to_string(), file(p))).collect()
    }

    #[test]
    fn a_file_and_a_folder_of_one_name_never_live_together() {
        let t = table(&["d/f1.txt", "e"]);
        assert_eq!(check(&t, "d"), Some(PathConflict::FilesBelow("d/f1.txt".into())));
        assert_eq!(check(&t, "e/x"), Some(PathConflict::FileAbove("e".into())));
        assert_eq!(check(&t, "e/x/y"), Some(PathConflict::FileAbove("e".into())));
        assert_eq!(check(&t, "d/f2.txt"), None);
        assert_eq!(check(&t, "dd"), None, "a name that only starts like the folder");
        assert_eq!(check(&t, "e"), None, "overwriting the file itself");
    }

    #[test]
    fn case_twins_are_found_and_a_path_is_not_its_own_twin() {
        let t = table(&["docs/ReadMe.txt"]);
        assert_eq!(check(&t, "docs/README.TXT"), Some(PathConflict::CaseTwin("docs/ReadMe.txt".into())));
        assert_eq!(check(&t, "DOCS/readme.txt"), Some(PathConflict::CaseTwin("docs/ReadMe.txt".into())));
        assert_eq!(check(&t, "docs/ReadMe.txt"), None);
        let index = PathIndex::of(t.values());
        assert_eq!(index.conflict("docs/README.TXT", false, || Box::new(t.values()), |p| t.get(p)), None, "rule off");
    }

    #[test]
    fn tombstones_are_in_nobody_s_way_and_counts_follow_changes() {
        let mut t = table(&["d/f"]);
        let mut index = PathIndex::of(t.values());
        let gone = Entry { state: EntryState::Deleted, ..file("d/f") };
        index.count(t.get("d/f"), false);
        index.count(Some(&gone), true);
        t.insert("d/f".into(), gone);
        assert_eq!(index.conflict("d", true, || Box::new(t.values()), |p| t.get(p)), None);
        assert_eq!(index.conflict("D/F", true, || Box::new(t.values()), |p| t.get(p)), None);
        assert!(index.below.is_empty() && index.folded.is_empty());
    }
}
