//! What the server counts for `--http` (issue 20): plain atomics bumped on
//! the hot paths, read only when someone asks (`/metrics`, the status page).
//! Recording is one relaxed atomic add, or one short mutex hold for the
//! commit histogram and the ring of recent changes, so counting costs the
//! sessions nothing measurable whether or not anyone scrapes.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use dropsync_proto::StatusCode;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};

/// How many recent commits and deletes the status page lists: enough to see
/// what just happened, bounded so a busy server keeps a fixed few KiB.
pub const RECENT_CHANGES: usize = 50;

/// Longest client label or path kept in the recent-changes ring, in bytes
/// (a peer chooses both; a 4096-byte name fifty times is still small, but
/// nobody reads past this on a status page).
const MAX_KEPT_NAME: usize = 512;

/// Number of single-bit status codes (0x0001 ..= 0x8000): each has its own
/// refusal counter; any other code is counted as [`OTHER_CODE`].
const CODE_BITS: usize = 16;

/// The slot for a status code that is not a single bit (none exists in
/// PROTOCOL.md; kept so that a future code is counted somewhere).
const OTHER_CODE: usize = CODE_BITS;

/// What kind of session a client opened (PROTOCOL.md section 1, and
/// docs/PROTOCOL.md "Secure mode").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// Said HELLO, in plain TCP.
    Hello,
    /// Said nothing recognisable first (the assignment's plain protocol).
    Legacy,
    /// Said HELLO over TLS.
    Secure,
}

/// Why a connection was closed before it was admitted (`accept.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// Plaintext, in secure mode.
    Plaintext,
    /// TLS without a client key, in secure mode.
    NoKey,
    /// A key that is not enrolled.
    NotEnrolled,
    /// The TLS handshake failed or took too long.
    Handshake,
}

impl NotAdmitted {
    /// Every reason, in the order of the counters.
    pub const ALL: [NotAdmitted; 4] =
        [NotAdmitted::Plaintext, NotAdmitted::NoKey, NotAdmitted::NotEnrolled, NotAdmitted::Handshake];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            NotAdmitted::Plaintext => "plaintext",
            NotAdmitted::NoKey => "no_key",
            NotAdmitted::NotEnrolled => "not_enrolled",
            NotAdmitted::Handshake => "handshake",
        }
    }
}

/// One committed change, for the status page.
#[derive(Debug, Clone)]
pub struct Change {
    /// Wall clock of the commit, nanoseconds since the Unix epoch.
    pub at_ns: i64,
    /// The path (as the peer sent it: escape before showing it).
    pub path: String,
    /// The version the commit made.
    pub version: u64,
    /// Who made it: the session's label, or its id for a legacy client.
    pub client: String,
    /// True for a delete.
    pub deleted: bool,
}

/// The server's counters. One per server, shared by every thread through
/// the `Arc<Server>`.
#[derive(Debug)]
pub struct Metrics {
    sessions_hello: AtomicU64,
    sessions_legacy: AtomicU64,
    sessions_secure: AtomicU64,
    not_admitted: [AtomicU64; 4],
    /// Payload bytes of accepted FILE_CHUNKs from clients.
    pub bytes_in: AtomicU64,
    /// Uploads that ended in a commit (a new version or an identical one).
    pub files_in: AtomicU64,
    /// Uploads that made a new version.
    pub commits: AtomicU64,
    /// DELETEs that made a tombstone.
    pub deletes_in: AtomicU64,
    /// COPYs [ext] from clients that made a new version (no bytes sent).
    pub copies_in: AtomicU64,
    /// COPYs [ext] delivered to clients and acknowledged (no bytes sent).
    pub copies_out: AtomicU64,
    /// Chunk payload bytes sent to clients (META-DATA included).
    pub bytes_out: AtomicU64,
    /// Files delivered to clients and acknowledged.
    pub files_out: AtomicU64,
    /// DELETEs delivered to clients and acknowledged.
    pub deletes_out: AtomicU64,
    /// Uploads open now (each holds its path's lock).
    pub uploads_open: AtomicI64,
    /// Transfers to clients in progress now.
    pub deliveries_open: AtomicI64,
    refusals: [AtomicU64; CODE_BITS + 1],
    commit_seconds: Histogram,
    recent: Mutex<VecDeque<Change>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        Self {
            sessions_hello: AtomicU64::new(0),
            sessions_legacy: AtomicU64::new(0),
            sessions_secure: AtomicU64::new(0),
            not_admitted: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_in: AtomicU64::new(0),
            files_in: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            deletes_in: AtomicU64::new(0),
            copies_in: AtomicU64::new(0),
            copies_out: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            files_out: AtomicU64::new(0),
            deletes_out: AtomicU64::new(0),
            uploads_open: AtomicI64::new(0),
            deliveries_open: AtomicI64::new(0),
            refusals: std::array::from_fn(|_| AtomicU64::new(0)),
            // 100 µs to about 6.5 s: a commit is an fsync and a rename on a
            // quiet disk (a millisecond or less), seconds on a struggling one.
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            recent: Mutex::new(VecDeque::with_capacity(RECENT_CHANGES)),
        }
    }

    /// A session of `kind` started.
    pub fn session_started(&self, kind: SessionKind) {
        match kind {
            SessionKind::Hello => &self.sessions_hello,
            SessionKind::Legacy => &self.sessions_legacy,
            SessionKind::Secure => &self.sessions_secure,
        }
        .fetch_add(1, Ordering::Relaxed);
    }

    /// A connection was closed before it was admitted, for `why`.
    pub fn not_admitted(&self, why: NotAdmitted) {
        self.not_admitted[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Connections closed so far before being admitted, for `why`.
    pub fn not_admitted_count(&self, why: NotAdmitted) -> u64 {
        self.not_admitted[why as usize].load(Ordering::Relaxed)
    }

    /// Sessions started so far of `kind`.
    pub fn sessions_started(&self, kind: SessionKind) -> u64 {
        match kind {
            SessionKind::Hello => &self.sessions_hello,
            SessionKind::Legacy => &self.sessions_legacy,
            SessionKind::Secure => &self.sessions_secure,
        }
        .load(Ordering::Relaxed)
    }

    /// Adds `n` to `counter` (a shorthand for the hot paths).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The server answered a client's message with `code`: counted when it
    /// is a refusal (anything but OK and keep-alive).
    pub fn replied(&self, code: StatusCode) {
        if code == StatusCode::OK || code == StatusCode::KEEP_ALIVE {
            return;
        }
        let slot = if code.0.count_ones() == 1 { code.0.trailing_zeros() as usize } else { OTHER_CODE };
        if let Some(c) = self.refusals.get(slot) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every refusal count so far that is not zero, as (label, count): the
    /// label is the code as PROTOCOL.md writes it ("0x0040"), or "other".
    pub fn refusals(&self) -> Vec<(String, u64)> {
        self.refusals
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .map(|(i, n)| (if i < CODE_BITS { format!("0x{:04x}", 1u32 << i) } else { "other".into() }, n))
            .collect()
    }

    /// A commit (the temp file finished, hashed into place and journaled)
    /// took `took`.
    pub fn commit_took(&self, took: Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
    }

    /// The commit latency histogram, to register for one scrape (a clone
    /// shares the counts).
    pub fn commit_histogram(&self) -> Histogram {
        self.commit_seconds.clone()
    }

    /// Remembers a committed change for the status page; the oldest goes
    /// when [`RECENT_CHANGES`] are kept.
    pub fn changed(&self, mut change: Change) {
        truncate_utf8(&mut change.path, MAX_KEPT_NAME);
        truncate_utf8(&mut change.client, MAX_KEPT_NAME);
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= RECENT_CHANGES {
            recent.pop_front();
        }
        recent.push_back(change);
    }

    /// The recent changes, newest first.
    pub fn recent(&self) -> Vec<Change> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).iter().rev().cloned().collect()
    }
}

/// Cuts `s` to at most `max` bytes at a character boundary.
pub fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_by_code_and_ok_is_not_a_refusal() {
        let m = Metrics::new();
        m.replied(StatusCode::OK);
        m.replied(StatusCode::KEEP_ALIVE);
        m.replied(StatusCode::LOCKED);
        m.replied(StatusCode::LOCKED);
        m.replied(StatusCode::BAD_REQUEST);
        m.replied(StatusCode(0x0003));
        let got = m.refusals();
        assert_eq!(got, vec![("0x0040".into(), 2), ("0x0100".into(), 1), ("other".into(), 1)]);
    }

    #[test]
    fn the_ring_keeps_the_newest_changes_and_cuts_long_names() {
        let m = Metrics::new();
        for v in 0..(RECENT_CHANGES as u64 + 7) {
            let path = if v == 30 { "é".repeat(400) } else { format!("f{v}") };
            m.changed(Change { at_ns: 0, path, version: v, client: "c".into(), deleted: false });
        }
        let recent = m.recent();
        assert_eq!(recent.len(), RECENT_CHANGES);
        assert_eq!(recent[0].version, RECENT_CHANGES as u64 + 6);
        assert_eq!(recent[RECENT_CHANGES - 1].version, 7);
        let long = recent.iter().find(|c| c.version == 30).map(|c| c.path.len());
        assert!(long.is_some_and(|n| n <= MAX_KEPT_NAME), "{long:?}");
    }
}
