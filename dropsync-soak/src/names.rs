//! Recognising conflict copies by name, so the checks can accept a version
//! "under the path or as a conflict copy of it" (PROTOCOL.md sections 6
//! and 7): `<stem> (conflicted copy <label> <YYYY-MM-DD HHMMSS>)<.ext>`,
//! with ` 2`, ` 3`, ... after the date when the name was taken. A copy of
//! a copy nests: `a (conflicted copy x …) (conflicted copy y …).txt`.

const MARK: &str = " (conflicted copy ";

/// Splits the last component of `path` into (before the extension,
/// extension with its dot), exactly as `dropsync_core::conflict` does.
fn split_ext(path: &str) -> (&str, &str) {
    let file_start = path.rfind('/').map_or(0, |i| i + 1);
    match path[file_start..].rfind('.') {
        Some(dot) if dot > 0 => path.split_at(file_start + dot),
        _ => (path, ""),
    }
}

/// `YYYY-MM-DD`
fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

fn is_digits(s: &str, len: Option<usize>) -> bool {
    !s.is_empty() && len.is_none_or(|l| s.len() == l) && s.bytes().all(|c| c.is_ascii_digit())
}

/// `<label> <YYYY-MM-DD> <HHMMSS>` or `… <HHMMSS> <n>` (n ≥ 2).
fn is_copy_inner(inner: &str) -> bool {
    let words: Vec<&str> = inner.rsplitn(4, ' ').collect();
    match words[..] {
        [n, time, date, label] if is_digits(n, None) && is_digits(time, Some(6)) && is_date(date) => {
            !label.is_empty() && n.parse::<u32>().is_ok_and(|n| n >= 2)
        }
        _ => {
            let words: Vec<&str> = inner.rsplitn(3, ' ').collect();
            matches!(words[..], [time, date, label] if is_digits(time, Some(6)) && is_date(date) && !label.is_empty())
        }
    }
}

/// The name `copy` is a conflict copy of, one level up; `None` when it is
/// not a conflict-copy name.
pub fn copy_of(copy: &str) -> Option<String> {
    let file_start = copy.rfind('/').map_or(0, |i| i + 1);
    let file = &copy[file_start..];
    // The marker closest to the end is the outermost copy.
    let at = file.rfind(MARK)?;
    let rest = &file[at + MARK.len()..];
    let close = rest.find(')')?;
    if !is_copy_inner(&rest[..close]) {
        return None;
    }
    let ext = &rest[close + 1..];
    let stem = &copy[..file_start + at];
    let original = format!("{stem}{ext}");
    // The extension must be the one the original name splits into.
    (split_ext(&original) == (stem, ext) && !stem[file_start..].is_empty()).then_some(original)
}

/// True when `name` is `path` itself or a conflict copy of it, at any depth.
pub fn derives_from(name: &str, path: &str) -> bool {
    let mut cur = name.to_owned();
    loop {
        if cur == path {
            return true;
        }
        match copy_of(&cur) {
            Some(up) => cur = up,
            None => return false,
        }
    }
}

/// True when `name` is a conflict copy of anything.
pub fn is_conflict_copy(name: &str) -> bool {
    copy_of(name).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_core::conflict::conflict_name;

    const T: i64 = 1_795_760_340;

    #[test]
    fn recognises_what_the_engine_names() {
        for path in ["a.txt", "d/e/report.txt", "Makefile", "d.x/noext", "a.tar.gz", "d/.hidden", "x y (z).md"] {
            for n in [1, 2, 13] {
                let c = conflict_name(path, "c3", T, n);
                assert_eq!(copy_of(&c).as_deref(), Some(path), "{c}");
                assert!(derives_from(&c, path));
                let cc = conflict_name(&c, "verify", T + 1, n);
                assert_eq!(copy_of(&cc).as_deref(), Some(c.as_str()), "{cc}");
                assert!(derives_from(&cc, path), "{cc}");
                assert!(!derives_from(path, &c));
            }
        }
    }

    #[test]
    fn ordinary_names_are_not_copies() {
        for name in [
            "a.txt",
            "a (conflicted copy).txt",
            "a (conflicted copy c1 2026-11-27).txt",
            "a (conflicted copy c1 2026-11-27 0619).txt",
            "a (conflicted copy c1 2026-11-27 061900 1).txt",
            "d (conflicted copy c1 2026-11-27 061900)/x.txt",
            " (conflicted copy c1 2026-11-27 061900).txt",
        ] {
            assert_eq!(copy_of(name), None, "{name}");
        }
        assert!(!derives_from("b.txt", "a.txt"));
        assert!(!derives_from(&conflict_name("b.txt", "c", T, 1), "a.txt"));
    }
}
