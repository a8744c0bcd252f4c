//! Files that went quiet without their writer closing them: a writer
//! inside one long system call (`cp` of a large file through
//! `copy_file_range`, on a slow disk) makes no event until it is done, so
//! the quiet time alone would send half a file (issue 19's B7: a copy of
//! 1 GiB taking 3 s had its first chunks uploaded, then aborted, before it
//! was found to be a copy). Such a file is sent once a second look at its
//! size and mtime, [`RECHECK`] after the first, finds them unchanged.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// How long after one look at a quiet open file the next one is made.
pub const RECHECK: Duration = Duration::from_millis(250);

/// Most files looked at without a second look yet; beyond, the looks are
/// forgotten (each costs one more [`RECHECK`]).
const MAX_LOOKS: usize = 65_536;

/// Size and mtime of a file, as last looked at.
type Look = (u64, i64, i64);

/// The last look at each quiet open file.
#[derive(Debug, Default)]
pub struct WriteWatch {
    looks: HashMap<String, Look>,
}

impl WriteWatch {
    /// True when the file `name` at `path`, quiet but never closed, may
    /// still be being written: it was not looked at before, or its size or
    /// mtime changed since; the caller looks again after [`RECHECK`].
    /// False (send it) when it is unchanged since the last look, or gone
    /// (what is there, or not, is then judged as usual).
    pub fn still_written(&mut self, name: &str, path: &Path) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            self.looks.remove(name);
            return false;
        };
        let look = (meta.len(), meta.mtime(), meta.mtime_nsec());
        if self.looks.get(name) == Some(&look) {
            self.looks.remove(name);
            return false;
        }
        if self.looks.len() >= MAX_LOOKS {
            self.looks.clear();
        }
        self.looks.insert(name.to_owned(), look);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_sent_once_two_looks_agree() {
        let dir = std::env::temp_dir().join(format!("dropsync-write-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, b"one").unwrap();
        let mut w = WriteWatch::default();
        assert!(w.still_written("f", &path), "a first look cannot tell");
        std::fs::write(&path, b"one and more").unwrap();
        assert!(w.still_written("f", &path), "it grew since");
        assert!(!w.still_written("f", &path), "unchanged since the last look");
        assert!(w.still_written("f", &path), "a look made after it was sent starts again");
        std::fs::remove_file(&path).unwrap();
        assert!(!w.still_written("f", &path), "gone: judged as usual");
        assert!(w.looks.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
