//! File-name rules of PROTOCOL.md section 3, as a function every receiver
//! calls before it touches the disk.

use crate::limits::MAX_NAME_LEN;

/// The reserved name under which the server sends its META-DATA to a client
/// right after pairing (section 1). Only valid from server to client.
pub const METADATA_TRANSFER_NAME: &str = ".dropsync-metadata";

/// [ext] The name a REQUEST carries to offer COPY (0x0008): a client that
/// takes COPY asks the server whether it does. Reserved (section 3), so a
/// server that knows no COPY answers 0x0100 and changes nothing.
pub const COPY_OFFER_NAME: &str = ".dropsync-ext/copy";

/// Prefix of every reserved first path component: a client's own state lives
/// in `.dropsync/`, and nothing there is ever synced.
pub const RESERVED_PREFIX: &str = ".dropsync";

/// Longest path component: "a component longer than 255 bytes (no common
/// file system holds one)" is rejected (section 3), so that a name the
/// server accepts is one every client can write.
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a name was rejected. Every variant is answered with STATUS 0x0100.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Section 3 requires 1 byte at least.
    #[error("name is empty")]
    Empty,
    /// More than [`MAX_NAME_LEN`] bytes.
    #[error("name of {0} bytes is longer than the {max}-byte limit", max = MAX_NAME_LEN)]
    TooLong(usize),
    /// A leading `/` would escape the synced folder.
    #[error("name is an absolute path")]
    Absolute,
    /// `a//b` or a trailing `/`.
    #[error("name has an empty path component")]
    EmptyComponent,
    /// A component of more than [`MAX_COMPONENT_LEN`] bytes.
    #[error("name has a component of {0} bytes, longer than the {max}-byte limit", max = MAX_COMPONENT_LEN)]
    ComponentTooLong(usize),
    /// `.` or `..`: `..` would escape the folder, `.` is never canonical.
    #[error("name has a '.' or '..' component")]
    DotComponent,
    /// A backslash: a path separator on some systems, never in names here.
    #[error("name contains a backslash")]
    Backslash,
    /// NUL cannot appear in a file name on any system we write to.
    #[error("name contains a NUL byte")]
    Nul,
    /// The first component starts with `.dropsync`.
    #[error("name is reserved (starts with .dropsync)")]
    Reserved,
}

/// Checks a file name from the wire against section 3.
///
/// `allow_metadata` admits [`METADATA_TRANSFER_NAME`], which only a client
/// receiving from the server should accept. A name that passes is a relative
/// path of normal components, safe to join under the synced folder.
pub fn validate_name(name: &str, allow_metadata: bool) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    for component in name.split('/') {
        match component {
            "" => return Err(NameError::EmptyComponent),
            "." | ".." => return Err(NameError::DotComponent),
            c if c.len() > MAX_COMPONENT_LEN => return Err(NameError::ComponentTooLong(c.len())),
            _ => {}
        }
    }
    if allow_metadata && name == METADATA_TRANSFER_NAME {
        return Ok(());
    }
    if is_reserved(name) {
        return Err(NameError::Reserved);
    }
    Ok(())
}

/// True when the first component of `path` starts with `.dropsync`: such
/// paths are the sync engine's own and are never synced.
pub fn is_reserved(path: &str) -> bool {
    path.split('/').next().is_some_and(|first| first.starts_with(RESERVED_PREFIX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_relative_paths() {
        for ok in ["a", "a/b/c.txt", "dir.d/.hidden", "x/.dropsync", "ünïcode/名前", "a b/c\td"] {
            assert_eq!(validate_name(ok, false), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn rejects_every_rule_of_section_3() {
        let long = "a/".repeat(MAX_NAME_LEN / 2) + "a";
        let component = format!("dir/{}", "é".repeat(128));
        let cases: [(&str, NameError); 13] = [
            ("", NameError::Empty),
            (&long, NameError::TooLong(MAX_NAME_LEN + 1)),
            ("/etc/passwd", NameError::Absolute),
            ("a//b", NameError::EmptyComponent),
            ("a/", NameError::EmptyComponent),
            (&component, NameError::ComponentTooLong(256)),
            ("./a", NameError::DotComponent),
            ("../x", NameError::DotComponent),
            ("a/../../x", NameError::DotComponent),
            ("a\\b", NameError::Backslash),
            ("a\0b", NameError::Nul),
            (".dropsync/metadata", NameError::Reserved),
            (".dropsync-metadata", NameError::Reserved),
        ];
        for (name, err) in cases {
            assert_eq!(validate_name(name, false), Err(err), "{name:?}");
        }
    }

    #[test]
    fn metadata_name_only_where_allowed() {
        assert_eq!(validate_name(METADATA_TRANSFER_NAME, true), Ok(()));
        assert_eq!(validate_name(".dropsyncX", true), Err(NameError::Reserved));
        let longest = format!("{}/{}", "a".repeat(MAX_COMPONENT_LEN), "b/".repeat(1919) + "cc");
        assert_eq!(longest.len(), MAX_NAME_LEN);
        assert_eq!(validate_name(&longest, false), Ok(()));
    }
}
