//! Reconciliation on connect (PROTOCOL.md section 7): scan the folder,
//! compare server (S), base (B) and local (L) content for every path with
//! the core's pure `reconcile()`, carry out the local part of the plan
//! (record, delete locally, keep conflict copies) and hand back the network
//! part (REQUESTs, and paths to upload or DELETE).
//!
//! It runs while the receive thread waits (it has answered the META-DATA
//! and holds off reading further), so no incoming file changes the folder
//! under the scan.

use std::collections::{HashMap, HashSet};
use std::thread;
use std::time::{Instant, SystemTime};

use dropsync_core::meta_client::{ClientMeta, ClientRecord, LocalSeen};
use dropsync_core::reconcile::{effective_base, reconcile, Action, Content, Planned, ServerSide};
use dropsync_proto::metadata::{Document, Entry, EntryState};
use dropsync_proto::name::validate_name;

use dropsync_core::debounce::Debouncer;
use crate::folder::{delete_local, keep_if_unaccepted, Before};
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
    /// [ext] The server's lines of the paths where it differs from the
    /// base once the local part is carried out (what a later delta is read
    /// against: `saved_index`); only for a META-DATA with a listing line.
    pub differing: Vec<Entry>,
}

/// The server's side of each path, from its META-DATA, its version, and
/// the content its line names (a tombstone's is the content it deleted).
pub fn server_side(doc: &Document) -> HashMap<&str, (ServerSide, u64, Content)> {
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

/// [ext] The server's side of a path a delta does not list: as it was at
/// the listing the client saved, its base `b` (of version `version`).
fn as_it_was(b: Content, version: u64) -> (ServerSide, u64, Content) {
    (ServerSide::File(b), version, b)
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
///
/// [ext] A `doc` that lists only what changed since a version (with the
/// lines saved of where the server differed then: `saved_index`) leaves
/// every other path as it was on the server then: as its base says.
pub fn run(ctx: &Ctx, notes: &mut Notes, debouncer: &mut Debouncer<String>, doc: &Document, scan: Scan) -> Plan {
    let started = Instant::now();
    let delta = doc.listing.is_some_and(|l| l.since.is_some());
    // The bases of the records the walk did not find, as the server's side
    // of a delta (borrowed by `server` below, so declared before it: the
    // late initialisation clippy flags is what the borrow needs).
    #[allow(clippy::needless_late_init)]
    let unlisted_unwalked: Vec<(String, Content, u64)>;
    let mut server = server_side(doc);
    let server_entries = server.len();

    // L: every file now, hashed only when its stat changed, and only when
    // its content matters: a path neither the server nor the base knows is
    // uploaded whatever it holds (the upload hashes it as it goes). The
    // walk stats each file as it lists it; it may have been made while the
    // META-DATA was on its way (the watcher reports what changed since).
    let now = scan.began;
    let names = scan.files(notes);
    let looks = first_looks(ctx, &names, &server, delta, now);
    let mut local_seen: HashMap<&str, LocalSeen> = HashMap::new();
    // The paths in sync, as recorded, are taken out of `server` (what is
    // left of it is what needs a look), and only counted: the set of them
    // is made only when a pass over the records needs it (not on a
    // reconnection where nothing changed).
    let mut same_count = 0usize;
    let mut also_same: Vec<&str> = Vec::new();
    let mut unsettled: HashSet<&str> = HashSet::new();
    // New files, by their index in `names` (moved out at the end, not
    // copied: an initial sync of a million files holds no second copy of
    // their names); those with a record, by name.
    let mut fresh: Vec<usize> = Vec::new();
    let mut fresh_set: HashSet<&str> = HashSet::new();
    for (i, ((name, _), look)) in names.iter().zip(&looks).enumerate() {
        let name = name.as_str();
        let record = match *look {
            Look::Ignored => continue,
            Look::Same => {
                server.remove(name);
                same_count += 1;
                continue;
            }
            Look::Fresh { recorded } => {
                fresh.push(i);
                if recorded {
                    fresh_set.insert(name);
                }
                continue;
            }
            Look::Closer => ctx.shared.lock().record(name),
        };
        if let (true, Some(b)) = (delta, record.base) {
            server.entry(name).or_insert(as_it_was(b, record.base_version));
        }
        match read_local(&local_path(&ctx.root, name), record.local, now) {
            Ok(Local::File { seen, .. }) if in_sync(server.get(name), &record, seen) => {
                server.remove(name);
                also_same.push(name);
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
    same_count += also_same.len();
    // Every record in sync (a reconnection where nothing changed), and
    // nothing left of the server's side: the passes over the records below
    // would find nothing. The second half matters when readdir shows a name
    // twice (a rename racing the listing) and so makes up the count: a
    // record the walk did not find (deleted here) is still in `server`.
    let all_same = same_count == ctx.shared.lock().meta.records.len() && server.is_empty();
    let same: HashSet<&str> = if all_same {
        HashSet::new()
    } else {
        let walked_same = names.iter().zip(&looks).filter(|(_, l)| matches!(l, Look::Same)).map(|((n, _), _)| n.as_str());
        walked_same.chain(also_same.iter().copied()).collect()
    };
    unlisted_unwalked = if delta && !all_same {
        let st = ctx.shared.lock();
        st.meta
            .records
            .iter()
            .filter(|(name, _)| !same.contains(name.as_str()) && !server.contains_key(name.as_str()))
            .filter_map(|(name, r)| Some((name.clone(), r.base?, r.base_version)))
            .collect()
    } else {
        Vec::new()
    };
    for (name, b, version) in &unlisted_unwalked {
        server.insert(name.as_str(), as_it_was(*b, *version));
    }

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
    if doc.listing.is_some() {
        plan.differing = differing(ctx, &server);
    }
    // Each new file gets a record once it is sent: the table is grown to
    // that size once here, rather than by doublings that each hold the old
    // table and the new one at once (at a million files, 350 MB at the
    // last one).
    let recordless = fresh.len().saturating_sub(fresh_set.len());
    ctx.shared.lock().meta.records.reserve(recordless);
    let (new_files, known) = (fresh.len(), local.len() + same_count);
    drop((same, looks));
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

/// What the first look at a walked file found.
#[derive(Clone, Copy, Debug)]
enum Look {
    /// Not synced (`ignores.rs`).
    Ignored,
    /// In sync as recorded (the walk's stat is the one recorded, and its
    /// content the base and the server's): nothing to do.
    Same,
    /// Known to neither the server nor the base: uploaded whatever it
    /// holds (the upload hashes it as it goes); `recorded` when it has a
    /// record all the same (content seen here, never accepted).
    Fresh { recorded: bool },
    /// To be looked at closer (its record is looked up again: few are, and
    /// a look is a byte or two, not a record, for each of a million files).
    Closer,
}

/// Fewest walked files worth looking at on more than one thread.
const LOOKS_SIDE_BY_SIDE: usize = 50_000;

/// The first look at each walked file, by its stat and record alone, side
/// by side on each core (up to 4): at a million files, the lookups of
/// their records, each a few misses of the cache, were most of a
/// reconnection's reconciliation (issue 19, B8). [ext] With a `delta`,
/// a path the server's side does not list is on the server as its base.
fn first_looks(
    ctx: &Ctx,
    names: &[(String, Probe)],
    server: &HashMap<&str, (ServerSide, u64, Content)>,
    delta: bool,
    now: SystemTime,
) -> Vec<Look> {
    let st = ctx.shared.lock();
    let records = &st.meta.records;
    let look_at = |part: &[(String, Probe)]| -> Vec<Look> {
        let mut ignores = ctx.ignores.for_walk();
        let look = |(name, probe): &(String, Probe)| {
            if ignores.is_ignored(name) {
                return Look::Ignored;
            }
            let record = records.get(name).copied().unwrap_or_default();
            let side = match server.get(name.as_str()) {
                Some(side) => Some(*side),
                None if delta => record.base.map(|b| as_it_was(b, record.base_version)),
                None => None,
            };
            let seen = match *probe {
                Probe::File(stat) => record.local.filter(|s| seen_is_current(Some(*s), stat, now)),
                _ => None,
            };
            if seen.is_some_and(|seen| in_sync(side.as_ref(), &record, seen)) {
                Look::Same
            } else if record.base.is_none() && side.is_none() {
                Look::Fresh { recorded: record.local.is_some() }
            } else {
                Look::Closer
            }
        };
        part.iter().map(look).collect()
    };
    let threads = thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4);
    if names.len() < LOOKS_SIDE_BY_SIDE || threads == 1 {
        return look_at(names);
    }
    let part_len = names.len().div_ceil(threads);
    thread::scope(|s| {
        let parts: Vec<_> = names
            .chunks(part_len)
            .map(|part| (part, thread::Builder::new().name("look".into()).spawn_scoped(s, move || look_at(part))))
            .collect();
        let mut looks = Vec::with_capacity(names.len());
        for (part, spawned) in parts {
            // A part no thread could be had for, or whose thread failed,
            // is looked at here.
            looks.extend(spawned.ok().and_then(|h| h.join().ok()).unwrap_or_else(|| look_at(part)));
        }
        looks
    })
}

/// [ext] The server's lines of the paths where it differs from the base now
/// (a file that is not the base, a tombstone of a path with one): what the
/// client did not take of the listing.
pub fn differing(ctx: &Ctx, server: &HashMap<&str, (ServerSide, u64, Content)>) -> Vec<Entry> {
    let st = ctx.shared.lock();
    let mut lines: Vec<Entry> = server
        .iter()
        .filter_map(|(name, &(side, version, named))| {
            let base = st.meta.records.get(*name).and_then(|r| r.base);
            let state = match side {
                ServerSide::File(c) if base != Some(c) => EntryState::File,
                ServerSide::Tombstone if base.is_some() => EntryState::Deleted,
                _ => return None,
            };
            let (md5, size) = (named.md5, named.size);
            Some(Entry { version, md5, size, mtime_ns: 0, state, path: (*name).to_owned(), strong: None })
        })
        .collect();
    lines.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    lines
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
    Document { client_id: None, entries, extensions: Vec::new(), listing: None }
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

    /// A server line of `path` holding `bytes`.
    fn line(path: &str, bytes: &[u8], state: EntryState, version: u64) -> Entry {
        Entry { version, md5: md5(bytes), size: bytes.len() as u64, mtime_ns: 0, state, path: path.into(), strong: None }
    }

    /// The context of a client labelled "me" on the folder `root`.
    fn ctx_in(root: &std::path::Path, meta: ClientMeta) -> Ctx {
        Ctx {
            root: root.to_path_buf(),
            tmp_dir: root.join(".dropsync/tmp"),
            label: "me".into(),
            conflict_copies: true,
            shared: Shared::new(meta),
            ignores: crate::ignores::Ignores::load(root),
        }
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
        let ctx = ctx_in(&root, meta);
        let entry = |path: &str, bytes: &[u8], state| line(path, bytes, state, 2);
        let doc = Document {
            client_id: None,
            extensions: Vec::new(),
            listing: None,
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
        let ctx = ctx_in(&root, meta);
        let doc = Document {
            client_id: None,
            extensions: Vec::new(),
            listing: None,
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

    /// [ext] A delta (the saved lines of where the server differed, then
    /// the changes since): a path neither lists is on the server as its
    /// base says, so a local change of it is pushed, a file in sync is left
    /// alone, and only what the server changed is pulled; what still
    /// differs afterwards is handed back to be saved.
    #[test]
    fn a_delta_leaves_every_path_it_does_not_list_as_its_base() {
        let root = std::env::temp_dir().join(format!("dropsync-initial-delta-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut meta = ClientMeta::new([1; 16]);
        for name in ["same", "gone-here", "edited-here", "changed-there", "deleted-there", "pending"] {
            std::fs::write(root.join(name), name).unwrap();
            let base = Some(content(name.as_bytes()));
            meta.records.insert(name.into(), ClientRecord { base, base_version: 3, local: None });
        }
        std::fs::remove_file(root.join("gone-here")).unwrap();
        std::fs::write(root.join("edited-here"), "edited").unwrap();
        std::fs::write(root.join("fresh"), "new here").unwrap();
        let ctx = ctx_in(&root, meta);
        let entry = line;
        let listing = dropsync_proto::index::Listing { store: [4; 16], upto: 9, since: Some(5) };
        let doc = Document {
            entries: vec![
                // Saved: the server's version, never fetched here.
                entry("pending", b"pending on the server", EntryState::File, 4),
                entry("changed-there", b"changed-there", EntryState::File, 3),
                // The changes since version 5.
                entry("changed-there", b"changed on the server", EntryState::File, 7),
                entry("deleted-there", b"deleted-there", EntryState::Deleted, 8),
            ],
            listing: Some(listing),
            ..Document::default()
        };
        let mut debouncer = Debouncer::new(Duration::from_millis(10));
        let plan = run(&ctx, &mut Notes::default(), &mut debouncer, &doc, Scan::now(&root));

        assert_eq!(plan.requests, ["changed-there", "pending"]);
        assert_eq!(plan.syncs, ["gone-here", "edited-here", "fresh"]);
        assert!(!root.join("deleted-there").exists(), "deleted on the server, unchanged here");
        assert_eq!(ctx.shared.lock().record("same").base, Some(content(b"same")), "left as it was");
        let differing: Vec<(&str, u64)> = plan.differing.iter().map(|e| (e.path.as_str(), e.version)).collect();
        assert_eq!(differing, [("changed-there", 7), ("pending", 4)], "what is still to be fetched");

        // Nothing changed since, and the two fetched: nothing to do.
        for (name, bytes) in [("changed-there", &b"changed on the server"[..]), ("pending", b"pending on the server")] {
            std::fs::write(root.join(name), bytes).unwrap();
            ctx.shared.lock().set_base(name, Some(content(bytes)), 9);
        }
        for name in ["gone-here", "edited-here", "fresh"] {
            let _ = std::fs::remove_file(root.join(name));
            ctx.shared.lock().set_base(name, None, 9);
        }
        let plan = run(&ctx, &mut Notes::default(), &mut debouncer, &doc, Scan::now(&root));
        assert_eq!(plan, Plan::default(), "a second look at the same delta finds nothing");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn server_side_skips_bad_names_and_unknown_states_and_keeps_the_last_line() {
        let entry = |path: &str, state, version| Entry { version, md5: [1; 16], size: 1, mtime_ns: 0, state, path: path.into(), strong: None };
        let doc = Document {
            client_id: None,
            extensions: Vec::new(),
            listing: None,
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
