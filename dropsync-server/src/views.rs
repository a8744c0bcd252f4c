//! Snapshots of the server's state for `--http`: the connected clients and
//! the catalog, taken on request by the HTTP thread. Each takes its locks
//! one at a time and briefly, and is capped, so a page view costs the
//! sessions no more than a few map lookups (the catalog walk excepted: see
//! [`paths`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use dropsync_core::meta_server::Catalog;
use dropsync_proto::metadata::EntryState;

use crate::metrics::truncate_utf8;
use crate::server::Server;

/// A client with work waiting and no reply or idle moment for this long is
/// shown as stalled: a healthy client answers each chunk within a round
/// trip, and the dead-peer time (60 s by default) ends one that never does.
pub const STALLED_AFTER: Duration = Duration::from_secs(10);

/// Longest client label kept in a view, in bytes (HELLO allows more; a
/// label is a name for people, and it becomes a metrics label value).
pub const MAX_LABEL: usize = 64;

/// One connected client as the status page and `/metrics` show it.
#[derive(Debug, Clone)]
pub struct ClientView {
    /// The server's session id.
    pub id: u64,
    /// HELLO label, or "legacy #id" (see `Session::display_label`).
    pub label: String,
    /// Its address.
    pub addr: SocketAddr,
    /// Paired without HELLO.
    pub legacy: bool,
    /// Its connections are TLS.
    pub tls: bool,
    /// Enrolled read-only.
    pub read_only: bool,
    /// Paths queued or being sent to it.
    pub pending: usize,
    /// When it connected (nanoseconds since the Unix epoch).
    pub since_ns: i64,
    /// Work waiting and no progress for [`STALLED_AFTER`].
    pub stalled: bool,
}

impl ClientView {
    /// "in sync", "N pending" or "stalled (N pending)".
    pub fn state(&self) -> String {
        match (self.pending, self.stalled) {
            (0, _) => "in sync".into(),
            (n, false) => format!("{n} pending"),
            (n, true) => format!("stalled ({n} pending)"),
        }
    }

    /// The label and the id: unique, for a metrics label value (two clients
    /// may share a label).
    pub fn series_name(&self) -> String {
        format!("{}#{}", self.label, self.id)
    }
}

/// The connected clients, at most some of them shown.
#[derive(Debug, Default)]
pub struct Clients {
    /// The first ones by label then id.
    pub shown: Vec<ClientView>,
    /// How many are connected in all.
    pub total: usize,
    /// How many of them are legacy.
    pub legacy: usize,
    /// How many of them said HELLO over TLS (secure mode's sessions).
    pub secure: usize,
}

/// The connected clients, sorted by label then id, at most `max` of them
/// shown.
pub fn clients(server: &Server, max: usize) -> Clients {
    let sessions = server.all_sessions();
    let total = sessions.len();
    let legacy = sessions.iter().filter(|s| s.is_legacy()).count();
    let secure = sessions.iter().filter(|s| s.tls && !s.is_legacy()).count();
    let mut out: Vec<ClientView> = sessions
        .iter()
        .map(|s| {
            let pending = s.queue.len() + s.outgoing_len();
            let mut label = s.display_label();
            truncate_utf8(&mut label, MAX_LABEL);
            ClientView {
                id: s.id,
                label,
                addr: s.peer,
                legacy: s.is_legacy(),
                tls: s.tls,
                read_only: s.access == dropsync_core::access::Access::ReadOnly,
                pending,
                since_ns: s.started_ns,
                stalled: pending > 0 && s.since_progress() >= STALLED_AFTER,
            }
        })
        .collect();
    out.sort_by(|a, b| a.label.cmp(&b.label).then(a.id.cmp(&b.id)));
    out.truncate(max);
    Clients { shown: out, total, legacy, secure }
}

/// One path's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathView {
    /// The path, as a peer sent it.
    pub path: String,
    /// Its current version.
    pub version: u64,
    /// Size of its content (of the last content, for a deleted path).
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// The current version is a delete.
    pub deleted: bool,
    /// Earlier versions the history keeps, newest first: (version,
    /// deleted); at most [`EARLIER_SHOWN`], and how many more there are.
    pub earlier: (Vec<(u64, bool)>, usize),
}

/// Earlier versions listed per path on the status page.
pub const EARLIER_SHOWN: usize = 5;

/// What the catalog holds: the `max` most recently changed paths (newest
/// first), and counts over all of them.
#[derive(Debug, Default)]
pub struct Paths {
    /// The most recently changed paths.
    pub rows: Vec<PathView>,
    /// Paths with a file now.
    pub files: usize,
    /// Deleted paths (tombstones).
    pub deleted: usize,
    /// Bytes of the files (not of stored content: identical files share it).
    pub bytes: u64,
}

/// The catalog summed up. This walks every entry under the catalog's lock
/// (a commit waits meanwhile): about 10 ns an entry, so 10 ms for a million
/// paths, only when the status page is loaded; `/metrics` does not call it.
/// The newest rows are chosen with a heap of `max`, not a sort of all.
pub fn paths(server: &Server, max: usize) -> Paths {
    let mut out = Paths::default();
    let mut newest: BinaryHeap<Reverse<(u64, usize)>> = BinaryHeap::with_capacity(max + 1);
    let mut picked: Vec<PathView> = Vec::new();
    server.library.catalog().walk_table(&mut |t| {
        let entries: Vec<_> = t.entries().collect();
        for (i, e) in entries.iter().enumerate() {
            match e.state {
                EntryState::File => {
                    out.files += 1;
                    out.bytes = out.bytes.saturating_add(e.size);
                }
                _ => out.deleted += 1,
            }
            if max == 0 {
                continue;
            }
            newest.push(Reverse((e.version, i)));
            if newest.len() > max {
                newest.pop();
            }
        }
        picked = newest
            .iter()
            .filter_map(|Reverse((_, i))| entries.get(*i))
            .map(|e| PathView {
                path: e.path.clone(),
                version: e.version,
                size: e.size,
                mtime_ns: e.mtime_ns,
                deleted: e.state != EntryState::File,
                earlier: (Vec::new(), 0),
            })
            .collect();
    });
    // Outside the table's lock: `history` takes it again.
    for p in &mut picked {
        let kept = server.library.catalog().history(&p.path);
        let more = kept.len().saturating_sub(EARLIER_SHOWN);
        let shown = kept.iter().rev().take(EARLIER_SHOWN).map(|k| (k.entry.version, !k.is_file())).collect();
        p.earlier = (shown, more);
    }
    picked.sort_by_key(|p| Reverse(p.version));
    out.rows = picked;
    out
}
