//! Version history on the server (issue 17: nothing is ever lost): every
//! line a commit replaces (an overwritten version, a deleted file's last
//! version, a tombstone written over) is kept with the time it was
//! replaced, for a retention the server chooses, so that a version can be
//! listed and restored and a folder undeleted as it was at a point in time.
//!
//! Kept lines are appended to their own file ([`HISTORY`]) beside the
//! META-DATA snapshot and journal, one per line: the time it was replaced
//! (ns since the epoch), a tab, then the line as the server stores it. A
//! torn last line (a crash mid-append) is dropped, as in the journal; the
//! file is rewritten whole when retention drops lines. A kept file version
//! holds one reference to its content: content goes only when nothing live
//! and nothing kept names it.

use std::collections::HashMap;

use dropsync_proto::metadata::{self, Entry, EntryState, Line};

use crate::CoreError;

/// Blob name of the history, beside the META-DATA snapshot and journal.
pub const HISTORY: &str = "history.journal";

/// A line some commit replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kept {
    /// The line as it was (a file version, or a tombstone).
    pub entry: Entry,
    /// When the commit that replaced it happened, ns since the epoch.
    pub replaced_ns: i64,
}

impl Kept {
    /// Whether this was a file (whose content is kept), not a tombstone.
    pub fn is_file(&self) -> bool {
        self.entry.state == EntryState::File
    }

    /// Appends its history line.
    pub fn render(&self, out: &mut String) {
        out.push_str(&self.replaced_ns.to_string());
        out.push('\t');
        metadata::render_stored_entry(&self.entry, out);
    }
}

/// Every kept line, by path, oldest first.
#[derive(Debug, Default, Clone)]
pub struct History {
    by_path: HashMap<String, Vec<Kept>>,
    len: usize,
}

/// How much the history keeps, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Kept lines (file versions and tombstones).
    pub versions: usize,
    /// Bytes of the kept file versions (identical contents counted once
    /// each: this is what restores would bring back, not disk use).
    pub bytes: u64,
}

impl History {
    /// Keeps `old`, replaced at `replaced_ns`.
    pub fn keep(&mut self, old: Entry, replaced_ns: i64) -> &Kept {
        let list = self.by_path.entry(old.path.clone()).or_default();
        list.push(Kept { entry: old, replaced_ns });
        self.len += 1;
        let last = list.len() - 1;
        &list[last]
    }

    /// What is kept of `path`, oldest first.
    pub fn of(&self, path: &str) -> &[Kept] {
        self.by_path.get(path).map_or(&[], Vec::as_slice)
    }

    /// Every kept line.
    pub fn iter(&self) -> impl Iterator<Item = &Kept> {
        self.by_path.values().flatten()
    }

    /// Kept lines.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How much is kept (a walk over every kept line).
    pub fn size(&self) -> Size {
        let bytes = self.iter().filter(|k| k.is_file()).map(|k| k.entry.size).fold(0u64, u64::saturating_add);
        Size { versions: self.len, bytes }
    }

    /// The size budget as a retention cutoff: the time such that dropping
    /// every line replaced before it leaves at most `budget` bytes of kept
    /// file versions, keeping the most recently replaced ones. `None` when
    /// everything fits. A version larger than the budget alone is dropped,
    /// and with it everything replaced no later than it.
    pub fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        let mut files: Vec<(i64, u64)> =
            self.iter().filter(|k| k.is_file()).map(|k| (k.replaced_ns, k.entry.size)).collect();
        files.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        let mut total = 0u64;
        for (replaced_ns, size) in files {
            total = total.saturating_add(size);
            if total > budget {
                return Some(replaced_ns.saturating_add(1));
            }
        }
        None
    }

    /// Drops every line replaced before `cutoff_ns` and returns them (the
    /// caller releases the content of each file version).
    pub fn expire(&mut self, cutoff_ns: i64) -> Vec<Kept> {
        let mut gone = Vec::new();
        self.by_path.retain(|_, list| {
            let (old, keep): (Vec<Kept>, Vec<Kept>) =
                std::mem::take(list).into_iter().partition(|k| k.replaced_ns < cutoff_ns);
            gone.extend(old);
            *list = keep;
            !list.is_empty()
        });
        self.len -= gone.len();
        gone
    }

    /// Drops every line `f` picks; returns how many.
    pub fn drop_where(&mut self, mut f: impl FnMut(&Kept) -> bool) -> usize {
        let before = self.len;
        self.by_path.retain(|_, list| {
            list.retain(|k| !f(k));
            !list.is_empty()
        });
        self.len = self.by_path.values().map(Vec::len).sum();
        before - self.len
    }

    /// The whole history file.
    pub fn render(&self) -> String {
        self.render_where(|_| true)
    }

    /// The history file holding only the lines `keep` picks (what it will
    /// hold once the others are dropped), without a copy of the history.
    pub fn render_where(&self, keep: impl Fn(&Kept) -> bool) -> String {
        let mut all: Vec<&Kept> = self.iter().filter(|k| keep(k)).collect();
        all.sort_unstable_by_key(|k| (k.replaced_ns, k.entry.version));
        let mut out = String::with_capacity(all.len() * 110);
        for k in all {
            k.render(&mut out);
        }
        out
    }

    /// Reads a history file. A torn last line is dropped; a bad line
    /// before it is an error.
    pub fn parse(text: &str) -> Result<Self, CoreError> {
        let mut h = History::default();
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        let lines: Vec<&str> = complete.split('\n').filter(|l| !l.is_empty()).collect();
        for (i, raw) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            let parsed = raw.split_once('\t').and_then(|(t, rest)| {
                let t: i64 = t.parse().ok()?;
                match metadata::parse_line(rest, i + 1) {
                    Ok(Line::Entry(e)) => Some((t, e)),
                    _ => None,
                }
            });
            match parsed {
                Some((t, e)) => {
                    h.keep(e, t);
                }
                None if last => {}
                None => {
                    return Err(CoreError::Io(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{HISTORY}: line {} is not a kept version", i + 1),
                    )))
                }
            }
        }
        Ok(h)
    }
}

/// Whether `path` is `prefix` itself or inside the folder `prefix` (every
/// path for an empty prefix).
pub fn under(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// The file version of each path under `prefix` that was live at `t_ns`:
/// the current line if it was committed by then, else the kept line whose
/// life (from its commit to its replacement) spans `t_ns`. Sorted by path.
pub fn live_at<'a>(
    current: impl Iterator<Item = &'a Entry>,
    history: &'a History,
    prefix: &str,
    t_ns: i64,
) -> Vec<Entry> {
    let mut out = Vec::new();
    for cur in current.filter(|e| under(&e.path, prefix)) {
        let line = if cur.mtime_ns <= t_ns {
            Some(cur)
        } else {
            history.of(&cur.path).iter().find(|k| k.entry.mtime_ns <= t_ns && t_ns < k.replaced_ns).map(|k| &k.entry)
        };
        if let Some(e) = line.filter(|e| e.state == EntryState::File) {
            out.push(e.clone());
        }
    }
    out.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(path: &str, version: u64, at: i64, state: EntryState) -> Entry {
        Entry {
            version,
            md5: [version as u8; 16],
            size: version,
            mtime_ns: at,
            state,
            path: path.into(),
            strong: Some([version as u8; 32]),
        }
    }

    #[test]
    fn the_size_budget_keeps_the_most_recently_replaced_versions() {
        let mut h = History::default();
        // Sizes are the versions: 5, 3 and 4 bytes, replaced at 50, 30, 40;
        // a tombstone weighs nothing.
        h.keep(e("a", 5, 1, EntryState::File), 50);
        h.keep(e("b", 3, 1, EntryState::File), 30);
        h.keep(e("c", 4, 1, EntryState::File), 40);
        h.keep(e("d", 9, 1, EntryState::Deleted), 10);
        assert_eq!(h.budget_cutoff(12), None, "everything fits");
        assert_eq!(h.budget_cutoff(11), Some(31), "the oldest file version goes, and what is older");
        assert_eq!(h.budget_cutoff(9), Some(31));
        assert_eq!(h.budget_cutoff(8), Some(41));
        assert_eq!(h.budget_cutoff(4), Some(51), "the newest alone is over budget");
        let mut left = h.clone();
        left.expire(41);
        assert_eq!(left.size().bytes, 5);
    }

    #[test]
    fn kept_lines_round_trip_and_a_torn_last_line_is_dropped() {
        let mut h = History::default();
        h.keep(e("a", 1, 10, EntryState::File), 20);
        h.keep(e("d/b c", 2, 11, EntryState::Deleted), 30);
        let text = h.render();
        let back = History::parse(&text).unwrap();
        assert_eq!(back.of("a"), h.of("a"));
        assert_eq!(back.of("d/b c"), h.of("d/b c"));
        let torn = format!("{text}40\t1\t");
        assert_eq!(History::parse(&torn).unwrap().len(), 2);
        let bad = format!("x\n{text}");
        assert!(History::parse(&bad).is_err(), "garbage before the end is not a crash's");
    }

    #[test]
    fn retention_drops_what_was_replaced_before_the_cutoff() {
        let mut h = History::default();
        h.keep(e("a", 1, 10, EntryState::File), 20);
        h.keep(e("a", 2, 20, EntryState::File), 30);
        h.keep(e("b", 3, 5, EntryState::File), 40);
        assert_eq!(h.size(), Size { versions: 3, bytes: 1 + 2 + 3 });
        let gone = h.expire(30);
        assert_eq!(gone.iter().map(|k| k.entry.version).collect::<Vec<_>>(), [1]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.of("a").len(), 1);
    }

    #[test]
    fn the_version_live_at_a_time_comes_from_the_table_or_the_history() {
        let mut h = History::default();
        // "d/x": v1 at 10, deleted (v2) at 20; "d/y": v3 at 15, v4 at 30.
        h.keep(e("d/x", 1, 10, EntryState::File), 20);
        h.keep(e("d/y", 3, 15, EntryState::File), 30);
        let current =
            [e("d/x", 2, 20, EntryState::Deleted), e("d/y", 4, 30, EntryState::File), e("z", 5, 1, EntryState::File)];
        let at = |t| live_at(current.iter(), &h, "d", t).iter().map(|e| e.version).collect::<Vec<_>>();
        assert_eq!(at(16), [1, 3]);
        assert_eq!(at(25), [3], "deleted by then");
        assert_eq!(at(31), [4]);
        assert_eq!(at(5), Vec::<u64>::new(), "nothing yet");
        assert!(under("d/x", "d/") && under("d", "d") && !under("dx", "d") && under("z", ""));
    }
}
