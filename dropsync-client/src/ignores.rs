//! What is never synced (issue 17): editors' temp files, built in, and the
//! patterns of `.syncignore` at the folder's root, in gitignore syntax
//! (through the `ignore` crate, the matcher ripgrep uses). The file itself
//! syncs like any other, so every client of the folder ignores the same.
//!
//! An ignored path is not uploaded, not deleted on the server, not
//! requested, and an incoming transfer or DELETE of it is refused (0x0080:
//! the server then leaves it alone for this client): it stays as it is here.

use std::path::Path;
use std::sync::{PoisonError, RwLock};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

/// The ignore file, at the folder's root. Not `.dropsyncignore`, as issue
/// 17 suggested: PROTOCOL.md section 3 reserves every first component that
/// starts with `.dropsync`, so such a file could never be synced (and every
/// other implementation would refuse it with 0x0100).
pub const IGNORE_FILE: &str = ".syncignore";

/// The folder [`Ignores::is_ignored_in_walk`] last looked at, and whether
/// it is ignored.
#[derive(Debug, Default)]
pub struct LastFolder {
    folder: Option<String>,
    ignored: bool,
}

/// Temp files editors write and rename: vim's swap files and its `4913`
/// probe, Office's owner files `~$*`, Emacs's lock files `.#*`, and `*.tmp`.
const BUILT_IN: &[&str] = &["*.swp", "*.swo", "4913", "~$*", ".#*", "*.tmp"];

/// The matcher of one folder, reloaded when its ignore file changes.
#[derive(Debug)]
pub struct Ignores {
    matcher: RwLock<Gitignore>,
}

impl Ignores {
    /// The built-in patterns and those of `root`'s ignore file.
    pub fn load(root: &Path) -> Self {
        Ignores { matcher: RwLock::new(build(root)) }
    }

    /// Reads `root`'s ignore file again.
    pub fn reload(&self, root: &Path) {
        *self.matcher.write().unwrap_or_else(PoisonError::into_inner) = build(root);
    }

    /// True when the path `name` (a wire name: relative, `/`-separated) or
    /// a folder above it is ignored. The ignore file itself never is.
    pub fn is_ignored(&self, name: &str) -> bool {
        if name == IGNORE_FILE {
            return false;
        }
        let m = self.matcher.read().unwrap_or_else(PoisonError::into_inner);
        m.matched_path_or_any_parents(Path::new(name), false).is_ignore()
    }

    /// [`is_ignored`](Self::is_ignored) for a walk, which asks of many
    /// files of one folder in a row: whether the folder (or one above it)
    /// is ignored is asked once per folder (`last`), not once per file.
    /// Same answer; a third of the cost at a million files in three
    /// levels of folders.
    pub fn is_ignored_in_walk(&self, name: &str, last: &mut LastFolder) -> bool {
        if name == IGNORE_FILE {
            return false;
        }
        let m = self.matcher.read().unwrap_or_else(PoisonError::into_inner);
        // As `matched_path_or_any_parents`: the path itself decides if a
        // pattern matches it, else the nearest folder above it that one
        // matches.
        match m.matched(Path::new(name), false) {
            Match::None => {}
            decided => return decided.is_ignore(),
        }
        // A file at the top is in the folder "" (which a pattern such as
        // `*/` matches, as `matched_path_or_any_parents` asks).
        let folder = name.rsplit_once('/').map_or("", |(folder, _)| folder);
        if last.folder.as_deref() != Some(folder) {
            last.ignored = m.matched_path_or_any_parents(Path::new(folder), true).is_ignore();
            last.folder = Some(folder.to_owned());
        }
        last.ignored
    }
}

fn build(root: &Path) -> Gitignore {
    let mut b = GitignoreBuilder::new(root);
    for pattern in BUILT_IN {
        let _ = b.add_line(None, pattern);
    }
    let file = root.join(IGNORE_FILE);
    if file.is_file() {
        if let Some(e) = b.add(&file) {
            log::warn!("{}: {e}; the other patterns apply", file.display());
        }
    }
    b.build().unwrap_or_else(|e| {
        log::warn!("ignore patterns: {e}; only the built-in ones apply");
        let mut b = GitignoreBuilder::new(root);
        for pattern in BUILT_IN {
            let _ = b.add_line(None, pattern);
        }
        b.build().unwrap_or_else(|_| Gitignore::empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> (std::path::PathBuf, Ignores) {
        let root = std::env::temp_dir().join(format!("dropsync-ignores-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join(IGNORE_FILE), text).unwrap();
        let ig = Ignores::load(&root);
        (root, ig)
    }

    #[test]
    fn editor_temp_files_are_ignored_everywhere() {
        let (root, ig) = with_file("");
        for name in ["a.txt.swp", "d/.b.swp", "4913", "d/~$report.docx", ".#notes.org", "x.tmp"] {
            assert!(ig.is_ignored(name), "{name}");
        }
        for name in ["a.txt", "d/report.docx", "swp", "49130", IGNORE_FILE] {
            assert!(!ig.is_ignored(name), "{name}");
        }
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_ignore_file_uses_gitignore_syntax() {
        let (root, ig) = with_file("*.log\nbuild/\n/top-only.txt\n!keep.log\n# a comment\n");
        assert!(ig.is_ignored("x.log") && ig.is_ignored("deep/y.log"));
        assert!(!ig.is_ignored("keep.log"), "negation");
        assert!(ig.is_ignored("build/o.bin") && ig.is_ignored("src/build/o.bin"), "a folder and all below it");
        assert!(ig.is_ignored("top-only.txt") && !ig.is_ignored("sub/top-only.txt"), "anchored");
        assert!(!ig.is_ignored("a.txt"));
        // Changed on disk: reloaded.
        std::fs::write(root.join(IGNORE_FILE), "a.txt\n").unwrap();
        ig.reload(&root);
        assert!(ig.is_ignored("a.txt") && !ig.is_ignored("x.log"));
        std::fs::remove_dir_all(root).unwrap();
    }

    /// A walk's answers, folder by folder, are the ones for each path
    /// alone: patterns on files and on folders, negations (in an ignored
    /// folder too) and anchors.
    #[test]
    fn a_walk_asks_once_per_folder_and_gets_the_same_answers() {
        let (root, ig) = with_file("*.log\nbuild/\n/top/\n!keep.log\ngen*/x\n*.tmp\n*/\n!a/\n");
        let parts = ["a", "build", "top", "keep.log", "x.log", "x", "gen1", "f.txt", "t.tmp", "4913"];
        let mut names = Vec::new();
        for a in parts {
            names.push(a.to_owned());
            for b in parts {
                names.push(format!("{a}/{b}"));
                for c in parts {
                    names.push(format!("{a}/{b}/{c}"));
                }
            }
        }
        let mut last = LastFolder::default();
        for name in &names {
            assert_eq!(ig.is_ignored_in_walk(name, &mut last), ig.is_ignored(name), "{name}");
        }
        let ignored = names.iter().filter(|n| ig.is_ignored(n)).count();
        assert!(ignored > 100 && ignored < names.len() - 100, "{ignored} of {}", names.len());
        std::fs::remove_dir_all(root).unwrap();
    }
}
