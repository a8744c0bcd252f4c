//! What the harness did, and the invariants that judge the end state
//! against it. Pure: no processes, no disk; unit-tested on hand-made
//! histories.
//!
//! Every change the harness makes to a client folder is an [`Event`]: the
//! client, the path, the content the harness saw there just before (the
//! *prior*, read while that client could not touch the folder, see
//! `harness.rs`) and the change: a write of new content, or a delete.
//! Contents are named by MD5 and size ([`Version`]); every content the
//! harness ever wrote is in [`History::contents`], with the event that
//! first produced it. Contents are unique by construction (each carries
//! the seed, step, client and path), except empty files, truncations that
//! happen to agree, and a rename that moves a content back: the checks
//! below say where that matters.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use dropsync_proto::{md5, Digest};

use crate::names::derives_from;

/// One content, by digest and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version {
    /// MD5 of the bytes.
    pub md5: Digest,
    /// Length in bytes.
    pub size: u64,
}

impl Version {
    /// The version of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Version { md5: md5(bytes), size: bytes.len() as u64 }
    }
}

/// A folder (or the server's view) as the checks see it: path → content.
pub type Tree = BTreeMap<String, Version>;

/// What an event did to its path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The path now holds this content.
    Write(Version),
    /// The file was removed.
    Delete,
}

/// One change the harness made to one client's folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Position in harness order (the index in [`History::events`]).
    pub seq: usize,
    /// The workload step it belongs to.
    pub step: usize,
    /// The client whose folder was changed.
    pub client: usize,
    /// The path changed.
    pub path: String,
    /// What the folder held there just before (None: no file).
    pub prior: Option<Version>,
    /// The change.
    pub change: Change,
}

/// A content back at a path after a client that saw it there replaced or
/// deleted it (see [`History::resurrections`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resurrection {
    /// The path.
    pub path: String,
    /// The content back there.
    pub content: Version,
    /// The event that wrote it.
    pub written: usize,
    /// The later event that saw it there and replaced or deleted it.
    pub gone: usize,
}

/// Where a content came from: the first event that wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// That event's `seq`.
    pub seq: usize,
}

/// Everything the harness did to the folders, in order.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// The events, in harness order.
    pub events: Vec<Event>,
    /// Every content written, by digest.
    pub contents: HashMap<Digest, Origin>,
}

impl History {
    /// Records that `client` wrote `bytes` at `path` over `prior`.
    pub fn write(&mut self, step: usize, client: usize, path: &str, prior: Option<Version>, bytes: &[u8]) -> Version {
        let v = Version::of(bytes);
        let seq = self.events.len();
        self.contents.entry(v.md5).or_insert(Origin { seq });
        self.events.push(Event { seq, step, client, path: path.to_owned(), prior, change: Change::Write(v) });
        v
    }

    /// Records that `client` deleted `path`, which held `prior`.
    pub fn delete(&mut self, step: usize, client: usize, path: &str, prior: Version) {
        let seq = self.events.len();
        self.events.push(Event { seq, step, client, path: path.to_owned(), prior: Some(prior), change: Change::Delete });
    }

    /// A short name for a content: `v<seq>` of the event that first wrote
    /// it, with its size; `?<md5 prefix>` for one the harness never wrote.
    pub fn describe(&self, v: Option<Version>) -> String {
        match v {
            None => "-".to_owned(),
            Some(v) => match self.contents.get(&v.md5) {
                Some(o) => format!("v{}[{}]", o.seq, human(v.size)),
                None => format!("?{}[{}]", &dropsync_proto::digest::to_hex(&v.md5)[..8], human(v.size)),
            },
        }
    }

    /// One line for an event.
    pub fn show(&self, e: &Event) -> String {
        let what = match e.change {
            Change::Write(v) => format!("write {}", self.describe(Some(v))),
            Change::Delete => "delete".to_owned(),
        };
        format!("e{} step {} c{} {} {:?} (prior {})", e.seq, e.step, e.client, what, e.path, self.describe(e.prior))
    }

    /// Every event on `path` or on a conflict copy of it, one per line.
    pub fn show_path(&self, path: &str) -> String {
        let mut out = String::new();
        for e in self.events.iter().filter(|e| derives_from(&e.path, path)) {
            let _ = writeln!(out, "      {}", self.show(e));
        }
        out
    }

    /// Invariant 2, no lost work. For every client and path, the client's
    /// last change there, if it is a write of W, obliges the end state to
    /// hold W under the path or under a conflict copy of it (at any depth) —
    /// unless W was *superseded*: some later event, on any client, on the
    /// path or a conflict copy of it, saw W there as its prior and replaced
    /// or deleted it. A client that changes a version it has seen may
    /// legitimately make it disappear; nothing else may.
    ///
    /// Two refinements, both for contents that are not unique (an empty
    /// file, say): a write that leaves the content as it was (W over W) is
    /// no change and owes nothing; and a content written by more than one
    /// event cannot be ordered by harness time (another client may have
    /// seen and deleted the same bytes from a different write), so for it
    /// any other client's event that saw it counts, earlier or later.
    pub fn lost_work(&self, end: &Tree) -> Vec<String> {
        let mut last: BTreeMap<(usize, &str), &Event> = BTreeMap::new();
        for e in &self.events {
            if matches!((e.change, e.prior), (Change::Write(w), Some(p)) if w == p) {
                continue; // W over W: nothing changed
            }
            last.insert((e.client, e.path.as_str()), e);
        }
        let mut writes: HashMap<Version, usize> = HashMap::new();
        for e in &self.events {
            if let Change::Write(v) = e.change {
                *writes.entry(v).or_insert(0) += 1;
            }
        }
        let mut out = Vec::new();
        for ((client, path), e) in last {
            let Change::Write(w) = e.change else { continue };
            let unique = writes.get(&w).copied().unwrap_or(0) <= 1;
            let superseded = self.events.iter().any(|f| {
                f.prior == Some(w)
                    && f.seq != e.seq
                    && (f.seq > e.seq || (!unique && f.client != client))
                    && derives_from(&f.path, path)
            });
            if superseded {
                continue;
            }
            let kept = end.iter().any(|(q, v)| *v == w && derives_from(q, path));
            if !kept {
                out.push(format!(
                    "c{client}'s last write of {path:?} ({}, e{}) is neither there nor in a conflict copy, and no later \
                     change saw it; the end state has {} there\n    events on the path:\n{}",
                    self.describe(Some(w)),
                    e.seq,
                    self.describe(end.get(path).copied()),
                    self.show_path(path)
                ));
            }
        }
        out
    }

    /// Invariant 3, no resurrection. A content V present at path P at the
    /// end must not be one that an event saw at P and then deleted or
    /// replaced, after the (single) event that wrote V at P: that event
    /// happened after the write, on a client that had the write, so by the
    /// protocol (last finished upload wins, stale changes keep what they
    /// overwrite as *copies*) V can never be back at P. In particular a path
    /// deleted by a client that saw its content, with no later write
    /// anywhere, is absent. A write that no deleter saw (a concurrent one)
    /// may legitimately win over the delete: last finished upload wins.
    /// Contents written at P more than once (empty files, a rename back)
    /// cannot be told apart, so they are not judged.
    pub fn resurrections(&self, end: &Tree) -> Vec<String> {
        self.resurrected(end).iter().map(|r| self.show_resurrection(r)).collect()
    }

    /// The cases [`resurrections`](Self::resurrections) reports, as data.
    pub fn resurrected(&self, end: &Tree) -> Vec<Resurrection> {
        let mut out = Vec::new();
        for (path, v) in end {
            let mut writes = self.events.iter().filter(|e| e.path == *path && e.change == Change::Write(*v));
            let (Some(w), None) = (writes.next(), writes.next()) else { continue };
            let gone = self.events[w.seq + 1..].iter().find(|e| e.path == *path && e.prior == Some(*v));
            if let Some(g) = gone {
                out.push(Resurrection { path: path.clone(), content: *v, written: w.seq, gone: g.seq });
            }
        }
        out
    }

    /// One line for a resurrection, with the events on its path.
    pub fn show_resurrection(&self, r: &Resurrection) -> String {
        let g = &self.events[r.gone];
        let how = if g.change == Change::Delete { "deleted" } else { "replaced" };
        format!(
            "{:?} holds {} at the end, which c{} saw and {how} at e{} after it was written at e{}\n    \
             events on the path:\n{}",
            r.path,
            self.describe(Some(r.content)),
            g.client,
            g.seq,
            r.written,
            self.show_path(&r.path)
        )
    }

    /// Invariant 4, no torn files: every file's content is one the harness
    /// wrote, whole (a prefix, a mix of two versions or a damaged transfer
    /// has a digest the harness never produced).
    pub fn torn(&self, end: &Tree) -> Vec<String> {
        end.iter()
            .filter(|(_, v)| !self.contents.contains_key(&v.md5))
            .map(|(p, v)| {
                format!(
                    "{p:?} holds {}, a content the harness never wrote (torn or damaged)\n    events on the path:\n{}",
                    self.describe(Some(*v)),
                    self.show_path(p)
                )
            })
            .collect()
    }
}

/// `1.5KiB`-style sizes for logs.
pub fn human(n: u64) -> String {
    const K: u64 = 1024;
    if n < K {
        format!("{n}B")
    } else if n < K * K {
        format!("{:.1}KiB", n as f64 / K as f64)
    } else {
        format!("{:.1}MiB", n as f64 / (K * K) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_core::conflict::conflict_name;

    fn tree(entries: &[(&str, Version)]) -> Tree {
        entries.iter().map(|(p, v)| (p.to_string(), *v)).collect()
    }

    #[test]
    fn a_write_nobody_saw_must_survive_under_the_path_or_a_copy() {
        let mut h = History::default();
        let base = h.write(0, 0, "a.txt", None, b"base");
        let w1 = h.write(1, 1, "a.txt", Some(base), b"from c1");
        let w2 = h.write(1, 2, "a.txt", Some(base), b"from c2");
        // c0's base was seen and replaced by both: not owed.
        let copy = conflict_name("a.txt", "c1", 1_700_000_000, 1);
        assert!(h.lost_work(&tree(&[("a.txt", w2), (&copy, w1)])).is_empty());
        assert!(h.lost_work(&tree(&[("a.txt", w1), (&copy, w2)])).is_empty());
        let lost = h.lost_work(&tree(&[("a.txt", w2)]));
        assert_eq!(lost.len(), 1, "{lost:?}");
        assert!(lost[0].starts_with("c1's last write of \"a.txt\""), "{}", lost[0]);
        // A copy of another path does not count.
        let other = conflict_name("b.txt", "c1", 1_700_000_000, 1);
        assert_eq!(h.lost_work(&tree(&[("a.txt", w2), (&other, w1)])).len(), 1);
    }

    #[test]
    fn a_version_seen_and_changed_later_is_not_owed() {
        let mut h = History::default();
        let w = h.write(0, 0, "a.txt", None, b"first");
        let x = h.write(1, 1, "a.txt", Some(w), b"first+more");
        assert!(h.lost_work(&tree(&[("a.txt", x)])).is_empty());
        // Deleting a conflict copy that held it counts too.
        let mut h = History::default();
        let w = h.write(0, 0, "a.txt", None, b"mine");
        let copy = conflict_name("a.txt", "c0", 1_700_000_000, 1);
        h.delete(3, 1, &copy, w);
        assert!(h.lost_work(&tree(&[])).is_empty());
        // A client's own later delete ends its obligation.
        let mut h = History::default();
        let w = h.write(0, 0, "a.txt", None, b"mine");
        h.delete(1, 0, "a.txt", w);
        assert!(h.lost_work(&tree(&[])).is_empty());
    }

    #[test]
    fn same_bytes_from_different_writes_are_not_told_apart() {
        // An empty file rewritten as empty changed nothing; another client
        // deleting an empty file there at the same time may take it away.
        let mut h = History::default();
        let e = h.write(0, 0, "b.txt", None, b"");
        h.delete(1, 1, "b.txt", e);
        h.write(1, 2, "b.txt", Some(e), b"");
        assert!(h.lost_work(&tree(&[])).is_empty());
        // Also when the empty file replaced something else: the same bytes
        // deleted elsewhere, in either order, may be these.
        let mut h = History::default();
        let x = h.write(0, 2, "b.txt", None, b"x");
        let e = h.write(0, 0, "b.txt", None, b"");
        h.delete(1, 1, "b.txt", e);
        h.write(1, 2, "b.txt", Some(x), b"");
        assert!(h.lost_work(&tree(&[])).is_empty());
        // A unique content still needs a later event that saw it.
        let mut h = History::default();
        let u = h.write(0, 0, "b.txt", None, b"unique");
        h.delete(1, 1, "b.txt", u);
        h.write(1, 2, "b.txt", Some(u), b"unique 2");
        assert_eq!(h.lost_work(&tree(&[])).len(), 1);
    }

    #[test]
    fn a_seen_and_deleted_version_must_not_come_back() {
        let mut h = History::default();
        let w = h.write(0, 0, "a.txt", None, b"v");
        h.delete(1, 1, "a.txt", w);
        let back = h.resurrections(&tree(&[("a.txt", w)]));
        assert_eq!(back.len(), 1);
        assert!(back[0].contains("deleted at e1 after it was written at e0"), "{}", back[0]);
        assert!(h.resurrections(&tree(&[])).is_empty());
        // As a conflict copy it is fine (a client that never heard of the
        // delete keeps its local version that way).
        let copy = conflict_name("a.txt", "c0", 1_700_000_000, 1);
        assert!(h.resurrections(&tree(&[(&copy, w)])).is_empty());
        // A concurrent write (not seen by the deleter) may win over it.
        let mut h = History::default();
        let base = h.write(0, 0, "a.txt", None, b"base");
        let w = h.write(1, 1, "a.txt", Some(base), b"concurrent");
        h.delete(1, 2, "a.txt", base);
        assert!(h.resurrections(&tree(&[("a.txt", w)])).is_empty());
        // A replaced version coming back is caught as well.
        let mut h = History::default();
        let old = h.write(0, 0, "a.txt", None, b"old");
        h.write(1, 1, "a.txt", Some(old), b"new");
        assert_eq!(h.resurrections(&tree(&[("a.txt", old)])).len(), 1);
    }

    #[test]
    fn only_written_contents_may_appear() {
        let mut h = History::default();
        let w = h.write(0, 0, "big.bin", None, b"0123456789");
        assert!(h.torn(&tree(&[("big.bin", w)])).is_empty());
        let torn = h.torn(&tree(&[("big.bin", Version::of(b"01234"))]));
        assert_eq!(torn.len(), 1);
        assert!(torn[0].contains("never wrote"), "{}", torn[0]);
    }
}
