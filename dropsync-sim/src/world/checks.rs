//! When a run has settled, and the invariants then (see the module above).
//! With several instances the server's files are the shared database's
//! table with contents from the bucket, and three checks are added: every
//! instance's view equals the database, no advisory lock is left, and the
//! bucket holds exactly what lines name (plus candidates the collector
//! will take).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use dropsync_proto::metadata::{Entry, EntryState};
use dropsync_soak::model::{Tree, Version};

use super::{World, SETTLE_LIMIT};
use crate::db::{self, Db};
use crate::instances::Instances;

impl World {
    pub(super) fn settled(&self) -> bool {
        self.servers_back.iter().all(Option::is_none)
            && self.disk_back.iter().all(Option::is_none)
            && self.clients_back.iter().all(Option::is_none)
            && self.servers.iter().all(|s| s.as_ref().is_some_and(|s| s.is_idle()))
            && self.clients.iter().all(|c| c.is_idle())
            && self.net.is_quiet()
            && self.caught_up()
    }

    /// With several instances: each has caught up since the last commit,
    /// so has applied it and reported it for its clients (its next
    /// catch-up is at most a second away, so this comes).
    fn caught_up(&self) -> bool {
        let Some(m) = &self.multi else { return true };
        let counter = db::lock(&m.db).counter();
        let cursor = |s: &crate::server::Server| s.shared().map(|h| crate::shared::lock(&h.view).cursor());
        let applied = self.servers.iter().flatten().all(|s| cursor(s) == Some(counter));
        applied && (0..m.len()).all(|k| m.is_caught_up(k))
    }

    pub(super) fn unsettled(&self) -> Vec<String> {
        let mut out = vec![format!("not settled {SETTLE_LIMIT:?} after the workload ended")];
        for s in self.servers.iter().flatten() {
            out.extend(s.backlog());
        }
        out.extend(self.clients.iter().filter(|c| !c.is_idle()).map(|c| c.backlog()));
        if !self.caught_up() {
            out.push("an instance has not caught up with the database".into());
        }
        out
    }

    /// The server's live files: path → content.
    pub(super) fn live_files(&self) -> Option<BTreeMap<String, Vec<u8>>> {
        match &self.multi {
            Some(m) => {
                let db = db::lock(&m.db);
                let bucket = m.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let live = db.entries().values().filter(|e| e.state == EntryState::File);
                let bytes = |e: &Entry| e.strong.and_then(|k| bucket.get(&k)).map(|b| b.to_vec()).unwrap_or_default();
                Some(live.map(|e| (e.path.clone(), bytes(e))).collect())
            }
            None => self.servers[0].as_ref().map(|s| s.files()),
        }
    }

    /// The invariants of a settled run.
    pub(super) fn check(&mut self) -> Result<(), Vec<String>> {
        let mut known = Vec::new();
        let result = self.check_into(&mut known);
        self.known = known;
        result
    }

    fn check_into(&self, known: &mut Vec<String>) -> Result<(), Vec<String>> {
        if let Some(k) = self.servers.iter().position(Option::is_none) {
            return Err(vec![format!("no {} at the end", self.name(k))]);
        }
        let Some(files) = self.live_files() else { return Err(vec!["no server at the end".into()]) };
        let tree: Tree = files.iter().map(|(p, b)| (p.clone(), Version::of(b))).collect();
        let mut out = Vec::new();
        for c in &self.clients {
            if c.fs != files {
                let mut diff = String::new();
                let ctree: Tree = c.fs.iter().map(|(p, b)| (p.clone(), Version::of(b))).collect();
                for p in tree.keys().chain(ctree.keys()).collect::<BTreeSet<_>>() {
                    let (s, l) = (tree.get(p).copied(), ctree.get(p).copied());
                    if s != l {
                        let _ =
                            write!(diff, " {p:?}: server {} client {};", self.hist.describe(s), self.hist.describe(l));
                    }
                }
                out.push(format!("{} differs from the server:{diff}", c.backlog().split(':').next().unwrap_or("?")));
            }
        }
        out.extend(self.hist.lost_work(&tree));
        for r in self.hist.resurrected(&tree) {
            let gone = &self.hist.events[r.gone];
            let replay = self.replays.iter().any(|(_, p, v)| *p == r.path && *v == Some(r.content));
            let overtaken = self.resent.contains(&(gone.client, r.path.clone()));
            match (replay, overtaken) {
                (false, false) => out.push(self.hist.show_resurrection(&r)),
                (true, _) => known.push(format!("replayed upload: {:?}", r.path)),
                (_, true) => known.push(format!("overtaken delivery: {:?}", r.path)),
            }
        }
        out.extend(self.hist.torn(&tree));
        for server in self.servers.iter().flatten() {
            let on = if self.multi.is_some() { server.name().to_owned() } else { "the server".to_owned() };
            if server.temps_open() > 0 {
                out.push(format!("{} temp file(s) left on {on}", server.temps_open()));
            }
            let versions: BTreeMap<String, u64> = server.versions();
            for p in versions.keys() {
                if let Some(h) = server.lock_holder(p) {
                    let alive = server.has_session(h);
                    let at = if self.multi.is_some() { format!(" on {on}") } else { String::new() };
                    out.push(format!("{p:?} still locked by session {h}{at} (alive: {alive})"));
                }
            }
        }
        match &self.multi {
            None => self.check_own_disk(&mut out),
            Some(m) => self.check_shared(m, &mut out, known),
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }

    /// The one server on its own disk: every version committed is still
    /// known, and no content is stored that no line names.
    fn check_own_disk(&self, out: &mut Vec<String>) {
        let Some(server) = &self.servers[0] else { return };
        let lost: Vec<&(String, u64)> = self.versions.iter().filter(|(p, v)| !server.keeps(p, *v)).collect();
        if !lost.is_empty() {
            out.push(format!("{} committed version(s) neither current nor in the history: {lost:?}", lost.len()));
        }
        let leaked = self.disk.blobs.unreferenced();
        if leaked > 0 {
            out.push(format!("{leaked} stored content(s) that no catalog line names"));
        }
    }

    /// Several instances: the database keeps every version committed; each
    /// instance's view equals it; no advisory lock is left; the bucket has
    /// every content a line names, and nothing else that the collector will
    /// not take.
    fn check_shared(&self, m: &Instances, out: &mut Vec<String>, known: &mut Vec<String>) {
        let db = db::lock(&m.db);
        let keeps = |p: &str, v: u64| {
            db.entries().get(p).is_some_and(|e| e.version == v)
                || db.history().any(|k| k.entry.path == p && k.entry.version == v)
        };
        let lost: Vec<&(String, u64)> = self.versions.iter().filter(|(p, v)| !keeps(p, *v)).collect();
        if !lost.is_empty() {
            out.push(format!("{} committed version(s) neither current nor in the history: {lost:?}", lost.len()));
        }
        for server in self.servers.iter().flatten() {
            if let Some(h) = server.shared() {
                out.extend(view_differs(server.name(), &crate::shared::lock(&h.view), &db));
            }
        }
        if db.advisory_held() > 0 {
            out.push(format!("{} advisory lock(s) still held in the database", db.advisory_held()));
        }
        let bucket = m.bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let named: Vec<&Entry> = db
            .entries()
            .values()
            .filter(|e| e.state == EntryState::File)
            .chain(db.history().filter(|k| k.is_file()).map(|k| &k.entry))
            .collect();
        for e in named {
            if e.strong.is_none_or(|k| !bucket.contains_key(&k)) {
                out.push(format!("the content of {:?} version {} is not in the bucket", e.path, e.version));
            }
        }
        for key in bucket.keys() {
            if db.names(key) || db.candidates().contains_key(key) {
                continue;
            }
            let short: String = key.iter().take(4).map(|b| format!("{b:02x}")).collect();
            if self.cut_off.contains(key) {
                known.push(format!("content cut off: {short}…"));
            } else {
                out.push(format!(
                    "object {short}… in the bucket: no line names it and no candidate row will collect it"
                ));
            }
        }
    }
}

/// How instance `name`'s view differs from the database, if it does.
fn view_differs(name: &str, view: &dropsync_core::shared_catalog::SharedView, db: &Db) -> Vec<String> {
    let mut out = Vec::new();
    if view.cursor() != db.counter() {
        out.push(format!("{name} has applied changes up to version {}, the database {}", view.cursor(), db.counter()));
    }
    let table: BTreeMap<String, Entry> = view.table().entries().map(|e| (e.path.clone(), e.clone())).collect();
    if &table != db.entries() {
        let paths: BTreeSet<&String> = table.keys().chain(db.entries().keys()).collect();
        let differ: Vec<&String> = paths.into_iter().filter(|p| table.get(*p) != db.entries().get(*p)).collect();
        out.push(format!("{name}'s table differs from the database's at {differ:?}"));
    }
    let mut paths: BTreeSet<String> = db.history().map(|k| k.entry.path.clone()).collect();
    paths.extend(table.keys().cloned());
    for p in paths {
        let in_db: Vec<_> = db.history().filter(|k| k.entry.path == p).cloned().collect();
        if view.history(&p) != in_db {
            out.push(format!("{name}'s history of {p:?} differs from the database's"));
        }
    }
    out
}
