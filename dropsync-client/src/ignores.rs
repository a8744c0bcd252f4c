//! What is never synced (issue 17): editors' temp files, built in, and the
//! patterns of `.syncignore` at the folder's root, in gitignore syntax
//! (through the `ignore` crate, the matcher ripgrep uses). The file itself
//! syncs like any other, so every client of the folder ignores the same.
//!
//! An ignored path is not uploaded, not deleted on the server, not
//! requested, and an incoming transfer or DELETE of it is refused (0x0080:
//! the server then leaves it alone for this client): it stays as it is here.

use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use ignore::Match;

/// The ignore file, at the folder's root. Not `.dropsyncignore`, as issue
/// 17 suggested: PROTOCOL.md section 3 reserves every first component that
/// starts with `.dropsync`, so such a file could never be synced (and every
/// other implementation would refuse it with 0x0100).
pub const IGNORE_FILE: &str = ".syncignore";

/// The rules as they are, held for a walk's many questions
/// ([`Ignores::for_walk`]), and the folder last asked about, with whether
/// it is ignored.
pub struct WalkIgnores<'a> {
    rules: RwLockReadGuard<'a, Rules>,
    folder: Option<String>,
    ignored: bool,
}

impl WalkIgnores<'_> {
    /// [`Ignores::is_ignored`] for a walk, which asks of many files of one
    /// folder in a row: whether the folder (or one above it) is ignored is
    /// asked once per folder, not once per file, and the rules are read
    /// once for the whole walk. Same answer; a third of the cost at a
    /// million files in three levels of folders.
    pub fn is_ignored(&mut self, name: &str) -> bool {
        if name == IGNORE_FILE {
            return false;
        }
        let (folder, file) = name.rsplit_once('/').unwrap_or(("", name));
        if self.rules.built_in_only {
            // Each built-in pattern is a name without a slash: it matches
            // a file or folder of that name anywhere, so a path is ignored
            // when one of its components matches. Checked by hand: the
            // matcher's regular expressions took a third of a million
            // files' first look (issue 19, B8).
            if self.folder.as_deref() != Some(folder) {
                self.ignored = folder.split('/').any(built_in_match);
                self.folder = Some(folder.to_owned());
            }
            return self.ignored || built_in_match(file);
        }
        let matcher = &self.rules.gitignore;
        // As `matched_path_or_any_parents`: the path itself decides if a
        // pattern matches it, else the nearest folder above it that one
        // matches.
        match matcher.matched(Path::new(name), false) {
            Match::None => {}
            decided => return decided.is_ignore(),
        }
        // A file at the top is in the folder "" (which a pattern such as
        // `*/` matches, as `matched_path_or_any_parents` asks).
        if self.folder.as_deref() != Some(folder) {
            self.ignored = matcher.matched_path_or_any_parents(Path::new(folder), true).is_ignore();
            self.folder = Some(folder.to_owned());
        }
        self.ignored
    }
}

/// Temp files editors write and rename: vim's swap files and its `4913`
/// probe, Office's owner files `~$*`, Emacs's lock files `.#*`, and `*.tmp`.
const BUILT_IN: &[&str] = &["*.swp", "*.swo", "4913", "~$*", ".#*", "*.tmp"];

/// True when the file or folder name `component` matches one of
/// [`BUILT_IN`] (the same patterns, by hand).
fn built_in_match(component: &str) -> bool {
    component == "4913"
        || component.starts_with("~$")
        || component.starts_with(".#")
        || [".swp", ".swo", ".tmp"].iter().any(|ext| component.ends_with(ext))
}

/// The patterns in force.
#[derive(Debug)]
struct Rules {
    gitignore: Gitignore,
    /// No ignore file: the built-in patterns alone.
    built_in_only: bool,
}

/// The matcher of one folder, reloaded when its ignore file changes.
#[derive(Debug)]
pub struct Ignores {
    matcher: RwLock<Rules>,
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
        m.gitignore.matched_path_or_any_parents(Path::new(name), false).is_ignore()
    }

    /// The rules as they are now, for the many questions of a walk (the
    /// ignore file is not read again until it is dropped).
    pub fn for_walk(&self) -> WalkIgnores<'_> {
        let rules = self.matcher.read().unwrap_or_else(PoisonError::into_inner);
        WalkIgnores { rules, folder: None, ignored: false }
    }
}

fn build(root: &Path) -> Rules {
    let file = root.join(IGNORE_FILE);
    let built_in_only = !file.is_file();
    Rules { gitignore: build_gitignore(root, &file), built_in_only }
}

fn build_gitignore(root: &Path, file: &Path) -> Gitignore {
    let mut b = GitignoreBuilder::new(root);
    for pattern in BUILT_IN {
        let _ = b.add_line(None, pattern);
    }
    if file.is_file() {
        if let Some(e) = b.add(file) {
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

    /// With no ignore file, the built-in patterns checked by hand give the
    /// matcher's answers.
    #[test]
    fn a_walk_without_an_ignore_file_answers_as_the_built_in_patterns() {
        let root = std::env::temp_dir().join(format!("dropsync-ignores-none-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let ig = Ignores::load(&root);
        let parts = ["a", "b.swp", ".swo", "4913", "49130", "~$x", "~x", ".#y", ".y", "z.tmp", "tmp", "s.swpx"];
        let mut names = Vec::new();
        for a in parts {
            names.push(a.to_owned());
            for b in parts {
                names.push(format!("{a}/{b}"));
                names.extend(parts.iter().map(|c| format!("{a}/{b}/{c}")));
            }
        }
        let mut walk = ig.for_walk();
        for name in &names {
            assert_eq!(walk.is_ignored(name), ig.is_ignored(name), "{name}");
        }
        drop(walk);
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
        let answers: Vec<bool> = {
            let mut walk = ig.for_walk();
            names.iter().map(|name| walk.is_ignored(name)).collect()
        };
        for (name, answer) in names.iter().zip(answers) {
            assert_eq!(answer, ig.is_ignored(name), "{name}");
        }
        let ignored = names.iter().filter(|n| ig.is_ignored(n)).count();
        assert!(ignored > 100 && ignored < names.len() - 100, "{ignored} of {}", names.len());
        std::fs::remove_dir_all(root).unwrap();
    }
}
