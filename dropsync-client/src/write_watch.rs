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
use std::time::{Duration, Instant};

/// How long after one look at a quiet open file the next one is made (at
/// least the debounce delay).
pub const RECHECK: Duration = Duration::from_millis(250);

/// A file that keeps changing without events this long (a database or disk
/// image written through a memory map, whose mtime moves with each write)
/// is sent as it is then: if it changes during the upload, that upload is
/// given up and the file looked at again, as for any file.
pub const MAX_LOOKING: Duration = Duration::from_secs(30);

/// Most files looked at without a second look yet; beyond, the looks are
/// forgotten (each costs one more [`RECHECK`]).
const MAX_LOOKS: usize = 65_536;

/// Size and mtime of a file, as last looked at.
type Look = (u64, i64, i64);

/// The last look at each quiet open file, and when the looks began.
#[derive(Debug, Default)]
pub struct WriteWatch {
    looks: HashMap<String, (Look, Instant)>,
}

impl WriteWatch {
    /// True when the file `name` at `path`, quiet but never closed, may
    /// still be being written: it was not looked at before, or its size or
    /// mtime changed since; the caller looks again after [`RECHECK`].
    /// False (send it) when it is unchanged since the last look, or gone
    /// (what is there, or not, is then judged as usual).
    /// After [`MAX_LOOKING`] of looks it is sent whatever they found.
    pub fn still_written(&mut self, name: &str, path: &Path, now: Instant) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            self.looks.remove(name);
            return false;
        };
        let look = (meta.len(), meta.mtime(), meta.mtime_nsec());
        let began = match self.looks.get(name) {
            Some((last, _)) if *last == look => {
                self.looks.remove(name);
                return false;
            }
            Some((_, began)) if now.saturating_duration_since(*began) >= MAX_LOOKING => {
                self.looks.remove(name);
                return false;
            }
            Some((_, began)) => *began,
            None => now,
        };
        if self.looks.len() >= MAX_LOOKS {
            self.looks.clear();
        }
        self.looks.insert(name.to_owned(), (look, began));
        true
    }

    /// `name` goes out without a look (it was closed, or changed some other
    /// way): an earlier look at it no longer counts.
    pub fn forget(&mut self, name: &str) {
        if !self.looks.is_empty() {
            self.looks.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_sent_once_two_looks_agree() {
        let dir = dropsync_testkit::TempDir::new("write-watch");
        let path = dir.join("f");
        std::fs::write(&path, b"one").unwrap();
        let mut w = WriteWatch::default();
        let t0 = Instant::now();
        assert!(w.still_written("f", &path, t0), "a first look cannot tell");
        std::fs::write(&path, b"one and more").unwrap();
        assert!(w.still_written("f", &path, t0), "it grew since");
        assert!(!w.still_written("f", &path, t0), "unchanged since the last look");
        assert!(w.still_written("f", &path, t0), "a look made after it was sent starts again");
        w.forget("f");
        assert!(w.still_written("f", &path, t0), "forgotten: a first look again");
        // A file that changes at every look is sent after MAX_LOOKING.
        std::fs::write(&path, b"changed").unwrap();
        assert!(w.still_written("f", &path, t0 + MAX_LOOKING / 2));
        std::fs::write(&path, b"changed again").unwrap();
        assert!(!w.still_written("f", &path, t0 + MAX_LOOKING), "looked at long enough");
        assert!(w.looks.is_empty());
        assert!(w.still_written("f", &path, t0));
        std::fs::remove_file(&path).unwrap();
        assert!(!w.still_written("f", &path, t0), "gone: judged as usual");
        assert!(w.looks.is_empty());
    }
}
