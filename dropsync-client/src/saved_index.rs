//! [ext] META-DATA since a version, the client's half (issue 19, B8): the
//! listing this client last acknowledged, kept in `.dropsync/index` with
//! the server's lines for the paths where the server then differed from the
//! client's base (a path it could not write, ignores, or had yet to fetch).
//! A later delta is read against it: a path neither lists is on the server
//! as its base says. docs/PROTOCOL.md, "META-DATA since a version".

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use dropsync_core::delta_index::delta_usable;
use dropsync_io::dir_storage::replace_file;
use dropsync_proto::index::{render_listing, Listing};
use dropsync_proto::metadata::{parse_document, render_entry, render_header, Document, Entry};

use crate::paths::STATE_DIR;

/// File name of the saved listing inside the state folder.
pub const INDEX_FILE: &str = "index";

/// Most lines of differing paths a listing is acknowledged with: beyond
/// (a client that has most of the server still to fetch), the saved state
/// would be as large as a full listing, so none is kept and the next
/// session is sent every path.
pub const MAX_DIFFERING: usize = 65_536;

fn path(root: &Path) -> PathBuf {
    root.join(STATE_DIR).join(INDEX_FILE)
}

/// Saves, durably, that the client's state reflects `listing` (its store
/// and `upto`), where the server held `differing` unlike the bases.
pub fn save(root: &Path, listing: &Listing, differing: &[Entry]) -> io::Result<()> {
    let mut text = String::with_capacity(128 + differing.len() * 96);
    render_header(&mut text);
    render_listing(&listing.full(), &mut text);
    for e in differing {
        render_entry(e, &mut text);
    }
    replace_file(&path(root), text.as_bytes())
}

/// Forgets the saved listing (the next session reads every path).
pub fn remove(root: &Path) {
    match fs::remove_file(path(root)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("cannot remove {}: {e}", path(root).display()),
    }
}

/// The delta `delta` read against the saved state: the saved lines of the
/// paths where the server differed, then the delta's (a later line wins),
/// under the delta's listing. `None` when it cannot be read so: no saved
/// state, a damaged one, or one of another store or older than the delta's
/// start ([`delta_usable`]).
pub fn with_saved(root: &Path, delta: Document) -> Option<Document> {
    let got = delta.listing?;
    let text = match fs::read_to_string(path(root)) {
        Ok(text) => text,
        Err(e) => {
            log::info!(
                "the server sent the changes since version {:?}, but no saved listing is readable here ({e})",
                got.since
            );
            return None;
        }
    };
    let saved = match parse_document(&text) {
        Ok(saved) => saved,
        Err(e) => {
            log::warn!("{}: {e}", path(root).display());
            return None;
        }
    };
    match saved.listing {
        Some(l) if delta_usable(&l, &got) => {}
        l => {
            log::info!(
                "the server sent the changes since version {:?}; the listing saved here ({l:?}) is not that",
                got.since
            );
            return None;
        }
    }
    let mut entries = saved.entries;
    entries.extend(delta.entries);
    Some(Document { entries, ..delta })
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_proto::metadata::EntryState;

    fn entry(path: &str, version: u64) -> Entry {
        Entry {
            version,
            md5: [version as u8; 16],
            size: version,
            mtime_ns: 0,
            state: EntryState::File,
            path: path.into(),
            strong: None,
        }
    }

    #[test]
    fn a_delta_is_read_after_the_saved_lines_and_only_against_its_store() {
        let root = std::env::temp_dir().join(format!("dropsync-saved-index-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join(STATE_DIR)).unwrap();
        let store = [5; 16];
        let delta = |since| Document {
            entries: vec![entry("b", 12)],
            listing: Some(Listing { store, upto: 12, since: Some(since) }),
            ..Document::default()
        };
        assert_eq!(with_saved(&root, delta(10)), None, "nothing saved");

        save(&root, &Listing { store, upto: 10, since: None }, &[entry("a", 3), entry("b", 4)]).unwrap();
        let doc = with_saved(&root, delta(10)).unwrap();
        assert_eq!(doc.entries, [entry("a", 3), entry("b", 4), entry("b", 12)], "the delta's line last: it wins");
        assert_eq!(doc.listing, delta(10).listing);
        assert!(with_saved(&root, delta(11)).is_none(), "starts after the saved listing");
        let other = Document { listing: Some(Listing { store: [6; 16], upto: 12, since: Some(10) }), ..delta(10) };
        assert!(with_saved(&root, other).is_none(), "another store");

        fs::write(path(&root), "dropsync-metadata 1\n# delta zz\n").unwrap();
        assert!(with_saved(&root, delta(10)).is_none(), "damaged");
        remove(&root);
        assert!(!path(&root).exists());
        fs::remove_dir_all(&root).unwrap();
    }
}
