//! What the server sends a client from its update queue (PROTOCOL.md
//! section 6), decided at dequeue time with no I/O: the server's outbound
//! session asks here what a queued path means and what the client's reply
//! to its delivery means.
//!
//! - "a queued path is sent as its state at dequeue time: a FILE transfer
//!   of the current committed content, or a DELETE if it is a tombstone";
//! - "A queued path whose current version that client uploaded or deleted
//!   itself, or was already delivered, is skipped (a listing in META-DATA
//!   does not count here: an explicit REQUEST is always served)";
//! - "Each client's queue is served ... by one transfer at a time, or, for
//!   a client that sent HELLO, by up to N interleaved transfers";
//! - "A reply 0x0080 from the client gives up on that path for that
//!   client"; a delivered version counts as seen by it (the stale-change
//!   rule);
//! - a delivery overtaken by the client's own change is followed by that
//!   change ([`resend_after`]).

use dropsync_proto::metadata::{Entry, EntryState};
use dropsync_proto::StatusCode;

use crate::sender::Outcome;
use crate::stale::SeenVersions;

/// What to send for a queued path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Nothing: the path is unknown, or the client has its current version.
    Skip,
    /// A FILE transfer of the committed content of `version`.
    File {
        /// The version sent.
        version: u64,
    },
    /// A DELETE: `version` is a tombstone.
    Delete {
        /// The version sent.
        version: u64,
    },
}

/// The delivery of a path dequeued for a client: its catalog `entry` now,
/// what the client is known to have (`seen`), and whether it asked for the
/// path with REQUEST.
pub fn judge_queued(entry: Option<&Entry>, seen: &SeenVersions, requested: bool) -> Delivery {
    let Some(entry) = entry else { return Delivery::Skip };
    if seen.has_received(&entry.path, entry.version) && !requested {
        return Delivery::Skip;
    }
    match entry.state {
        EntryState::File => Delivery::File { version: entry.version },
        EntryState::Deleted => Delivery::Delete { version: entry.version },
        // A state the server never writes: nothing it could send.
        EntryState::Other(_) => Delivery::Skip,
    }
}

/// How many transfers a session's queue is served with at once: one for a
/// legacy session, up to `configured` (at least one) for one that sent
/// HELLO.
pub fn transfers_at_once(legacy: bool, configured: usize) -> usize {
    if legacy {
        1
    } else {
        configured.max(1)
    }
}

/// Whether the client now has the version delivered to it: its 0x0001
/// (and, to a DELETE, its 0x0020: it has no such file, so it agrees).
/// Any other ending gives up on that path for that client.
pub fn client_has_it(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Committed | Outcome::Refused(StatusCode::NO_FILE))
}

/// A delivery of `delivered` (a version of `current`'s path) ended with
/// the client having it, but the path is now at a newer version that the
/// client made itself (its own upload or DELETE, committed while the
/// delivery was on its way: the stale-change rule waits at most 1 s for
/// the delivery's reply). The update queue skips a version its client made,
/// so without sending it again the client would keep the older version it
/// just installed over its own, and differ from the server for good (found
/// by the simulator, seed 48). True: queue the path for the client again,
/// as if it had asked for it.
pub fn resend_after(delivered: u64, current: Option<&Entry>, seen: &SeenVersions) -> bool {
    current.is_some_and(|e| e.version > delivered && seen.has_received(&e.path, e.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, version: u64, state: EntryState) -> Entry {
        Entry { version, md5: [1; 16], size: 1, mtime_ns: 0, state, path: path.into(), strong: None }
    }

    #[test]
    fn a_queued_path_is_sent_as_its_state_at_dequeue_time() {
        let seen = SeenVersions::new(0);
        assert_eq!(judge_queued(Some(&entry("f", 3, EntryState::File)), &seen, false), Delivery::File { version: 3 });
        assert_eq!(judge_queued(Some(&entry("f", 4, EntryState::Deleted)), &seen, false), Delivery::Delete { version: 4 });
        assert_eq!(judge_queued(None, &seen, true), Delivery::Skip);
    }

    #[test]
    fn a_version_the_client_uploaded_deleted_or_was_delivered_is_skipped_unless_it_asked() {
        let mut seen = SeenVersions::new(0);
        seen.saw("f", 3);
        let f = entry("f", 3, EntryState::File);
        assert_eq!(judge_queued(Some(&f), &seen, false), Delivery::Skip);
        assert_eq!(judge_queued(Some(&f), &seen, true), Delivery::File { version: 3 }, "an explicit REQUEST is always served");
        assert_eq!(judge_queued(Some(&entry("f", 5, EntryState::File)), &seen, false), Delivery::File { version: 5 });
    }

    #[test]
    fn a_listing_in_meta_data_does_not_count_here() {
        let seen = SeenVersions::new(10);
        assert_eq!(judge_queued(Some(&entry("f", 3, EntryState::File)), &seen, false), Delivery::File { version: 3 });
    }

    #[test]
    fn a_delivery_overtaken_by_the_clients_own_change_is_sent_again() {
        let mut seen = SeenVersions::new(0);
        seen.saw("f", 3);
        seen.saw("f", 5); // its own upload, committed while 3 was on its way
        assert!(resend_after(3, Some(&entry("f", 5, EntryState::File)), &seen));
        assert!(resend_after(3, Some(&entry("f", 5, EntryState::Deleted)), &seen), "its own DELETE too");
        let other = SeenVersions::new(0);
        assert!(!resend_after(3, Some(&entry("f", 5, EntryState::File)), &other), "another client's: queued anyway");
        assert!(!resend_after(5, Some(&entry("f", 5, EntryState::File)), &seen), "the current version");
        assert!(!resend_after(3, None, &seen));
    }

    #[test]
    fn a_legacy_session_gets_one_transfer_at_a_time_a_hello_session_up_to_n() {
        assert_eq!(transfers_at_once(true, 8), 1);
        assert_eq!(transfers_at_once(false, 8), 8);
        assert_eq!(transfers_at_once(false, 0), 1);
    }

    #[test]
    fn a_reply_0x0080_gives_up_on_that_path_for_that_client() {
        assert!(client_has_it(Outcome::Committed));
        assert!(client_has_it(Outcome::Refused(StatusCode::NO_FILE)), "a DELETE of a file it does not have");
        assert!(!client_has_it(Outcome::Refused(StatusCode::IN_USE)));
        assert!(!client_has_it(Outcome::Aborted));
    }
}
