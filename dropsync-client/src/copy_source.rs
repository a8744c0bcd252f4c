//! COPY [ext] on the client's side: finding a path whose content a new
//! file already has on the server, so that the file goes out as a COPY of
//! that path (no bytes sent) instead of an upload (issue 19: a renamed or
//! copied 1 GiB file).
//!
//! Content is never judged by MD5 here. A file is taken to hold a source's
//! content only when
//! - the watcher saw it renamed from the source (same inode), and its stat
//!   is still the one recorded when the source was last looked at (the
//!   trust a rescan gives a stat, racy window included); or
//! - its bytes equal those of the source, which is on disk as recorded.
//!
//! And the source must be in sync: its recorded local content is its base,
//! the server's version. The server then checks that the client has seen
//! that version and refuses (0x0020) otherwise: the file is then uploaded.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use dropsync_core::meta_client::{ClientMeta, LocalSeen};
use dropsync_core::reconcile::Content;

use crate::paths::local_path;
use crate::scan::{probe, seen_is_current, FileStat, Probe};

/// Renames remembered at most (a folder of many files moved at once counts
/// each file); beyond, files are compared or uploaded.
const MAX_MOVES: usize = 100_000;

/// A rename is remembered this long: its new name is synced within the
/// quiet time, far sooner.
const MOVE_TTL: Duration = Duration::from_secs(60);

/// New files at least this large are compared with files of the same size
/// that are in sync (a copy); smaller ones are simply uploaded, which costs
/// less than looking through every record for a candidate.
pub const COMPARE_MIN: u64 = 16 * 1024 * 1024;

/// Candidates compared at most per new file.
const MAX_COMPARED: usize = 4;

/// Read buffer of the comparison, per file.
const COMPARE_BUFFER: usize = 1024 * 1024;

/// A rename the watcher saw: the source and what was recorded of it.
#[derive(Debug, Clone)]
struct Moved {
    from: String,
    seen: LocalSeen,
    at: Instant,
}

/// Renames the watcher saw, by new name, until their new name is synced.
#[derive(Debug, Default)]
pub struct Moves {
    by_to: HashMap<String, Moved>,
}

impl Moves {
    /// The watcher saw `from` renamed to `to` (a file, or a folder: each
    /// file under it). Only sources in sync are kept: only those a COPY may
    /// name. Called before the source's own change is looked at, while its
    /// record still holds what was last seen of it.
    pub fn note(&mut self, meta: &ClientMeta, from: &str, to: &str, now: Instant) {
        self.by_to.retain(|_, m| now.duration_since(m.at) < MOVE_TTL);
        let mut add = |from: &str, to: String, seen: LocalSeen| {
            if self.by_to.len() < MAX_MOVES {
                self.by_to.insert(to, Moved { from: from.to_owned(), seen, at: now });
            }
        };
        if let Some(seen) = in_sync(meta, from) {
            add(from, to.to_owned(), seen);
            return;
        }
        let prefix = format!("{from}/");
        for name in meta.records.keys().filter(|n| n.starts_with(&prefix)) {
            if let Some(seen) = in_sync(meta, name) {
                add(name, format!("{to}/{}", &name[prefix.len()..]), seen);
            }
        }
    }

    /// The source `name` was renamed from, if it still holds what was
    /// recorded of the source (`stat`, outside the racy window).
    pub fn take(&mut self, name: &str, stat: FileStat, now: SystemTime) -> Option<(String, Content)> {
        let moved = self.by_to.remove(name)?;
        seen_is_current(Some(moved.seen), stat, now).then_some((moved.from, moved.seen.content))
    }
}

/// What was last seen of `name`'s file, when that is its base.
fn in_sync(meta: &ClientMeta, name: &str) -> Option<LocalSeen> {
    let rec = meta.records.get(name)?;
    let seen = rec.local?;
    (rec.base == Some(seen.content)).then_some(seen)
}

/// Files in sync with `size` bytes, other than `name`: what a new file of
/// that size may be a copy of (at most [`MAX_COMPARED`]).
pub fn candidates(meta: &ClientMeta, name: &str, size: u64) -> Vec<(String, LocalSeen)> {
    meta.records
        .keys()
        .filter(|n| n.as_str() != name)
        .filter_map(|n| in_sync(meta, n).filter(|s| s.content.size == size).map(|s| (n.clone(), s)))
        .take(MAX_COMPARED)
        .collect()
}

/// The first of `candidates` whose file is on disk as recorded and holds
/// the same bytes as `path` (whose stat is `stat`): its name and content.
pub fn same_bytes(
    root: &Path,
    path: &Path,
    stat: FileStat,
    candidates: Vec<(String, LocalSeen)>,
    now: SystemTime,
) -> Option<(String, Content)> {
    for (name, seen) in candidates {
        let source = local_path(root, &name);
        let on_disk = match probe(&source) {
            Ok(Probe::File(s)) => s,
            _ => continue,
        };
        if on_disk != FileStat::of_seen(&seen) || !seen_is_current(Some(seen), on_disk, now) {
            continue;
        }
        match equal_files(&source, path, stat.size) {
            Ok(true) if probe(&source).ok() == Some(Probe::File(on_disk)) => return Some((name, seen.content)),
            Ok(_) => {}
            Err(e) => log::debug!("cannot compare {} with {name}: {e}", path.display()),
        }
    }
    None
}

/// True when both files hold the same `size` bytes.
fn equal_files(a: &Path, b: &Path, size: u64) -> io::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; COMPARE_BUFFER], vec![0u8; COMPARE_BUFFER]);
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(COMPARE_BUFFER);
        fa.read_exact(&mut ba[..n])?;
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    // Neither may have grown beyond `size`.
    Ok(fa.read(&mut ba[..1])? == 0 && fb.read(&mut bb[..1])? == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_core::meta_client::ClientRecord;
    use dropsync_proto::md5;
    use std::time::UNIX_EPOCH;

    fn content(bytes: &[u8]) -> Content {
        Content { md5: md5(bytes), size: bytes.len() as u64 }
    }

    fn meta_with(records: &[(&str, &[u8], bool)]) -> ClientMeta {
        let mut meta = ClientMeta::new([7; 16]);
        for (name, bytes, synced) in records {
            let c = content(bytes);
            let base = if *synced { Some(c) } else { None };
            meta.records.insert((*name).into(), ClientRecord { base, base_version: 0, local: Some(LocalSeen { mtime_ns: 1_000, content: c }) });
        }
        meta
    }

    /// Long after mtime 1,000 ns: outside the racy window.
    fn later() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(100)
    }

    #[test]
    fn a_rename_of_a_file_in_sync_names_its_source_while_its_stat_is_unchanged() {
        let meta = meta_with(&[("a.bin", b"data", true)]);
        let mut moves = Moves::default();
        moves.note(&meta, "a.bin", "b.bin", Instant::now());
        let stat = FileStat { mtime_ns: 1_000, size: 4 };
        assert_eq!(moves.take("b.bin", stat, later()), Some(("a.bin".into(), content(b"data"))));
        assert_eq!(moves.take("b.bin", stat, later()), None, "used once");
    }

    #[test]
    fn a_renamed_file_changed_since_or_a_source_not_in_sync_is_no_copy() {
        let meta = meta_with(&[("a", b"data", true), ("local-only", b"mine", false)]);
        let mut moves = Moves::default();
        moves.note(&meta, "a", "b", Instant::now());
        assert_eq!(moves.take("b", FileStat { mtime_ns: 2_000, size: 4 }, later()), None, "written after the rename");
        moves.note(&meta, "local-only", "c", Instant::now());
        assert_eq!(moves.take("c", FileStat { mtime_ns: 1_000, size: 4 }, later()), None, "the server never had it");
        // Within the racy window the stat proves nothing.
        moves.note(&meta, "a", "d", Instant::now());
        let racy = UNIX_EPOCH + Duration::from_nanos(1_500);
        assert_eq!(moves.take("d", FileStat { mtime_ns: 1_000, size: 4 }, racy), None);
    }

    #[test]
    fn a_folder_renamed_names_each_file_under_it() {
        let meta = meta_with(&[("dir/x", b"1", true), ("dir/sub/y", b"22", true), ("dirt", b"3", true)]);
        let mut moves = Moves::default();
        moves.note(&meta, "dir", "new", Instant::now());
        assert_eq!(moves.take("new/x", FileStat { mtime_ns: 1_000, size: 1 }, later()).map(|m| m.0), Some("dir/x".into()));
        assert_eq!(moves.take("new/sub/y", FileStat { mtime_ns: 1_000, size: 2 }, later()).map(|m| m.0), Some("dir/sub/y".into()));
        assert_eq!(moves.by_to.len(), 0, "dirt is not under dir/");
    }

    #[test]
    fn candidates_are_files_in_sync_of_the_same_size() {
        let meta = meta_with(&[("a", b"four", true), ("b", b"4444", false), ("c", b"five!", true), ("new", b"four", true)]);
        let names: Vec<String> = candidates(&meta, "new", 4).into_iter().map(|c| c.0).collect();
        assert_eq!(names, vec!["a".to_string()]);
    }

    #[test]
    fn files_are_equal_only_byte_for_byte_and_size_for_size() {
        let dir = std::env::temp_dir().join(format!("dropsync-copy-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, c) = (dir.join("a"), dir.join("b"), dir.join("c"));
        let big: Vec<u8> = (0..3 * COMPARE_BUFFER + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&a, &big).unwrap();
        std::fs::write(&b, &big).unwrap();
        let mut other = big.clone();
        *other.last_mut().unwrap() ^= 1;
        std::fs::write(&c, &other).unwrap();
        assert!(equal_files(&a, &b, big.len() as u64).unwrap());
        assert!(!equal_files(&a, &c, big.len() as u64).unwrap());
        assert!(!equal_files(&a, &b, big.len() as u64 - 1).unwrap(), "longer than said");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
