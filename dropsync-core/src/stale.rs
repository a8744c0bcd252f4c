//! The stale-change rule (PROTOCOL.md section 6 [ext]): an upload or DELETE
//! that overwrites a version its sender never saw first keeps that version
//! as a conflict copy.
//!
//! Per session the server tracks the newest version of each path the client
//! is known to have seen. Everything listed in the META-DATA it was sent
//! counts; since versions come from one growing counter, that is exactly
//! "every current version up to the counter's value at that instant", so
//! the listing is one number, not a copy of the table. Versions delivered
//! to, uploaded by or deleted by the client after that are kept per path.

use std::collections::HashMap;
use std::time::Duration;

use dropsync_proto::metadata::{Entry, EntryState};

/// Longest the rule waits for the client's reply to a delivery of the same
/// path before it judges a change with what it knows (section 6: "the
/// server may wait for that reply, at most 1 s"; "no reply on one
/// connection waits more than 1 s on anything the peer does on its other
/// connection"). A peer that never answers on its receive connection then
/// only delays its own replies, by this much, and holds the path's lock no
/// longer.
pub const MAX_CROSS_CONNECTION_WAIT: Duration = Duration::from_secs(1);

/// What one session is known to have seen.
#[derive(Clone, Debug, Default)]
pub struct SeenVersions {
    listed_upto: u64,
    seen: HashMap<String, u64>,
}

impl SeenVersions {
    /// A session that was sent the META-DATA listing every version up to
    /// `listed_upto` (from `Catalog::snapshot`).
    pub fn new(listed_upto: u64) -> Self {
        Self { listed_upto, seen: HashMap::new() }
    }

    /// The client was sent a META-DATA listing every version up to
    /// `listed_upto` (the first of the session, or a later one: [ext]
    /// `dropsync_proto::index`, which leaves out only versions listed
    /// before or received since). What it received is kept.
    pub fn listed(&mut self, listed_upto: u64) {
        self.listed_upto = self.listed_upto.max(listed_upto);
    }

    /// Records that the client now has seen `version` of `path`: delivered
    /// (its 0x0001 to FINISHED or DELETE), uploaded or deleted by itself, or
    /// matched by an identical upload.
    pub fn saw(&mut self, path: &str, version: u64) {
        let v = self.seen.entry(path.to_owned()).or_insert(0);
        *v = (*v).max(version);
    }

    /// What [`saw`](Self::saw) recorded of `path`, to put back with
    /// [`restore`](Self::restore) if the changes that follow are undone.
    pub fn recorded(&self, path: &str) -> Option<u64> {
        self.seen.get(path).copied()
    }

    /// Puts back what [`recorded`](Self::recorded) returned for `path`.
    pub fn restore(&mut self, path: &str, recorded: Option<u64>) {
        match recorded {
            Some(v) => {
                self.seen.insert(path.to_owned(), v);
            }
            None => {
                self.seen.remove(path);
            }
        }
    }

    /// True when `version` of `path` reached the client after pairing:
    /// delivered to it, or uploaded or deleted by it. Unlike
    /// [`Self::has_seen`], the META-DATA listing does not count: this is the
    /// update queue's "already has it" check (section 6).
    pub fn has_received(&self, path: &str, version: u64) -> bool {
        self.seen.get(path).is_some_and(|&v| v >= version)
    }

    /// True when the client is known to have seen `version` of `path`.
    pub fn has_seen(&self, path: &str, version: u64) -> bool {
        version <= self.listed_upto || self.seen.get(path).is_some_and(|&v| v >= version)
    }
}

/// True when a change from a client must first keep `current` as a conflict
/// copy: `current` is content (a tombstone has none to keep) that the client
/// never saw. `enabled: false` is the server's `--no-conflict-copies`.
pub fn must_keep_overwritten(current: Option<&Entry>, seen: &SeenVersions, enabled: bool) -> bool {
    match current {
        Some(e) if enabled && e.state == EntryState::File => !seen.has_seen(&e.path, e.version),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(version: u64, state: EntryState) -> Entry {
        Entry { version, md5: [0; 16], size: 0, mtime_ns: 0, state, path: "f".into(), strong: None }
    }

    #[test]
    fn table_of_cases() {
        let mut seen = SeenVersions::new(10);
        seen.saw("f", 12);
        let file = EntryState::File;
        let cases = [
            ("new path: nothing to keep", None, true, false),
            ("listed in META-DATA", Some(entry(7, file)), true, false),
            ("delivered later", Some(entry(12, file)), true, false),
            ("committed by someone else, never seen", Some(entry(15, file)), true, true),
            ("tombstone: no content", Some(entry(15, EntryState::Deleted)), true, false),
            ("rule turned off", Some(entry(15, file)), false, false),
        ];
        for (what, current, enabled, keep) in cases {
            assert_eq!(must_keep_overwritten(current.as_ref(), &seen, enabled), keep, "{what}");
        }
    }

    #[test]
    fn seen_only_grows_per_path() {
        let mut seen = SeenVersions::new(0);
        seen.saw("f", 5);
        seen.saw("f", 3);
        assert!(seen.has_seen("f", 5));
        assert!(!seen.has_seen("f", 6));
        assert!(!seen.has_seen("g", 1));
        let mut listed = SeenVersions::new(10);
        assert!(listed.has_seen("g", 4) && !listed.has_received("g", 4));
        listed.saw("g", 4);
        assert!(listed.has_received("g", 4));
    }
}
