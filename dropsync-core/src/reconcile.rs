//! Reconciliation on connect (PROTOCOL.md section 7) as a pure function.
//!
//! For each path it compares three contents by digest: S, the server's entry
//! (content, a tombstone, or no entry at all); B, the base the client last
//! had in common with the server; L, the local file now. Version numbers are
//! not compared: after its own upload a client never learns the new version.

use std::collections::{HashMap, HashSet};

use dropsync_proto::Digest;

/// A file's content, identified by its digest and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Content {
    /// MD5 of the whole file.
    pub md5: Digest,
    /// Size in bytes.
    pub size: u64,
}

/// What the server's META-DATA says about a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerSide {
    /// The server has this content.
    File(Content),
    /// The server has a tombstone: the path was deleted.
    Tombstone,
}

/// What to do about one path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Both sides changed: keep the local content as a conflict copy, then
    /// fetch the server's version (the server wins).
    ConflictCopyThenRequest,
    /// Both sides changed and the server deleted: keep the local content as a
    /// conflict copy (which removes the path), then record the tombstone.
    ConflictCopyThenDeleteLocal,
    /// The server changed and the local file did not: fetch it.
    Request,
    /// The server deleted and the local file did not change: delete it here.
    DeleteLocal,
    /// The local file was deleted and the server did not change: DELETE there.
    DeleteRemote,
    /// The local file changed (or the server has never heard of it): upload.
    Upload,
    /// Already in sync: record the server's content as the new base.
    Record,
}

/// Decides one path. `conflict_copies: false` gives the assignment's plain
/// overwrite (the server wins without keeping the local content).
/// `None` means nothing to do and nothing to record.
pub fn decide(
    server: Option<ServerSide>,
    base: Option<Content>,
    local: Option<Content>,
    conflict_copies: bool,
) -> Option<Action> {
    let Some(server) = server else {
        // No entry at all, not even a tombstone: a server that lost its data
        // is refilled, never obeyed (assignment rule 4), whatever B says.
        return match (local, base) {
            (Some(_), _) => Some(Action::Upload),
            (None, Some(_)) => Some(Action::Record),
            (None, None) => None,
        };
    };
    let s = match server {
        ServerSide::File(c) => Some(c),
        ServerSide::Tombstone => None,
    };
    if s == local {
        return (base != s).then_some(Action::Record);
    }
    if s == base {
        return Some(if local.is_some() { Action::Upload } else { Action::DeleteRemote });
    }
    let both_changed = local != base && local.is_some();
    Some(match (s.is_some(), both_changed && conflict_copies) {
        (true, true) => Action::ConflictCopyThenRequest,
        (true, false) => Action::Request,
        (false, true) => Action::ConflictCopyThenDeleteLocal,
        (false, false) => Action::DeleteLocal,
    })
}

/// One planned step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// The path.
    pub path: String,
    /// What to do.
    pub action: Action,
}

/// Reconciles every path any of the three sides knows.
///
/// `base` holds only paths whose base is content (a tombstone base is no
/// base); `local` only files that exist. The plan is ordered by action
/// (conflict copies and requests first, so the server's data starts flowing
/// while uploads go out) and then by path, so it is deterministic.
pub fn reconcile(
    server: &HashMap<String, ServerSide>,
    base: &HashMap<String, Content>,
    local: &HashMap<String, Content>,
    conflict_copies: bool,
) -> Vec<Planned> {
    let mut seen: HashSet<&str> = HashSet::with_capacity(server.len().max(local.len()));
    let mut plan = Vec::new();
    for path in server.keys().chain(base.keys()).chain(local.keys()) {
        if !seen.insert(path.as_str()) {
            continue;
        }
        let action = decide(
            server.get(path).copied(),
            base.get(path).copied(),
            local.get(path).copied(),
            conflict_copies,
        );
        if let Some(action) = action {
            plan.push(Planned { path: path.clone(), action });
        }
    }
    plan.sort_unstable_by(|a, b| (a.action, &a.path).cmp(&(b.action, &b.path)));
    plan
}

/// B for one path: the recorded base, or the content C of the server's
/// line when the local file was last seen holding C (`last_seen`, what the
/// client hashed when it last looked). Then both sides had C, so C is
/// content in common, even if the client never heard that the server took
/// it (its upload's reply was lost with a crash or a reset):
/// - the server's file is C: without this, a file the client uploaded and
///   the user then deleted comes back on the next connect, and an edit
///   made since becomes a conflict copy (found by the simulator, seed 222);
/// - the server's tombstone deleted C (section 5: a tombstone keeps the
///   digest and size of the last version, `deleted`): without this, the
///   client uploads C again and a file another client deleted comes back
///   (seed 2609). Not for an empty C: an empty file is no evidence that
///   this one was ever the server's.
///
/// The caller records the base it returns.
pub fn effective_base(
    base: Option<Content>,
    last_seen: Option<Content>,
    server: Option<ServerSide>,
    deleted: Option<Content>,
) -> Option<Content> {
    match (server, last_seen) {
        (Some(ServerSide::File(s)), Some(seen)) if s == seen => Some(s),
        (Some(ServerSide::Tombstone), Some(seen)) if deleted == Some(seen) && seen.size > 0 => Some(seen),
        _ => base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    #[test]
    fn content_last_seen_here_that_the_server_has_is_a_base() {
        let (s, b) = (Some(ServerSide::File(X)), Some(Y));
        assert_eq!(effective_base(None, Some(X), s, None), Some(X), "our upload, its reply lost");
        assert_eq!(effective_base(b, Some(X), s, None), Some(X));
        assert_eq!(effective_base(b, Some(Y), s, None), b, "seen content the server does not have");
        assert_eq!(effective_base(b, None, s, None), b);
        // And so the file deleted since is deleted on the server, not fetched back.
        assert_eq!(decide(s, effective_base(None, Some(X), s, None), None, true), Some(DeleteRemote));

        let t = Some(ServerSide::Tombstone);
        assert_eq!(effective_base(None, Some(X), t, Some(X)), Some(X), "our upload, then deleted elsewhere");
        assert_eq!(effective_base(b, Some(X), t, Some(Y)), b, "a tombstone of other content");
        let empty = Content { md5: [3; 16], size: 0 };
        assert_eq!(effective_base(None, Some(empty), t, Some(empty)), None, "an empty file proves nothing");
        // And so the file is deleted here, not uploaded again.
        assert_eq!(decide(t, effective_base(None, Some(X), t, Some(X)), Some(X), true), Some(DeleteLocal));
    }

    const X: Content = Content { md5: [1; 16], size: 1 };
    const Y: Content = Content { md5: [2; 16], size: 2 };
    const Z: Content = Content { md5: [3; 16], size: 3 };

    /// The whole table: local {new, modified, deleted, unchanged} × server
    /// {newer, equal, tombstone, unknown} × base {never synced, synced}.
    /// Base X means "synced at X"; None means never synced (or tombstone).
    #[test]
    fn every_combination() {
        use ServerSide::{File, Tombstone};
        #[rustfmt::skip]
        type Row = (&'static str, Option<ServerSide>, Option<Content>, Option<Content>, Option<Action>);
        let table: &[Row] = &[
            // ---- never synced (no base) ----
            ("new local, server unknown",            None,               None,    Some(Y), Some(Upload)),
            ("new local, server has same",           Some(File(Y)),      None,    Some(Y), Some(Record)),
            ("new local, server has other",          Some(File(Z)),      None,    Some(Y), Some(ConflictCopyThenRequest)),
            ("new local, server tombstone",          Some(Tombstone),    None,    Some(Y), Some(Upload)),
            ("nothing local, server has file",       Some(File(Z)),      None,    None,    Some(Request)),
            ("nothing local, server tombstone",      Some(Tombstone),    None,    None,    None),
            ("nothing anywhere",                     None,               None,    None,    None),
            // ---- synced at X ----
            ("unchanged, server equal",              Some(File(X)),      Some(X), Some(X), None),
            ("unchanged, server newer",              Some(File(Z)),      Some(X), Some(X), Some(Request)),
            ("unchanged, server tombstone",          Some(Tombstone),    Some(X), Some(X), Some(DeleteLocal)),
            ("unchanged, server lost its data",      None,               Some(X), Some(X), Some(Upload)),
            ("modified, server equal",               Some(File(X)),      Some(X), Some(Y), Some(Upload)),
            ("modified, server newer",               Some(File(Z)),      Some(X), Some(Y), Some(ConflictCopyThenRequest)),
            ("modified, server newer, same edit",    Some(File(Y)),      Some(X), Some(Y), Some(Record)),
            ("modified, server tombstone",           Some(Tombstone),    Some(X), Some(Y), Some(ConflictCopyThenDeleteLocal)),
            ("modified, server lost its data",       None,               Some(X), Some(Y), Some(Upload)),
            ("deleted, server equal",                Some(File(X)),      Some(X), None,    Some(DeleteRemote)),
            ("deleted, server newer",                Some(File(Z)),      Some(X), None,    Some(Request)),
            ("deleted, server tombstone",            Some(Tombstone),    Some(X), None,    Some(Record)),
            ("deleted, server lost its data",        None,               Some(X), None,    Some(Record)),
        ];
        for (what, s, b, l, expected) in table {
            assert_eq!(decide(*s, *b, *l, true), *expected, "{what}");
        }
    }

    #[test]
    fn plain_overwrite_without_conflict_copies() {
        let s = Some(ServerSide::File(Z));
        assert_eq!(decide(s, Some(X), Some(Y), false), Some(Request));
        assert_eq!(decide(Some(ServerSide::Tombstone), Some(X), Some(Y), false), Some(DeleteLocal));
    }

    #[test]
    fn plan_is_ordered_and_covers_every_path() {
        let server: HashMap<String, ServerSide> = [
            ("pull".to_string(), ServerSide::File(Z)),
            ("gone".to_string(), ServerSide::Tombstone),
            ("both".to_string(), ServerSide::File(Z)),
        ]
        .into();
        let base: HashMap<String, Content> =
            [("pull".into(), X), ("gone".into(), X), ("both".into(), X), ("mine".into(), X)].into();
        let local: HashMap<String, Content> =
            [("pull".into(), X), ("gone".into(), X), ("both".into(), Y), ("mine".into(), Y), ("b-new".into(), Y), ("a-new".into(), Y)]
                .into();
        let plan: Vec<(String, Action)> =
            reconcile(&server, &base, &local, true).into_iter().map(|p| (p.path, p.action)).collect();
        let expected: Vec<(String, Action)> = [
            ("both", ConflictCopyThenRequest),
            ("pull", Request),
            ("gone", DeleteLocal),
            ("a-new", Upload),
            ("b-new", Upload),
            ("mine", Upload),
        ]
        .into_iter()
        .map(|(p, a)| (p.to_string(), a))
        .collect();
        assert_eq!(plan, expected);
    }

    use proptest::prelude::*;

    fn content() -> impl Strategy<Value = Option<Content>> {
        prop_oneof![Just(None), Just(Some(X)), Just(Some(Y)), Just(Some(Z))]
    }
    fn server() -> impl Strategy<Value = Option<ServerSide>> {
        prop_oneof![
            Just(None),
            Just(Some(ServerSide::Tombstone)),
            Just(Some(ServerSide::File(X))),
            Just(Some(ServerSide::File(Y))),
            Just(Some(ServerSide::File(Z))),
        ]
    }

    proptest! {
        /// Applying the decision gives a state where the local content is
        /// what the server ends with, and no local content the server never
        /// had is destroyed without a conflict copy.
        #[test]
        fn decisions_converge_and_lose_nothing(s in server(), b in content(), l in content()) {
            let Some(action) = decide(s, b, l, true) else {
                // Nothing to do: already in sync (or nothing exists).
                let sc = match s { Some(ServerSide::File(c)) => Some(c), _ => None };
                prop_assert_eq!(sc, l);
                return Ok(());
            };
            let sc = match s { Some(ServerSide::File(c)) => Some(c), _ => None };
            let (server_after, local_after, kept) = match action {
                Upload => (l, l, None),
                DeleteRemote => (None, None, None),
                Request => (sc, sc, None),
                DeleteLocal => (None, None, None),
                ConflictCopyThenRequest | ConflictCopyThenDeleteLocal => (sc, sc, l),
                Record => (sc, l, None),
            };
            prop_assert_eq!(server_after, local_after);
            // Local content that differs from both base and server survives.
            if l.is_some() && l != b && l != sc {
                prop_assert!(local_after == l || kept == l, "{:?} lost {:?}", action, l);
            }
        }
    }
}
