//! Crash-safe persistence of a META-DATA table that stays fast at a million
//! entries: a snapshot plus an append-only journal.
//!
//! Each change appends its path's new line to the journal and syncs it: one
//! small write per commit instead of rewriting the whole table. When the
//! journal grows past half the table (and a floor), the table is compacted:
//! a new snapshot is written atomically (temp, fsync, rename, fsync dir) and
//! the journal is dropped. Both files use the META-DATA line format, so the
//! snapshot is an ordinary META-DATA file.
//!
//! Both carry a `# generation N` line. A journal whose generation differs
//! from the snapshot's is left over from a compaction that crashed after
//! writing the new snapshot and before removing the journal; it is already
//! folded into the snapshot and is ignored. A torn last journal line (a crash
//! mid-append) is dropped: its commit was never acknowledged; it is cut off
//! at open, so that the next append does not glue a line to it.

use std::collections::HashMap;

use dropsync_proto::metadata::{self, Entry, Line, MetadataError};

use crate::storage::Storage;
use crate::CoreError;

/// Blob name of the snapshot.
pub const SNAPSHOT: &str = "metadata";
/// Blob name of the journal.
pub const JOURNAL: &str = "metadata.journal";
const GENERATION_PREFIX: &str = "# generation ";
/// Journals shorter than this are never compacted: rewriting a small table
/// is cheap, but rewriting it on every change would not be, and a first
/// upload of 10,000 files should not stop twice to rewrite the table (at
/// 4096 it did: 9% of the server's instructions in a callgrind profile of
/// `make bench`'s B3). Replaying this many lines at start takes
/// milliseconds.
pub const MIN_COMPACT_ENTRIES: usize = 16_384;

/// The snapshot-plus-journal persistence of one table.
#[derive(Debug)]
pub struct JournaledStore<S: Storage> {
    storage: S,
    generation: u64,
    journal_entries: usize,
}

/// What [`JournaledStore::open`] found on disk.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest line for every path.
    pub entries: HashMap<String, Entry>,
    /// Journal lines that were replayed (0 after a clean compaction).
    pub journal_entries: usize,
}

fn generation_of(text: &str) -> Option<u64> {
    text.lines()
        .take(3)
        .find_map(|l| l.strip_prefix(GENERATION_PREFIX))
        .and_then(|g| g.trim().parse().ok())
}

/// Reads the table as `storage` holds it, writing nothing: for a reader
/// beside the running server (`server history`), which must not repair
/// what the server may be appending to at that moment.
pub fn read_only<S: Storage>(storage: &S) -> Result<Loaded, CoreError> {
    let mut loaded = Loaded::default();
    let mut generation = 0;
    if let Some(bytes) = storage.read(SNAPSHOT)? {
        let text = String::from_utf8(bytes).map_err(|_| MetadataError::BadHeader)?;
        generation = generation_of(&text).unwrap_or(0);
        for e in metadata::parse_document(&text)?.entries {
            loaded.entries.insert(e.path.clone(), e);
        }
    }
    if let Some(bytes) = storage.read(JOURNAL)? {
        let text = String::from_utf8_lossy(&bytes);
        if generation_of(&text) == Some(generation) {
            loaded.journal_entries = replay(&text, &mut loaded.entries)?.0;
        }
    }
    Ok(loaded)
}

impl<S: Storage> JournaledStore<S> {
    /// Loads the snapshot and replays the journal over it.
    pub fn open(storage: S) -> Result<(Self, Loaded), CoreError> {
        let mut loaded = Loaded::default();
        let mut generation = 0;
        if let Some(bytes) = storage.read(SNAPSHOT)? {
            let text = String::from_utf8(bytes).map_err(|_| MetadataError::BadHeader)?;
            generation = generation_of(&text).unwrap_or(0);
            let doc = metadata::parse_document(&text)?;
            loaded.entries.reserve(doc.entries.len());
            for e in doc.entries {
                loaded.entries.insert(e.path.clone(), e);
            }
        }
        if let Some(bytes) = storage.read(JOURNAL)? {
            let text = String::from_utf8_lossy(&bytes);
            if generation_of(&text) == Some(generation) {
                let (applied, good) = replay(&text, &mut loaded.entries)?;
                loaded.journal_entries = applied;
                if good < text.len() {
                    // A torn tail (a crash mid-append, never acknowledged)
                    // is cut off before anything is appended after it:
                    // the next line would be glued to it, and the journal
                    // unreadable at the next start (found by the
                    // simulator, seed 60).
                    storage.replace(JOURNAL, &text.as_bytes()[..good])?;
                }
            }
        }
        let store = Self { storage, generation, journal_entries: loaded.journal_entries };
        Ok((store, loaded))
    }

    /// Durably records the new lines of the given paths. Returns once they
    /// would survive a crash.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), CoreError> {
        let mut text = String::with_capacity(entries.len() * 96 + 32);
        if self.journal_entries == 0 {
            // A fresh journal: (re)create it with its generation line, so a
            // stale journal of an older generation is replaced, not extended.
            text.push_str(GENERATION_PREFIX);
            text.push_str(&self.generation.to_string());
            text.push('\n');
            for e in entries {
                metadata::render_stored_entry(e, &mut text);
            }
            self.storage.replace(JOURNAL, text.as_bytes())?;
        } else {
            for e in entries {
                metadata::render_stored_entry(e, &mut text);
            }
            self.storage.append(JOURNAL, text.as_bytes())?;
        }
        self.journal_entries += entries.len();
        Ok(())
    }

    /// True when the journal has grown enough that a compaction pays off
    /// (`live` is the number of entries in the table).
    pub fn should_compact(&self, live: usize) -> bool {
        self.journal_entries > MIN_COMPACT_ENTRIES.max(live / 2)
    }

    /// Journal lines written since the last compaction.
    pub fn journal_entries(&self) -> usize {
        self.journal_entries
    }

    /// Writes a new snapshot of `entries` and drops the journal.
    pub fn compact<'a>(
        &mut self,
        entries: impl ExactSizeIterator<Item = &'a Entry>,
    ) -> Result<(), CoreError> {
        let next = self.generation + 1;
        let mut text = String::with_capacity(entries.len() * 96 + 64);
        metadata::render_header(&mut text);
        text.push_str(GENERATION_PREFIX);
        text.push_str(&next.to_string());
        text.push('\n');
        for e in entries {
            metadata::render_stored_entry(e, &mut text);
        }
        self.storage.replace(SNAPSHOT, text.as_bytes())?;
        self.generation = next;
        self.journal_entries = 0;
        self.storage.remove(JOURNAL)?;
        Ok(())
    }

    /// The storage underneath, e.g. for tests that simulate a crash.
    pub fn storage(&self) -> &S {
        &self.storage
    }
}

/// Replays journal lines into `entries`; returns how many were applied. The
/// last line may be torn by a crash and is then ignored.
/// Replays the journal's lines; returns how many were applied and the
/// length of the text up to the end of the last good line (what follows
/// is a torn tail).
fn replay(text: &str, entries: &mut HashMap<String, Entry>) -> Result<(usize, usize), CoreError> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    let mut applied = 0;
    let mut good = 0;
    let lines: Vec<&str> = complete.split('\n').collect();
    let last = lines.len().saturating_sub(2);
    let mut start = 0;
    for (i, raw) in lines.iter().enumerate() {
        let end = (start + raw.len() + 1).min(complete.len());
        match metadata::parse_line(raw, i + 1) {
            Ok(Line::Entry(e)) => {
                entries.insert(e.path.clone(), e);
                applied += 1;
                good = end;
            }
            Ok(_) => good = end,
            // A crash can leave garbage only at the very end.
            Err(_) if i >= last => break,
            Err(e) => return Err(e.into()),
        }
        start = end;
    }
    Ok((applied, good))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;
    use dropsync_proto::metadata::EntryState;
    use std::sync::Arc;

    type Shared = Arc<MemStorage>;

    #[test]
    fn a_torn_tail_is_cut_off_so_later_appends_stay_readable() {
        let disk: Shared = Arc::new(MemStorage::new());
        let (mut store, _) = JournaledStore::open(disk.clone()).unwrap();
        store.append(&[e("a", 1)]).unwrap();
        store.append(&[e("b", 2)]).unwrap();
        // A crash in the middle of the next append: a prefix of its line.
        let mut line = String::new();
        metadata::render_stored_entry(&e("c", 3), &mut line);
        disk.append(JOURNAL, &line.as_bytes()[..line.len() / 2]).unwrap();
        let (mut store, loaded) = JournaledStore::open(disk.clone()).unwrap();
        assert_eq!(loaded.entries.len(), 2, "the torn line was never acknowledged");
        store.append(&[e("d", 4)]).unwrap();
        let (_, loaded) = JournaledStore::open(disk.clone()).expect("readable after more appends");
        let mut paths: Vec<&str> = loaded.entries.keys().map(String::as_str).collect();
        paths.sort_unstable();
        assert_eq!(paths, ["a", "b", "d"]);
    }

    fn e(path: &str, version: u64) -> Entry {
        Entry {
            version,
            md5: [version as u8; 16],
            size: version,
            mtime_ns: 0,
            state: EntryState::File,
            path: path.into(),
            // Every other line has one: both forms round-trip.
            strong: (version & 1 == 0).then_some([version as u8; 32]),
        }
    }

    #[test]
    fn journal_replays_over_snapshot_and_later_lines_win() {
        let s = Shared::default();
        let (mut store, loaded) = JournaledStore::open(s.clone()).unwrap();
        assert!(loaded.entries.is_empty());
        store.append(&[e("a", 1), e("b", 2)]).unwrap();
        store.append(&[e("a", 3)]).unwrap();
        let (_, loaded) = JournaledStore::open(s.clone()).unwrap();
        assert_eq!(loaded.entries["a"].version, 3);
        assert_eq!(loaded.entries["b"].version, 2);
        assert_eq!(loaded.journal_entries, 3);
    }

    #[test]
    fn compaction_folds_journal_into_snapshot() {
        let s = Shared::default();
        let (mut store, _) = JournaledStore::open(s.clone()).unwrap();
        store.append(&[e("a", 1), e("b", 2)]).unwrap();
        let table = [e("a", 1), e("b", 2)];
        store.compact(table.iter()).unwrap();
        assert_eq!(s.read(JOURNAL).unwrap(), None);
        store.append(&[e("c", 3)]).unwrap();
        let (_, loaded) = JournaledStore::open(s.clone()).unwrap();
        assert_eq!(loaded.entries.len(), 3);
        assert_eq!(loaded.journal_entries, 1);
        // The snapshot is an ordinary META-DATA file.
        let snap = String::from_utf8(s.read(SNAPSHOT).unwrap().unwrap()).unwrap();
        assert_eq!(metadata::parse_document(&snap).unwrap().entries.len(), 2);
    }

    #[test]
    fn stale_journal_after_crashed_compaction_is_ignored() {
        let s = Shared::default();
        let (mut store, _) = JournaledStore::open(s.clone()).unwrap();
        store.append(&[e("a", 1)]).unwrap();
        store.append(&[e("a", 2)]).unwrap();
        let old_journal = s.read(JOURNAL).unwrap().unwrap();
        store.compact([e("a", 2)].iter()).unwrap();
        // Crash between snapshot rename and journal removal.
        s.replace(JOURNAL, &old_journal).unwrap();
        let (mut store, loaded) = JournaledStore::open(s.clone()).unwrap();
        assert_eq!(loaded.entries["a"].version, 2);
        assert_eq!(loaded.journal_entries, 0);
        // The next append starts a fresh journal of the new generation.
        store.append(&[e("a", 5)]).unwrap();
        let (_, loaded) = JournaledStore::open(s).unwrap();
        assert_eq!(loaded.entries["a"].version, 5);
    }

    #[test]
    fn torn_last_line_is_dropped_but_earlier_garbage_is_an_error() {
        let s = Shared::default();
        let (mut store, _) = JournaledStore::open(s.clone()).unwrap();
        store.append(&[e("a", 1)]).unwrap();
        s.append(JOURNAL, b"2\tdeadbe").unwrap();
        let (_, loaded) = JournaledStore::open(s.clone()).unwrap();
        assert_eq!(loaded.entries["a"].version, 1);
        s.append(JOURNAL, b"\n").unwrap();
        let (_, loaded) = JournaledStore::open(s.clone()).unwrap();
        assert_eq!(loaded.entries.len(), 1, "a complete but broken last line is dropped too");
        s.append(JOURNAL, b"garbage\n3\t00000000000000000000000000000000\t0\t0\tF\tb\n").unwrap();
        assert!(JournaledStore::open(s).is_err());
    }

    #[test]
    fn should_compact_has_a_floor_and_scales_with_the_table() {
        let (mut store, _) = JournaledStore::open(MemStorage::new()).unwrap();
        let batch: Vec<Entry> = (0..MIN_COMPACT_ENTRIES as u64 + 1).map(|i| e("p", i)).collect();
        store.append(&batch).unwrap();
        assert!(store.should_compact(10));
        assert!(!store.should_compact(10 * MIN_COMPACT_ENTRIES));
    }
}
