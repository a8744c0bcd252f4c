//! Conflict-copy names (PROTOCOL.md sections 6 and 7 [ext]):
//! `<stem> (conflicted copy <label> <YYYY-MM-DD HHMMSS>)<.ext>`, in UTC, with
//! ` 2`, ` 3`, ... after the date when the name is taken.

/// The label used when the uploader's label is empty or no longer known.
pub const UNKNOWN_LABEL: &str = "unknown";

/// Replaces `/`, `\`, NUL and control characters with `_` so a label can
/// sit inside a file name; empty becomes [`UNKNOWN_LABEL`].
pub fn sanitize_label(label: &str) -> String {
    if label.is_empty() {
        return UNKNOWN_LABEL.to_owned();
    }
    label
        .chars()
        .map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c })
        .collect()
}

/// `YYYY-MM-DD HHMMSS` for a Unix time in seconds, in UTC: the date as
/// `utc::format` writes it, without the colons a file name should not hold.
pub fn format_utc(unix_secs: i64) -> String {
    crate::utc::format(unix_secs).replace(':', "")
}

/// Splits the last component of `path` into (everything before the
/// extension, extension with its dot). A leading dot is not an extension.
fn split_ext(path: &str) -> (&str, &str) {
    let file_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[file_start..].rfind('.') {
        Some(dot) if dot > 0 => path.split_at(file_start + dot),
        _ => (path, ""),
    }
}

/// The conflict-copy name for `path`; `n` ≥ 2 adds the ` n` suffix.
pub fn conflict_name(path: &str, label: &str, unix_secs: i64, n: u32) -> String {
    let (stem, ext) = split_ext(path);
    let label = sanitize_label(label);
    let date = format_utc(unix_secs);
    if n >= 2 {
        format!("{stem} (conflicted copy {label} {date} {n}){ext}")
    } else {
        format!("{stem} (conflicted copy {label} {date}){ext}")
    }
}

/// The first conflict-copy name for `path` that `taken` says is free.
pub fn pick_conflict_name(
    path: &str,
    label: &str,
    unix_secs: i64,
    mut taken: impl FnMut(&str) -> bool,
) -> String {
    let mut n = 1;
    loop {
        let name = conflict_name(path, label, unix_secs, n);
        if !taken(&name) || n == u32::MAX {
            return name;
        }
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_utc() {
        assert_eq!(format_utc(0), "1970-01-01 000000");
        assert_eq!(format_utc(951_782_400), "2000-02-29 000000");
        // 2026-11-27 06:19:00 UTC
        assert_eq!(format_utc(1_795_760_340), "2026-11-27 061900");
        assert_eq!(format_utc(-1), "1969-12-31 235959");
    }

    #[test]
    fn names_follow_the_documented_pattern() {
        let t = 1_795_760_340;
        assert_eq!(conflict_name("a/report.txt", "bob", t, 1), "a/report (conflicted copy bob 2026-11-27 061900).txt");
        assert_eq!(conflict_name("Makefile", "", t, 1), "Makefile (conflicted copy unknown 2026-11-27 061900)");
        assert_eq!(conflict_name("d.x/.bashrc", "b/c\n", t, 3), "d.x/.bashrc (conflicted copy b_c_ 2026-11-27 061900 3)");
        assert_eq!(conflict_name("a.tar.gz", "h", t, 2), "a.tar (conflicted copy h 2026-11-27 061900 2).gz");
    }

    #[test]
    fn picks_the_first_free_name() {
        let t = 0;
        let first = conflict_name("f.txt", "x", t, 1);
        let second = conflict_name("f.txt", "x", t, 2);
        let name = pick_conflict_name("f.txt", "x", t, |n| n == first || n == second);
        assert_eq!(name, conflict_name("f.txt", "x", t, 3));
    }
}
