//! The META-DATA text format of PROTOCOL.md section 5, as pure functions.
//!
//! Both the server's META-DATA and a client's own file use this line format;
//! `dropsync-core` holds the in-memory tables and decides what the states
//! mean. Parsing and rendering live here, next to the wire format, because
//! the server sends this text as a file transfer and outside tools read it.


use crate::digest::{bytes_from_hex, from_hex, push_hex, to_hex};
use crate::index::{parse_listing, Listing};
use crate::{ClientId, Digest};

/// First line of every META-DATA file: the format and its version.
pub const HEADER: &str = "dropsync-metadata 1";

/// A SHA-256 digest: the server's identity for content (section 6: "content
/// is compared by a strong hash [...] never by MD5 alone").
pub type Strong = [u8; 32];

/// Prefix of the optional seventh field of a line in the server's own store,
/// which holds the content's [`Strong`] digest in hex.
pub const STRONG_PREFIX: &str = "sha256:";

/// Comment prefix of the line that stores a client's id in its own file.
pub const CLIENT_ID_PREFIX: &str = "# client-id ";

/// [ext] `# ext <name>...`: the extensions a server offers, in the META-DATA
/// it sends (a comment: other readers ignore it). Our client offers COPY
/// only to a server that lists `copy`.
pub const EXT_PREFIX: &str = "# ext ";

/// The `state` column. `F` and `D` are the protocol's; a client may keep
/// more states in its own file (see `dropsync-core`), which round-trip here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryState {
    /// `F`: the path holds a file with this md5 and size.
    File,
    /// `D`: a tombstone; md5 and size are those of the last version.
    Deleted,
    /// Any other ASCII letter: an implementation's own state.
    Other(char),
}

impl EntryState {
    fn as_char(self) -> char {
        match self {
            EntryState::File => 'F',
            EntryState::Deleted => 'D',
            EntryState::Other(c) => c,
        }
    }

    fn from_field(field: &str) -> Option<Self> {
        let mut chars = field.chars();
        let c = chars.next()?;
        if chars.next().is_some() || !c.is_ascii_alphabetic() {
            return None;
        }
        Some(match c {
            'F' => EntryState::File,
            'D' => EntryState::Deleted,
            c => EntryState::Other(c),
        })
    }
}

/// One path's line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Server-wide counter value of the change that made this line.
    pub version: u64,
    /// MD5 of the content (of the last version, for a tombstone).
    pub md5: Digest,
    /// Size in bytes of that content.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// What the line says about the path.
    pub state: EntryState,
    /// The path, unescaped.
    pub path: String,
    /// SHA-256 of the content (of the last version, for a tombstone), where
    /// known: the server's identity for it. Kept in the server's own store
    /// only ([`render_stored_entry`]), never sent: a reader of section 5
    /// takes everything after the fifth tab for the path.
    pub strong: Option<Strong>,
}

/// A parsed line of a META-DATA file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    /// A path's entry.
    Entry(Entry),
    /// `# client-id <32 hex>`: the id a client sends in HELLO.
    ClientId(ClientId),
    /// `# ext <name>...` [ext]: extensions the server offers.
    Extensions(Vec<String>),
    /// `# index` or `# delta` [ext]: what the server's META-DATA lists.
    Listing(Listing),
    /// Any other comment, or a blank line: readers ignore these.
    Ignored,
}

/// Why a META-DATA text could not be read, with the 1-based line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The first line is not [`HEADER`].
    #[error("line 1: not a dropsync META-DATA file (expected {HEADER:?})")]
    BadHeader,
    /// A line without exactly six tab-separated fields.
    #[error("line {line}: expected 6 tab-separated fields, found {found}")]
    FieldCount {
        /// 1-based line number.
        line: usize,
        /// Fields found.
        found: usize,
    },
    /// A field that does not parse as its column's type.
    #[error("line {line}: bad {column} field")]
    BadField {
        /// 1-based line number.
        line: usize,
        /// The column's name.
        column: &'static str,
    },
    /// A backslash followed by anything but `\`, `t` or `n`.
    #[error("line {line}: bad escape in path")]
    BadEscape {
        /// 1-based line number.
        line: usize,
    },
}

/// A whole META-DATA file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Document {
    /// The client id line, if the file has one.
    pub client_id: Option<ClientId>,
    /// Entries in file order (a later line for the same path wins).
    pub entries: Vec<Entry>,
    /// [ext] What the `# ext` lines name.
    pub extensions: Vec<String>,
    /// [ext] What a server's META-DATA lists: every path, or only what
    /// changed since a version (`crate::index`).
    pub listing: Option<Listing>,
}

/// Appends the header line.
pub fn render_header(out: &mut String) {
    out.push_str(HEADER);
    out.push('\n');
}

/// Appends an `# ext` line naming `extensions`.
pub fn render_extensions(extensions: &[&str], out: &mut String) {
    out.push_str(EXT_PREFIX);
    out.push_str(&extensions.join(" "));
    out.push('\n');
}

/// Appends the `# client-id` line.
pub fn render_client_id(id: &ClientId, out: &mut String) {
    out.push_str(CLIENT_ID_PREFIX);
    out.push_str(&to_hex(id));
    out.push('\n');
}

/// Appends one entry line, escaping the path.
pub fn render_entry(e: &Entry, out: &mut String) {
    push_u64(e.version, out);
    out.push('\t');
    push_hex(&e.md5, out);
    out.push('\t');
    push_u64(e.size, out);
    out.push('\t');
    if e.mtime_ns < 0 {
        out.push('-');
    }
    push_u64(e.mtime_ns.unsigned_abs(), out);
    out.push('\t');
    out.push(e.state.as_char());
    out.push('\t');
    escape_path(&e.path, out);
    out.push('\n');
}

/// Appends one line of the server's own store: the entry's line with its
/// [`Strong`] digest, when known, as a seventh field (`sha256:<hex>`). Paths
/// escape their tabs, so the field cannot be mistaken for part of one.
pub fn render_stored_entry(e: &Entry, out: &mut String) {
    render_entry(e, out);
    if let Some(strong) = &e.strong {
        out.pop();
        out.push('\t');
        out.push_str(STRONG_PREFIX);
        push_hex(strong, out);
        out.push('\n');
    }
}

/// Appends `n` in decimal (what `write!("{n}")` gives, without the
/// formatter machinery: META-DATA of a million files is rendered at every
/// client connect).
fn push_u64(mut n: u64, out: &mut String) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // ASCII digits: always UTF-8, copied at once rather than char by char.
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Renders a whole file: header, optional client id, entries (with their
/// strong digests where they carry one, as a server's own store does: what
/// parses renders back the same).
pub fn render_document(doc: &Document) -> String {
    let mut out = String::with_capacity(64 + doc.entries.len() * 80);
    render_header(&mut out);
    if let Some(id) = &doc.client_id {
        render_client_id(id, &mut out);
    }
    if !doc.extensions.is_empty() {
        let names: Vec<&str> = doc.extensions.iter().map(String::as_str).collect();
        render_extensions(&names, &mut out);
    }
    if let Some(l) = &doc.listing {
        crate::index::render_listing(l, &mut out);
    }
    for e in &doc.entries {
        render_stored_entry(e, &mut out);
    }
    out
}

/// Writes `\` as `\\`, tab as `\t` and newline as `\n`.
pub fn escape_path(path: &str, out: &mut String) {
    if !path.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n')) {
        out.push_str(path);
        return;
    }
    for c in path.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn unescape_path(field: &str, line: usize) -> Result<String, MetadataError> {
    if !field.contains('\\') {
        return Ok(field.to_owned());
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            _ => return Err(MetadataError::BadEscape { line }),
        }
    }
    Ok(out)
}

/// Parses one line (without its newline); `line` is its 1-based number, for
/// errors. The header line is not special here: see [`parse_document`].
pub fn parse_line(text: &str, line: usize) -> Result<Line, MetadataError> {
    if let Some(hex) = text.strip_prefix(CLIENT_ID_PREFIX) {
        return from_hex(hex.trim())
            .map(Line::ClientId)
            .ok_or(MetadataError::BadField { line, column: "client-id" });
    }
    if let Some(names) = text.strip_prefix(EXT_PREFIX) {
        return Ok(Line::Extensions(names.split_whitespace().map(str::to_owned).collect()));
    }
    if let Some(listing) = parse_listing(text) {
        return listing.map(Line::Listing).map_err(|()| MetadataError::BadField { line, column: "listing" });
    }
    if text.is_empty() || text.starts_with('#') {
        return Ok(Line::Ignored);
    }
    // Six fields; a seventh is the server's own (see `render_stored_entry`),
    // ignored when it is not a strong digest (readers ignore what they do
    // not know).
    // Split in place: no list allocated per line (a million lines load at
    // every start of a client).
    let mut split = text.splitn(7, '\t');
    let mut fields = [""; 6];
    for (found, field) in fields.iter_mut().enumerate() {
        *field = split.next().ok_or(MetadataError::FieldCount { line, found })?;
    }
    let [version, md5, size, mtime, state, path] = fields;
    let extra = split.next();
    let strong = extra.and_then(|f| f.strip_prefix(STRONG_PREFIX)).and_then(bytes_from_hex);
    let bad = |column| MetadataError::BadField { line, column };
    Ok(Line::Entry(Entry {
        version: version.parse().map_err(|_| bad("version"))?,
        md5: from_hex(md5).ok_or(bad("md5"))?,
        size: size.parse().map_err(|_| bad("size"))?,
        mtime_ns: mtime.parse().map_err(|_| bad("mtime"))?,
        state: EntryState::from_field(state).ok_or(bad("state"))?,
        path: unescape_path(path, line)?,
        strong,
    }))
}

/// How many lines `text` holds at most (its newlines): what a reader of a
/// META-DATA text makes room for at once.
pub fn line_count(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'\n').count()
}

/// Parses a whole META-DATA text: the header, then every line.
pub fn parse_document(text: &str) -> Result<Document, MetadataError> {
    let mut lines = text.split('\n');
    if lines.next() != Some(HEADER) {
        return Err(MetadataError::BadHeader);
    }
    let mut doc = Document::default();
    // A line an entry: the list is made that size at once (at a million
    // entries, doublings would copy and fault in twice its 120 MB).
    doc.entries.reserve(line_count(text));
    for (i, raw) in lines.enumerate() {
        match parse_line(raw, i + 2)? {
            Line::Entry(e) => doc.entries.push(e),
            Line::ClientId(id) => doc.client_id = Some(id),
            Line::Extensions(names) => doc.extensions.extend(names),
            Line::Listing(l) => doc.listing = Some(l),
            Line::Ignored => {}
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn an_ext_line_names_the_servers_extensions_and_other_readers_skip_it() {
        let mut text = String::new();
        render_header(&mut text);
        render_extensions(&["copy", "future"], &mut text);
        let doc = parse_document(&text).unwrap();
        assert_eq!(doc.extensions, vec!["copy".to_string(), "future".to_string()]);
        assert_eq!(render_document(&doc), text);
        assert!(doc.entries.is_empty());
    }

    fn entry(path: &str) -> Entry {
        Entry {
            version: 7,
            md5: crate::md5(b"abc"),
            size: 3,
            mtime_ns: 1_700_000_000_123_456_789,
            state: EntryState::File,
            path: path.to_owned(),
            strong: None,
        }
    }

    #[test]
    fn renders_the_documented_line() {
        let mut out = String::new();
        render_entry(&entry("a\tb\\c\nd"), &mut out);
        assert_eq!(
            out,
            "7\t900150983cd24fb0d6963f7d28e17f72\t3\t1700000000123456789\tF\ta\\tb\\\\c\\nd\n"
        );
    }

    #[test]
    fn the_servers_store_keeps_a_strong_digest_that_the_wire_never_shows() {
        let mut e = entry("dir/a\tb");
        e.strong = Some([0xab; 32]);
        let mut wire = String::new();
        render_entry(&e, &mut wire);
        assert!(!wire.contains(STRONG_PREFIX), "never sent: {wire:?}");
        let mut stored = String::new();
        render_stored_entry(&e, &mut stored);
        assert_eq!(stored, format!("{}\t{STRONG_PREFIX}{}\n", wire.trim_end(), "ab".repeat(32)));
        assert_eq!(parse_line(stored.trim_end(), 1).unwrap(), Line::Entry(e.clone()));
        // A line without it, and one whose seventh field is something else
        // (ignored, as section 5 says of what a reader does not know).
        let mut plain = e.clone();
        plain.strong = None;
        assert_eq!(parse_line(wire.trim_end(), 1).unwrap(), Line::Entry(plain.clone()));
        assert_eq!(parse_line(&format!("{}\tx-other:1", wire.trim_end()), 1).unwrap(), Line::Entry(plain));
    }

    #[test]
    fn parses_a_hand_written_file() {
        let text = "dropsync-metadata 1\n\
                    # client-id 000102030405060708090a0b0c0d0e0f\n\
                    # a comment\n\
                    \n\
                    3\td41d8cd98f00b204e9800998ecf8427e\t0\t-5\tD\tgone.txt\n\
                    4\t900150983cd24fb0d6963f7d28e17f72\t3\t10\tL\tdir/x\n";
        let doc = parse_document(text).expect("valid");
        assert_eq!(doc.client_id, Some(core::array::from_fn(|i| i as u8)));
        assert_eq!(doc.entries.len(), 2);
        assert_eq!(doc.entries[0].state, EntryState::Deleted);
        assert_eq!(doc.entries[0].mtime_ns, -5);
        assert_eq!(doc.entries[1].state, EntryState::Other('L'));
        assert_eq!(doc.entries[1].path, "dir/x");
    }

    #[test]
    fn reports_the_broken_rule_and_line() {
        assert_eq!(parse_document("nope\n"), Err(MetadataError::BadHeader));
        let bad = |body: &str| parse_document(&format!("{HEADER}\n{body}")).unwrap_err();
        assert_eq!(bad("1\t2\t3"), MetadataError::FieldCount { line: 2, found: 3 });
        assert_eq!(
            bad("x\td41d8cd98f00b204e9800998ecf8427e\t0\t0\tF\tp"),
            MetadataError::BadField { line: 2, column: "version" }
        );
        assert_eq!(
            bad("1\td41d8cd98f00b204e9800998ecf8427e\t0\t0\tFF\tp"),
            MetadataError::BadField { line: 2, column: "state" }
        );
        assert_eq!(
            bad("1\td41d8cd98f00b204e9800998ecf8427e\t0\t0\tF\tp\\q"),
            MetadataError::BadEscape { line: 2 }
        );
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            any::<u64>(),
            any::<[u8; 16]>(),
            any::<u64>(),
            any::<i64>(),
            prop_oneof![
                Just(EntryState::File),
                Just(EntryState::Deleted),
                proptest::char::range('E', 'Z').prop_map(|c| EntryState::from_field(&c.to_string()).unwrap_or(EntryState::File)),
            ],
            // Arbitrary unicode, tabs, newlines and backslashes included.
            "(\\PC|[\t\n\\\\]){1,40}",
            proptest::option::of(any::<[u8; 32]>()),
        )
            .prop_map(|(version, md5, size, mtime_ns, state, path, strong)| Entry {
                version,
                md5,
                size,
                mtime_ns,
                state,
                path,
                strong,
            })
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(
            entries in proptest::collection::vec(arb_entry(), 0..20),
            client_id in proptest::option::of(any::<[u8; 16]>()),
        ) {
            let doc = Document { client_id, entries, extensions: Vec::new(), listing: None };
            let text = render_document(&doc);
            prop_assert_eq!(parse_document(&text), Ok(doc));
        }

        /// The hand-written number and hex output is exactly what the
        /// formatter gives (including i64::MIN and 0).
        #[test]
        fn render_matches_the_formatter(e in arb_entry(), edge in 0usize..4) {
            let mut e = e;
            match edge {
                1 => e.mtime_ns = i64::MIN,
                2 => { e.version = 0; e.size = 0; e.mtime_ns = 0; }
                3 => { e.version = u64::MAX; e.size = u64::MAX; e.mtime_ns = i64::MAX; }
                _ => {}
            }
            let mut got = String::new();
            render_entry(&e, &mut got);
            let hex: String = e.md5.iter().map(|b| format!("{b:02x}")).collect();
            let mut path = String::new();
            for c in e.path.chars() {
                match c {
                    '\\' => path.push_str("\\\\"),
                    '\t' => path.push_str("\\t"),
                    '\n' => path.push_str("\\n"),
                    c => path.push(c),
                }
            }
            let want = format!("{}\t{}\t{}\t{}\t{}\t{}\n", e.version, hex, e.size, e.mtime_ns, e.state.as_char(), path);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC*") {
            let _ = parse_document(&format!("{HEADER}\n{text}"));
        }
    }
}
