//! [ext] META-DATA since the version a client last saw (issue 19, B8; as
//! Syncthing's delta index exchange): the comment line that says what a
//! server's META-DATA lists, and the REQUEST names a client answers it with.
//! docs/PROTOCOL.md, "META-DATA since a version", has the whole exchange.
//!
//! A reader that knows nothing of it takes a delta for a full listing, and
//! would then upload or forget every path the delta leaves out; so a server
//! sends a delta only to a client that acknowledged a listing, and a line
//! that starts like one but does not parse is an error, never ignored.

use crate::digest::{from_hex, push_hex};

/// `# index <store> <upto>`: every path, as of version `upto`.
pub const INDEX_PREFIX: &str = "# index ";

/// `# delta <store> <since> <upto>`: only the lines of versions above
/// `since`; every path not listed is as it was at version `since`.
pub const DELTA_PREFIX: &str = "# delta ";

/// The REQUEST name of this extension: alone, "send me every path next
/// time" (the client cannot use the delta it was sent); followed by
/// `/<store>/<upto>` (see [`ack_name`]), "my state reflects that listing";
/// and by `/<store>/<upto>/more` ([`more_name`]), "send me now what changed
/// since that listing, but for what I received in this session".
/// Reserved (section 3): a server that knows none of this answers 0x0100.
pub const INDEX_NAME: &str = ".dropsync-ext/index";

/// Identifies one table of versions: a server makes one at start, so a
/// listing since a version is only ever read against a state made from the
/// same table.
pub type StoreId = [u8; 16];

/// What a server's META-DATA lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The table the versions are of.
    pub store: StoreId,
    /// Every version up to this one is accounted for.
    pub upto: u64,
    /// A delta: only lines of versions above this; `None`: every path.
    pub since: Option<u64>,
}

impl Listing {
    /// The same listing as one of every path (what a client saves).
    pub fn full(self) -> Listing {
        Listing { since: None, ..self }
    }
}

/// A REQUEST of [`INDEX_NAME`], as the server reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexRequest {
    /// Send every path in the next META-DATA (forget the acknowledgement).
    Everything,
    /// The client's state reflects the listing of `store` up to `upto`.
    Ack {
        /// The listing's store.
        store: StoreId,
        /// The listing's `upto`.
        upto: u64,
    },
    /// Send, in this session, a listing of what changed since the listing
    /// of `store` up to `upto`, but for the versions it received here.
    More {
        /// The listing's store.
        store: StoreId,
        /// The listing's `upto`.
        upto: u64,
    },
}

/// The suffix of [`more_name`].
const MORE_SUFFIX: &str = "/more";

/// Appends the listing's comment line.
pub fn render_listing(l: &Listing, out: &mut String) {
    out.push_str(if l.since.is_some() { DELTA_PREFIX } else { INDEX_PREFIX });
    push_hex(&l.store, out);
    if let Some(since) = l.since {
        out.push(' ');
        out.push_str(&since.to_string());
    }
    out.push(' ');
    out.push_str(&l.upto.to_string());
    out.push('\n');
}

/// Parses a line that starts with [`INDEX_PREFIX`] or [`DELTA_PREFIX`]:
/// `None` for any other line, `Some(Err(()))` for one of these that does
/// not parse.
pub fn parse_listing(line: &str) -> Option<Result<Listing, ()>> {
    let (rest, delta) = match (line.strip_prefix(INDEX_PREFIX), line.strip_prefix(DELTA_PREFIX)) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return None,
    };
    let fields: Vec<&str> = rest.split(' ').collect();
    let parsed = match (delta, fields.as_slice()) {
        (false, [store, upto]) => {
            from_hex(store).zip(upto.parse().ok()).map(|(store, upto)| Listing { store, upto, since: None })
        }
        (true, [store, since, upto]) => {
            let since = since.parse::<u64>().ok().filter(|s| upto.parse::<u64>().is_ok_and(|u| *s <= u));
            from_hex(store).zip(since).zip(upto.parse().ok()).map(|((store, since), upto)| Listing {
                store,
                upto,
                since: Some(since),
            })
        }
        _ => None,
    };
    Some(parsed.ok_or(()))
}

/// The REQUEST name that acknowledges `listing` (only its store and upto).
pub fn ack_name(listing: &Listing) -> String {
    let mut name = String::with_capacity(INDEX_NAME.len() + 56);
    name.push_str(INDEX_NAME);
    name.push('/');
    push_hex(&listing.store, &mut name);
    name.push('/');
    name.push_str(&listing.upto.to_string());
    name
}

/// The REQUEST name that asks for what changed since `listing` (only its
/// store and upto).
pub fn more_name(listing: &Listing) -> String {
    ack_name(listing) + MORE_SUFFIX
}

/// Reads a REQUEST name of this extension; `None` for any other name, or
/// one of ours that does not parse.
pub fn parse_request(name: &str) -> Option<IndexRequest> {
    let rest = name.strip_prefix(INDEX_NAME)?;
    if rest.is_empty() {
        return Some(IndexRequest::Everything);
    }
    let (rest, more) = match rest.strip_suffix(MORE_SUFFIX) {
        Some(rest) => (rest, true),
        None => (rest, false),
    };
    let (store, upto) = rest.strip_prefix('/')?.split_once('/')?;
    let (store, upto) = (from_hex(store)?, upto.parse().ok()?);
    Some(if more { IndexRequest::More { store, upto } } else { IndexRequest::Ack { store, upto } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_documented_lines() {
        let store = [0xab; 16];
        let mut out = String::new();
        render_listing(&Listing { store, upto: 42, since: None }, &mut out);
        render_listing(&Listing { store, upto: 42, since: Some(7) }, &mut out);
        let hex = "ab".repeat(16);
        assert_eq!(out, format!("# index {hex} 42\n# delta {hex} 7 42\n"));
    }

    #[test]
    fn a_listing_line_that_does_not_parse_is_an_error() {
        let hex = "ab".repeat(16);
        for bad in [
            "# index ".to_string(),
            format!("# index {hex}"),
            format!("# index {hex} x"),
            format!("# index {hex} 1 2"),
            format!("# delta {hex} 1"),
            format!("# delta {hex} 9 2"),
            "# delta zz 1 2".to_string(),
        ] {
            assert_eq!(parse_listing(&bad), Some(Err(())), "{bad}");
        }
        assert_eq!(parse_listing("# indexes are nice"), None);
        assert_eq!(parse_listing("# ext copy"), None);
    }

    #[test]
    fn request_names() {
        let l = Listing { store: [3; 16], upto: 9, since: Some(1) };
        assert_eq!(parse_request(&ack_name(&l)), Some(IndexRequest::Ack { store: [3; 16], upto: 9 }));
        assert_eq!(parse_request(&more_name(&l)), Some(IndexRequest::More { store: [3; 16], upto: 9 }));
        assert_eq!(parse_request(&(more_name(&l) + "/more")), None);
        assert_eq!(parse_request(INDEX_NAME), Some(IndexRequest::Everything));
        assert_eq!(parse_request(".dropsync-ext/indexes"), None);
        assert_eq!(parse_request(".dropsync-ext/index/00/1"), None);
        assert_eq!(parse_request(".dropsync-ext/copy"), None);
        assert!(crate::name::validate_name(&ack_name(&l), false).is_err(), "reserved");
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(store in any::<[u8; 16]>(), upto in any::<u64>(), since in proptest::option::of(any::<u64>())) {
            let l = Listing { store, upto, since: since.map(|s| s.min(upto)) };
            let mut out = String::new();
            render_listing(&l, &mut out);
            prop_assert_eq!(parse_listing(out.trim_end_matches('\n')), Some(Ok(l)));
            prop_assert_eq!(parse_request(&ack_name(&l)), Some(IndexRequest::Ack { store, upto }));
            prop_assert_eq!(parse_request(&more_name(&l)), Some(IndexRequest::More { store, upto }));
        }

        #[test]
        fn any_line_parses_without_panic(line in ".{0,80}") {
            let _ = parse_listing(&line);
            let _ = parse_request(&line);
        }
    }
}
