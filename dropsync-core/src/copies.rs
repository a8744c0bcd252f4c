//! COPY [ext]: which versions were made by a COPY, and from what, so that a
//! delivery of such a version to a client that takes COPY can name the
//! path that client already has the content at instead of sending it
//! (issue 19: a renamed or copied file costs no transfer on either side).
//!
//! Kept in memory only and capped: after a restart, on another server
//! instance, or once forgotten, a version is simply delivered whole.

use std::collections::{HashMap, VecDeque};

use crate::stale::SeenVersions;

/// How many COPY-made versions are remembered at most (the oldest are
/// forgotten first): each is only useful until every client has it.
pub const MAX_REMEMBERED: usize = 4096;

/// Where a version made by COPY took its content from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The version of the path the COPY made.
    pub version: u64,
    /// The source path.
    pub from: String,
    /// The source's version whose content it took.
    pub from_version: u64,
}

/// The versions made by COPY, newest [`MAX_REMEMBERED`].
#[derive(Debug, Default)]
pub struct CopyOrigins {
    by_path: HashMap<String, Origin>,
    order: VecDeque<(String, u64)>,
}

impl CopyOrigins {
    /// Records that `version` of `path` was copied from `from_version` of `from`.
    pub fn record(&mut self, path: &str, origin: Origin) {
        self.order.push_back((path.to_owned(), origin.version));
        self.by_path.insert(path.to_owned(), origin);
        while self.order.len() > MAX_REMEMBERED {
            let Some((old, version)) = self.order.pop_front() else { break };
            if self.by_path.get(&old).is_some_and(|o| o.version == version) {
                self.by_path.remove(&old);
            }
        }
    }

    /// Where `version` of `path` came from, if a COPY made it.
    pub fn of(&self, path: &str, version: u64) -> Option<&Origin> {
        self.by_path.get(path).filter(|o| o.version == version)
    }
}

/// The path to name in a COPY delivering `origin`'s version to a client
/// that has seen `seen`: its source, when the client has seen the version
/// of it the content came from (it may have changed it since: it then
/// refuses with 0x0020 and is sent the file). `None`: send the file.
pub fn deliver_as_copy<'a>(origin: Option<&'a Origin>, seen: &SeenVersions, takes_copy: bool) -> Option<&'a str> {
    let origin = origin.filter(|_| takes_copy)?;
    seen.has_seen(&origin.from, origin.from_version).then_some(origin.from.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(version: u64, from: &str, from_version: u64) -> Origin {
        Origin { version, from: from.into(), from_version }
    }

    #[test]
    fn only_the_version_a_copy_made_is_remembered_as_one() {
        let mut c = CopyOrigins::default();
        c.record("b", origin(5, "a", 3));
        assert_eq!(c.of("b", 5), Some(&origin(5, "a", 3)));
        assert_eq!(c.of("b", 6), None, "a later upload of b is no copy");
    }

    #[test]
    fn the_oldest_are_forgotten_beyond_the_cap() {
        let mut c = CopyOrigins::default();
        for i in 0..=MAX_REMEMBERED as u64 {
            c.record(&format!("p{i}"), origin(i + 1, "a", 1));
        }
        assert_eq!(c.of("p0", 1), None);
        assert!(c.of(&format!("p{MAX_REMEMBERED}"), MAX_REMEMBERED as u64 + 1).is_some());
        assert!(c.by_path.len() <= MAX_REMEMBERED);
    }

    #[test]
    fn a_copy_is_delivered_as_one_only_to_a_client_that_takes_copy_and_has_seen_its_source() {
        let o = origin(5, "a", 3);
        let mut seen = SeenVersions::new(0);
        assert_eq!(deliver_as_copy(Some(&o), &seen, true), None, "never saw a");
        seen.saw("a", 3);
        assert_eq!(deliver_as_copy(Some(&o), &seen, true), Some("a"));
        assert_eq!(deliver_as_copy(Some(&o), &seen, false), None, "did not offer COPY");
        assert_eq!(deliver_as_copy(None, &seen, true), None, "not made by a COPY");
        // Listed in its META-DATA counts as seen too.
        assert_eq!(deliver_as_copy(Some(&o), &SeenVersions::new(3), true), Some("a"));
    }
}
