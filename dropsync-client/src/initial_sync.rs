//! Reconciliation on connect (PROTOCOL.md section 7): scan the folder,
//! compare server (S), base (B) and local (L) content for every path with
//! the core's pure `reconcile()`, carry out the local part of the plan
//! (record, delete locally, keep conflict copies) and hand back the network
//! part (REQUESTs, and paths to upload or DELETE).
//!
//! It runs while the receive thread waits (it has answered the META-DATA
//! and holds off reading further), so no incoming file changes the folder
//! under the scan.

use std::collections::hash_map::Entry as Slot;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

use dropsync_core::meta_client::{ClientMeta, ClientRecord, LocalSeen};
use dropsync_core::reconcile::{effective_base, reconcile, Action, Content, Planned, ServerSide};
use dropsync_proto::metadata::{Document, Entry, EntryState};
use dropsync_proto::name::validate_name;

use dropsync_core::debounce::Debouncer;
use crate::folder::{delete_local, keep_if_unaccepted, Before};
use crate::ignores::LastFolder;
use crate::paths::local_path;
use crate::scan::{read_local, seen_is_current, Local, Notes, Probe, Scan};
use crate::state::Ctx;

/// The network half of a reconciliation plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Paths to REQUEST.
    pub requests: Vec<String>,
    /// Paths to bring in line with the server (upload or DELETE), conflict
    /// copies included.
    pub syncs: Vec<String>,
}

/// The server's side of each path, from its META-DATA, its version, and
/// the content its line names (a tombstone's is the content it deleted).
fn server_side(doc: &Document) -> HashMap<&str, (ServerSide, u64, Content)> {
    let mut server = HashMap::with_capacity(doc.entries.len());
    for e in &doc.entries {
        if let Err(err) = validate_name(&e.path, false) {
            log::warn!("server META-DATA lists {:?}: {err}; ignored", e.path);
            continue;
        }
        let side = match e.state {
            EntryState::File => ServerSide::File(Content { md5: e.md5, size: e.size }),
            EntryState::Deleted => ServerSide::Tombstone,
            // Readers ignore what they do not know (section 5).
            EntryState::Other(_) => continue,
        };
        // A later line for the same path wins.
        server.insert(e.path.as_str(), (side, e.version, Content { md5: e.md5, size: e.size }));
    }
    server
}

/// True when a path needs nothing: the server's file is its base, and the
/// local file holds it, as recorded (reconcile plans nothing for it). Most
/// paths of a reconnection are so; they are left out of the plan's maps.
fn in_sync(server: Option<&(ServerSide, u64, Content)>, record: &ClientRecord, seen: LocalSeen) -> bool {
    match server {
        Some(&(ServerSide::File(c), _, _)) => record.base == Some(c) && seen.content == c && record.local == Some(seen),
        _ => false,
    }
}

/// Scans, reconciles against `doc` and carries out the local actions.
/// Files that keep changing during the scan are left out of the plan and
/// handed to `debouncer`: they are uploaded once quiet.
pub fn run(ctx: &Ctx, notes: &mut Notes, debouncer: &mut Debouncer<String>, doc: &Document, scan: Scan) -> Plan {
    let started = Instant::now();
    let mut server = server_side(doc);
    let server_entries = server.len();

    // L: every file now, hashed only when its stat changed, and only when
    // its content matters: a path neither the server nor the base knows is
    // uploaded whatever it holds (the upload hashes it as it goes). The
    // walk stats each file as it lists it; it may have been made while the
    // META-DATA was on its way (the watcher reports what changed since).
    let now = scan.began;
    let names = scan.files(notes);
    let mut local_seen: HashMap<&str, LocalSeen> = HashMap::new();
    // The paths in sync, as recorded, are taken out of `server` as they are
    // found (one lookup each); what is left of it is what needs a look.
    // Each was in `server` once, so `same` counts distinct paths.
    let mut same: HashSet<&str> = HashSet::with_capacity(names.len());
    let mut unsettled: HashSet<&str> = HashSet::new();
    // New files, by their index in `names` (moved out at the end, not
    // copied: an initial sync of a million files holds no second copy of
    // their names); those with a record, by name.
    let mut fresh: Vec<usize> = Vec::new();
    let mut fresh_set: HashSet<&str> = HashSet::new();
    let mut folder = LastFolder::default();
    for (i, (name, probe)) in names.iter().enumerate() {
        let name = name.as_str();
        // An ignored file is not synced in either direction (`ignores.rs`).
        if ctx.ignores.is_ignored_in_walk(name, &mut folder) {
            continue;
        }
        let record = ctx.shared.lock().record(name);
        let on_server = match server.entry(name) {
            Slot::Occupied(o) => {
                // The walk's stat, as recorded: no need to look again.
                let seen = match *probe {
                    Probe::File(stat) => record.local.filter(|s| seen_is_current(Some(*s), stat, now)),
                    _ => None,
                };
                if seen.is_some_and(|seen| in_sync(Some(o.get()), &record, seen)) {
                    o.remove();
                    same.insert(name);
                    continue;
                }
                Some(*o.get())
            }
            // Listed twice (a rename racing the listing): seen in sync
            // the first time.
            Slot::Vacant(_) if same.contains(name) => continue,
            Slot::Vacant(_) => None,
        };
        if record.base.is_none() && on_server.is_none() {
            fresh.push(i);
            if record.local.is_some() {
                fresh_set.insert(name);
            }
            continue;
        }
        match read_local(&local_path(&ctx.root, name), record.local, now) {
            Ok(Local::File { seen, .. }) if in_sync(on_server.as_ref(), &record, seen) => {
                server.remove(name);
                same.insert(name);
            }
            Ok(Local::File { seen, .. }) => {
                local_seen.insert(name, seen);
            }
            Ok(Local::NotAFile(_) | Local::Unhashed { .. }) => {}
            Ok(Local::Unstable) => {
                debouncer.touch(name.to_owned(), Instant::now());
                unsettled.insert(name);
            }
            Err(e) => {
                notes.unreadable(name, &e);
                unsettled.insert(name);
            }
        }
    }
    // Every record in sync (a reconnection where nothing changed): no
    // record is anything but `same`, and the passes over the records below
    // would find nothing.
    let all_same = same.len() == ctx.shared.lock().meta.records.len();

    // Content last seen here that the server has is content in common,
    // even if this client never heard that the server took it (core's
    // `effective_base`): recorded as the base before B is read. (A path in
    // sync has that base already.)
    {
        let mut st = ctx.shared.lock();
        let found: Vec<(String, Content, u64)> = server
            .iter()
            .filter_map(|(name, &(side, version, named))| {
                let r = st.meta.records.get(*name)?;
                let b = effective_base(r.base, r.local.map(|l| l.content), Some(side), Some(named))?;
                (Some(b) != r.base).then(|| ((*name).to_owned(), b, version))
            })
            .collect();
        for (name, b, version) in found {
            log::debug!("{name}: the server has what was last seen here; that is the base");
            st.set_base(&name, Some(b), version);
        }
    }

    // Record what was seen; B is the base of every record.
    let mut st = ctx.shared.lock();
    for (name, seen) in &local_seen {
        st.set_local(name, Some(*seen));
    }
    let vanished: Vec<String> = if all_same {
        Vec::new()
    } else {
        st.meta
            .records
            .iter()
            .filter(|(name, r)| {
                let name = name.as_str();
                r.local.is_some() && !local_seen.contains_key(name) && !same.contains(name) && !unsettled.contains(name)
            })
            .filter(|(name, _)| !ctx.ignores.is_ignored(name))
            .filter(|(name, r)| !(r.base.is_none() && fresh_set.contains(name.as_str())))
            .map(|(name, _)| name.clone())
            .collect()
    };
    for name in &vanished {
        st.set_local(name, None);
    }
    let base: HashMap<String, Content> = if all_same {
        HashMap::new()
    } else {
        st.meta
            .records
            .iter()
            .filter(|(name, _)| !same.contains(name.as_str()))
            .filter_map(|(name, r)| Some((name.clone(), r.base?)))
            .collect()
    };
    drop(st);

    let local: HashMap<String, Content> = local_seen.iter().map(|(n, s)| ((*n).to_owned(), s.content)).collect();
    let sides: HashMap<String, ServerSide> = server.iter().map(|(n, (s, _, _))| ((*n).to_owned(), *s)).collect();
    let planned = reconcile(&sides, &base, &local, ctx.conflict_copies);

    let mut plan = Plan::default();
    for Planned { path: name, action } in planned {
        if unsettled.contains(name.as_str()) || ctx.ignores.is_ignored(&name) {
            continue;
        }
        let (side, version) = server.get(name.as_str()).copied().map_or((None, 0), |(s, v, _)| (Some(s), v));
        let server_content = match side {
            Some(ServerSide::File(c)) => Some(c),
            _ => None,
        };
        log::debug!("reconcile {name}: {action:?}");
        match action {
            Action::Record => ctx.shared.lock().set_base(&name, server_content, version),
            Action::Request => plan.requests.push(name),
            Action::ConflictCopyThenRequest => {
                plan.syncs.extend(keep_copy(ctx, &name, local_seen.get(name.as_str()), server_content));
                plan.requests.push(name);
            }
            Action::ConflictCopyThenDeleteLocal | Action::DeleteLocal => {
                plan.syncs.extend(remove_local(ctx, &name, local_seen.get(name.as_str())));
            }
            Action::DeleteRemote => plan.syncs.push(name),
            Action::Upload => {
                if side.is_none() {
                    // The server has no entry at all: it lost its data and
                    // is refilled (rule 4), so nothing is in common with it.
                    ctx.shared.lock().set_base(&name, None, 0);
                }
                plan.syncs.push(name);
            }
        }
    }
    // Each new file gets a record once it is sent: the table is grown to
    // that size once here, rather than by doublings that each hold the old
    // table and the new one at once (at a million files, 350 MB at the
    // last one).
    let recordless = fresh.len().saturating_sub(fresh_set.len());
    ctx.shared.lock().meta.records.reserve(recordless);
    let (new_files, known) = (fresh.len(), local.len() + same.len());
    drop(same);
    let mut names = names;
    let mut fresh: Vec<String> =
        fresh.into_iter().filter_map(|i| names.get_mut(i).map(|(n, _)| std::mem::take(n))).collect();
    fresh.sort_unstable();
    plan.syncs.extend(fresh);
    log::info!(
        "reconciled {} local files with {} server entries in {:?}: {} to request, {} to send",
        known + new_files,
        server_entries,
        started.elapsed(),
        plan.requests.len(),
        plan.syncs.len()
    );
    plan
}

/// Reconciliation when the server sent no META-DATA (section 1): its state
/// is taken to be the base, so a path whose local file differs from its
/// base is sent (uploaded, or DELETEd if the file is gone), a path the base
/// never had is uploaded, and nothing is requested or changed here.
pub fn run_without_server(ctx: &Ctx, notes: &mut Notes, debouncer: &mut Debouncer<String>, scan: Scan) -> Plan {
    let doc = base_as_server(&ctx.shared.lock().meta);
    run(ctx, notes, debouncer, &doc, scan)
}

/// A META-DATA document that lists every path's base as the server's
/// current content.
fn base_as_server(meta: &ClientMeta) -> Document {
    let entries = meta
        .records
        .iter()
        .filter_map(|(path, r)| {
            let base = r.base?;
            Some(Entry {
                version: r.base_version,
                md5: base.md5,
                size: base.size,
                mtime_ns: 0,
                state: EntryState::File,
                path: path.clone(),
                strong: None,
            })
        })
        .collect();
    Document { client_id: None, entries, extensions: Vec::new() }
}

/// Keeps the local file of `name` as a conflict copy before the server's
/// `incoming` version is requested; returns the copy's name.
fn keep_copy(ctx: &Ctx, name: &str, seen: Option<&LocalSeen>, incoming: Option<Content>) -> Option<String> {
    let path = local_path(&ctx.root, name);
    let before = seen.map_or(Before::File { stat: Default::default(), content: None }, |s| Before::seen(*s));
    let mut st = ctx.shared.lock();
    match keep_if_unaccepted(ctx, &mut st, name, &path, &before, incoming) {
        Ok(copy) => copy,
        Err(e) => {
            log::warn!("cannot keep a conflict copy of {name}: {e}");
            None
        }
    }
}

/// The server deleted `name`: delete the local file, first keeping it as a
/// conflict copy if it holds content the server never accepted (which it
/// did at the scan, for `ConflictCopyThenDeleteLocal`, or if it changed
/// since). Returns the copy's name.
fn remove_local(ctx: &Ctx, name: &str, seen: Option<&LocalSeen>) -> Option<String> {
    let path = local_path(&ctx.root, name);
    let before = seen.map_or(Before::File { stat: Default::default(), content: None }, |s| Before::seen(*s));
    let mut st = ctx.shared.lock();
    let copy = match keep_if_unaccepted(ctx, &mut st, name, &path, &before, None) {
        Ok(copy) => copy,
        Err(e) => {
            log::warn!("not deleting {name}: {e}");
            return None;
        }
    };
    match delete_local(ctx, &mut st, name, &path) {
        Ok(()) if copy.is_none() => log::info!("deleted {name} (deleted on the server)"),
        Ok(()) => {}
        Err(e) => log::warn!("cannot delete {name}: {e}"),
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use dropsync_core::meta_client::ClientRecord;
    use dropsync_proto::md5;

    use crate::state::Shared;

    fn content(bytes: &[u8]) -> Content {
        Content { md5: md5(bytes), size: bytes.len() as u64 }
    }

    /// A folder with files in every situation, its records, and a server
    /// META-DATA: the local half of the plan is carried out, the network
    /// half returned.
    #[test]
    fn carries_out_the_local_actions_and_returns_the_rest() {
        let root = std::env::temp_dir().join(format!("dropsync-initial-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("sub")).unwrap();
        let files: [(&str, &[u8]); 6] = [
            ("same", b"same"),
            ("pull", b"old"),
            ("gone", b"old"),
            ("mine", b"new here"),
            ("sub/both", b"edited here"),
            ("local-del-remote-same", b"x"),
        ];
        for (name, bytes) in files {
            std::fs::write(root.join(name), bytes).unwrap();
        }
        std::fs::remove_file(root.join("local-del-remote-same")).unwrap();
        let mut meta = ClientMeta::new([1; 16]);
        for (name, base) in [("same", &b"same"[..]), ("pull", b"old"), ("gone", b"old"), ("sub/both", b"old"), ("local-del-remote-same", b"x")] {
            meta.records.insert(name.into(), ClientRecord { base: Some(content(base)), base_version: 1, local: None });
        }
        let ctx = Ctx {
            root: root.clone(),
            tmp_dir: root.join(".dropsync/tmp"),
            label: "me".into(),
            conflict_copies: true,
            shared: Shared::new(meta),
            ignores: crate::ignores::Ignores::load(&root),
        };
        let entry = |path: &str, bytes: &[u8], state| Entry {
            version: 2,
            md5: md5(bytes),
            size: bytes.len() as u64,
            mtime_ns: 0,
            state,
            path: path.into(),
            strong: None,
        };
        let doc = Document {
            client_id: None,
            extensions: Vec::new(),
            entries: vec![
                entry("same", b"same", EntryState::File),
                entry("pull", b"newer", EntryState::File),
                entry("gone", b"old", EntryState::Deleted),
                entry("sub/both", b"server edit", EntryState::File),
                entry("local-del-remote-same", b"x", EntryState::File),
                entry("remote-only", b"r", EntryState::File),
            ],
        };
        let mut debouncer = Debouncer::new(Duration::from_millis(10));
        let plan = run(&ctx, &mut Notes::default(), &mut debouncer, &doc, Scan::now(&root));

        assert_eq!(plan.requests, ["sub/both", "pull", "remote-only"]);
        assert_eq!(plan.syncs.len(), 3, "{plan:?}");
        let copy = &plan.syncs[0];
        assert!(copy.starts_with("sub/both (conflicted copy me "), "{copy}");
        assert_eq!(std::fs::read(root.join(copy)).unwrap(), b"edited here");
        assert!(!root.join("sub/both").exists(), "moved aside for the server's version");
        assert_eq!(&plan.syncs[1..], ["local-del-remote-same", "mine"]);
        assert!(!root.join("gone").exists(), "deleted on the server, unchanged here");
        let st = ctx.shared.lock();
        assert_eq!(st.record("gone"), ClientRecord { base: None, base_version: 1, local: None });
        assert_eq!(st.record("same").local.map(|l| l.content), Some(content(b"same")));
        // Known to neither the server nor the base: sent whatever it holds,
        // so not hashed here (the upload hashes it as it reads).
        assert_eq!(st.record("mine").local, None);
        drop(st);
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// A reconnection where nothing changed: paths in sync, as recorded,
    /// are left as they are, and nothing is planned.
    #[test]
    fn paths_in_sync_are_left_as_they_are_and_nothing_is_planned() {
        let root = std::env::temp_dir().join(format!("dropsync-initial-same-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("d")).unwrap();
        let names = ["a", "d/b", "d/c"];
        let mut meta = ClientMeta::new([1; 16]);
        for name in names {
            std::fs::write(root.join(name), name).unwrap();
            let base = Some(content(name.as_bytes()));
            meta.records.insert(name.into(), ClientRecord { base, base_version: 0, local: None });
        }
        let ctx = Ctx {
            root: root.clone(),
            tmp_dir: root.join(".dropsync/tmp"),
            label: "me".into(),
            conflict_copies: true,
            shared: Shared::new(meta),
            ignores: crate::ignores::Ignores::load(&root),
        };
        let doc = Document {
            client_id: None,
            extensions: Vec::new(),
            entries: names
                .iter()
                .map(|name| Entry {
                    version: 5,
                    md5: md5(name.as_bytes()),
                    size: name.len() as u64,
                    mtime_ns: 0,
                    state: EntryState::File,
                    path: (*name).into(),
                    strong: None,
                })
                .collect(),
        };
        let mut debouncer = Debouncer::new(Duration::from_millis(10));
        // The first look records the local files.
        assert_eq!(run(&ctx, &mut Notes::default(), &mut debouncer, &doc, Scan::now(&root)), Plan::default());
        let seen: Vec<_> = names.iter().map(|n| ctx.shared.lock().record(n)).collect();
        assert!(seen.iter().all(|r| r.local.is_some()), "{seen:?}");
        let changes = ctx.shared.lock().changes;
        // The next, in sync as recorded: nothing to do, nothing changes.
        assert_eq!(run(&ctx, &mut Notes::default(), &mut debouncer, &doc, Scan::now(&root)), Plan::default());
        for (name, before) in names.iter().zip(seen) {
            assert_eq!(ctx.shared.lock().record(name), before, "{name}");
        }
        assert_eq!(ctx.shared.lock().changes, changes);
        assert!(debouncer.is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn server_side_skips_bad_names_and_unknown_states_and_keeps_the_last_line() {
        let entry = |path: &str, state, version| Entry { version, md5: [1; 16], size: 1, mtime_ns: 0, state, path: path.into(), strong: None };
        let doc = Document {
            client_id: None,
            extensions: Vec::new(),
            entries: vec![
                entry("a", EntryState::File, 1),
                entry("../evil", EntryState::File, 2),
                entry(".dropsync/metadata", EntryState::File, 3),
                entry("b", EntryState::Other('Q'), 4),
                entry("a", EntryState::Deleted, 5),
            ],
        };
        let s = server_side(&doc);
        assert_eq!(s.len(), 1);
        assert_eq!(s["a"].0, ServerSide::Tombstone);
        assert_eq!(s["a"].1, 5);
    }
}
