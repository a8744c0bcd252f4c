//! A client's own META-DATA (PROTOCOL.md section 5), kept in
//! `<folder>/.dropsync/metadata`.
//!
//! Per path the client knows two things: its *base*, the content it last had
//! in common with the server (section 7), and what the local file was the
//! last time it looked (modification time, size and digest), so that an
//! unchanged file is recognised by its stat alone, without hashing it again.
//!
//! States used in the file (section 5 allows more than `F` and `D`):
//! - `F` — the base is this content, and the local file had it at `mtime`.
//! - `D` — no base content (never synced, or deleted on both sides).
//! - `L` — follows the path's `F` or `D` line when the local file differs
//!   from the base: the local content (md5, size, mtime). A local change the
//!   server has not accepted (yet, or ever after a 0x0040).
//! - `X` — follows an `F` line when the local file is gone but the server
//!   has not accepted the delete.
//!
//! The file is rewritten whole (atomically) and saves are coalesced by the
//! client; between saves, every base change is appended to a journal
//! (`metadata.journal.<generation>`, see the client's `state.rs`), so a
//! client killed just after receiving a file still knows its base. A stale
//! base is not harmless: a delete made while the client was down would be
//! undone, and an edit would become a conflict copy (found by the soak
//! harness).

use std::collections::HashMap;

use dropsync_proto::metadata::{self, Entry, EntryState, Line, MetadataError};
use dropsync_proto::{ClientId, ZERO_DIGEST};

use crate::reconcile::Content;

const LOCAL: EntryState = EntryState::Other('L');
const LOCAL_DELETED: EntryState = EntryState::Other('X');

/// What the client last saw of a local file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalSeen {
    /// Modification time when it was last hashed, ns since the epoch.
    pub mtime_ns: i64,
    /// Its content then.
    pub content: Content,
}

/// Everything the client records about one path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientRecord {
    /// Content last in common with the server; `None` for none or a tombstone.
    pub base: Option<Content>,
    /// The server version of the base when known (from META-DATA), else 0.
    pub base_version: u64,
    /// The local file when last looked at; `None` when it was absent.
    pub local: Option<LocalSeen>,
}

impl ClientRecord {
    /// True when the local file (as last seen) differs from the base: a
    /// change the server has not accepted, which an incoming version must
    /// keep as a conflict copy.
    pub fn locally_changed(&self) -> bool {
        self.local.map(|l| l.content) != self.base
    }
}

/// The client's table: its id and a record per path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientMeta {
    /// The id sent in HELLO, made on the first run and kept here.
    pub client_id: ClientId,
    /// Per-path records.
    pub records: HashMap<String, ClientRecord>,
}

impl ClientMeta {
    /// An empty table for a client with this id.
    pub fn new(client_id: ClientId) -> Self {
        Self { client_id, records: HashMap::new() }
    }

    /// Renders the whole file, sorted by path.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(96 + self.records.len() * 100);
        self.render_into(&mut out, usize::MAX, |_| {});
        out
    }

    /// Renders the whole file, sorted by path, handing it to `write` in
    /// pieces of about `piece_len` bytes: a table of a million paths is
    /// about 100 MB of text, which the caller need not hold at once.
    pub fn render_in_pieces(&self, piece_len: usize, mut write: impl FnMut(&str)) {
        let mut piece = String::with_capacity(piece_len.min(96 + self.records.len() * 100));
        self.render_into(&mut piece, piece_len, |full| {
            write(full);
            full.clear();
        });
        if !piece.is_empty() {
            write(&piece);
        }
    }

    /// Renders the whole file, sorted by path, into `out`, calling `full`
    /// whenever `out` holds `piece_len` bytes or more.
    fn render_into(&self, out: &mut String, piece_len: usize, mut full: impl FnMut(&mut String)) {
        let mut records: Vec<(&String, &ClientRecord)> = self.records.iter().collect();
        records.sort_unstable_by(|a, b| a.0.cmp(b.0));
        metadata::render_header(out);
        metadata::render_client_id(&self.client_id, out);
        for (path, r) in records {
            render_record(path, r, out);
            if out.len() >= piece_len {
                full(out);
            }
        }
    }

    /// Parses a file written by [`ClientMeta::render`]. A file without a
    /// client id line is an error: the id must never silently change.
    pub fn parse(text: &str) -> Result<Self, MetadataError> {
        let mut lines = text.split('\n');
        if lines.next() != Some(metadata::HEADER) {
            return Err(MetadataError::BadHeader);
        }
        let mut id = None;
        // One line a record, as a table at rest is written: the table is
        // made that size at once, not grown by doublings.
        let mut records: HashMap<String, ClientRecord> =
            HashMap::with_capacity(metadata::line_count(text));
        for (i, raw) in lines.enumerate() {
            let e = match metadata::parse_line(raw, i + 2)? {
                Line::ClientId(c) => {
                    id = Some(c);
                    continue;
                }
                Line::Ignored | Line::Extensions(_) | Line::Listing(_) => continue,
                Line::Entry(e) => e,
            };
            let content = Content { md5: e.md5, size: e.size };
            let seen = LocalSeen { mtime_ns: e.mtime_ns, content };
            match e.state {
                EntryState::File => {
                    records.insert(
                        e.path,
                        ClientRecord { base: Some(content), base_version: e.version, local: Some(seen) },
                    );
                }
                EntryState::Deleted => {
                    records.insert(e.path, ClientRecord { base: None, base_version: e.version, local: None });
                }
                s if s == LOCAL => records.entry(e.path).or_default().local = Some(seen),
                s if s == LOCAL_DELETED => records.entry(e.path).or_default().local = None,
                // Readers ignore what they do not know (section 5).
                EntryState::Other(_) => {}
            }
        }
        let client_id = id.ok_or(MetadataError::BadField { line: 2, column: "client-id" })?;
        Ok(Self { client_id, records })
    }
}

/// Appends the lines of one record, as [`ClientMeta::render`] writes them:
/// what a journal of single changes appends.
pub fn render_record(path: &str, r: &ClientRecord, out: &mut String) {
    let line = |state, content: Option<Content>, mtime_ns, version| Entry {
        version,
        md5: content.map_or(ZERO_DIGEST, |c| c.md5),
        size: content.map_or(0, |c| c.size),
        mtime_ns,
        state,
        path: path.to_owned(),
        strong: None,
    };
    match (r.base, r.local) {
        (Some(base), Some(local)) if local.content == base => {
            metadata::render_entry(&line(EntryState::File, Some(base), local.mtime_ns, r.base_version), out);
        }
        (None, None) => metadata::render_entry(&line(EntryState::Deleted, None, 0, r.base_version), out),
        (base, local) => {
            let state = if base.is_some() { EntryState::File } else { EntryState::Deleted };
            metadata::render_entry(&line(state, base, 0, r.base_version), out);
            match local {
                Some(l) => metadata::render_entry(&line(LOCAL, Some(l.content), l.mtime_ns, 0), out),
                None => metadata::render_entry(&line(LOCAL_DELETED, None, 0, 0), out),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn content() -> impl Strategy<Value = Content> {
        (any::<[u8; 16]>(), any::<u64>()).prop_map(|(md5, size)| Content { md5, size })
    }

    fn record() -> impl Strategy<Value = ClientRecord> {
        (
            proptest::option::of(content()),
            any::<u64>(),
            proptest::option::of((any::<i64>(), content())),
            any::<bool>(),
        )
            .prop_map(|(base, base_version, local, same)| {
                let local = match (same, base, local) {
                    (true, Some(b), Some((m, _))) => Some(LocalSeen { mtime_ns: m, content: b }),
                    (_, _, l) => l.map(|(mtime_ns, content)| LocalSeen { mtime_ns, content }),
                };
                ClientRecord { base, base_version, local }
            })
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(
            id in any::<[u8; 16]>(),
            recs in proptest::collection::hash_map("(\\PC|[\t\n\\\\]){1,30}", record(), 0..30),
        ) {
            let meta = ClientMeta { client_id: id, records: recs };
            let parsed = ClientMeta::parse(&meta.render()).expect("own output parses");
            // Only what matters survives: a (None, None) record's version does.
            prop_assert_eq!(parsed, meta);
        }

        #[test]
        fn the_pieces_put_together_are_the_whole_text(
            recs in proptest::collection::hash_map("[a-z/]{1,30}", record(), 0..40),
            piece_len in 1usize..400,
        ) {
            let meta = ClientMeta { client_id: [3; 16], records: recs };
            let mut pieces = Vec::new();
            meta.render_in_pieces(piece_len, |p| pieces.push(p.to_owned()));
            prop_assert!(pieces.iter().all(|p| !p.is_empty()));
            // Each piece is at most one record (its lines, under 400
            // bytes here) longer than asked, the header aside.
            prop_assert!(pieces.iter().all(|p| p.len() < piece_len + 400));
            prop_assert_eq!(pieces.concat(), meta.render());
        }
    }

    #[test]
    fn states_are_as_documented() {
        let c = Content { md5: [1; 16], size: 3 };
        let d = Content { md5: [2; 16], size: 4 };
        let mut m = ClientMeta::new([9; 16]);
        m.records.insert("same".into(), ClientRecord { base: Some(c), base_version: 4, local: Some(LocalSeen { mtime_ns: 7, content: c }) });
        m.records.insert("edited".into(), ClientRecord { base: Some(c), base_version: 4, local: Some(LocalSeen { mtime_ns: 8, content: d }) });
        m.records.insert("removed".into(), ClientRecord { base: Some(c), base_version: 4, local: None });
        m.records.insert("new".into(), ClientRecord { base: None, base_version: 0, local: Some(LocalSeen { mtime_ns: 9, content: d }) });
        let text = m.render();
        let states: Vec<&str> = text.lines().skip(2).map(|l| l.split('\t').nth(4).unwrap()).collect();
        assert_eq!(states, ["F", "L", "D", "L", "F", "X", "F"]);
        assert!(m.records["edited"].locally_changed());
        assert!(!m.records["same"].locally_changed());
        assert_eq!(ClientMeta::parse(&text).unwrap(), m);
        assert!(ClientMeta::parse("dropsync-metadata 1\n").is_err(), "no client id");
    }
}
