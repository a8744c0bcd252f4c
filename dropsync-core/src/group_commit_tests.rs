//! Group commit ([`Library::commit_batch`]): the same rules and outcomes as
//! committing the changes one by one, one durable write for all of them,
//! and all or nothing when that write fails.

use std::sync::atomic::{AtomicBool, Ordering};

use proptest::prelude::*;

use super::*;
use crate::library::Pending;

/// Storage whose writes fail while `broken` is set (a full disk).
#[derive(Default)]
struct Breakable {
    inner: MemStorage,
    broken: AtomicBool,
    appends: std::sync::atomic::AtomicUsize,
}

impl Storage for Arc<Breakable> {
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.read(name)
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.inner.replace(name, bytes)
    }
    fn append(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.check()?;
        self.appends.fetch_add(1, Ordering::Relaxed);
        self.inner.append(name, bytes)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
}

impl Breakable {
    fn check(&self) -> std::io::Result<()> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("disk full"));
        }
        Ok(())
    }
}

type BreakableLibrary = Library<MemCatalog<Arc<Breakable>>, Arc<MemBlobs>>;

fn breakable() -> (BreakableLibrary, Arc<Breakable>) {
    let storage = Arc::new(Breakable::default());
    let catalog = MemCatalog::open(Arc::clone(&storage)).unwrap();
    let lib = Library::new(catalog, Arc::new(MemBlobs::default()), Arc::new(MemLockTable::new()), true);
    (lib, storage)
}

fn up(path: &str, bytes: &[u8], tag: u8) -> Pending<MemTemp> {
    Pending::Upload { path: path.into(), temp: temp(bytes, tag), md5: md5(bytes), size: bytes.len() as u64 }
}

fn del(path: &str) -> Pending<MemTemp> {
    Pending::Delete { path: path.into() }
}

#[test]
fn a_batch_shares_one_durable_write_and_survives_a_restart() {
    let (lib, storage) = breakable();
    let seen = Mutex::new(SeenVersions::new(0));
    let first = lib.commit_batch(vec![up("a", b"1", 1), up("b", b"2", 2)], &seen, "x", NOW);
    assert!(first.iter().all(|o| matches!(o, Ok(Committed::New { .. }))), "{first:?}");
    let before = storage.appends.load(Ordering::Relaxed);
    // Two changes replacing versions, a delete, an identical upload, a
    // delete of nothing: the history and the journal, one append each.
    let batch = vec![up("a", b"1'", 3), del("b"), up("c", b"3", 4), up("c", b"3", 4), del("nothing")];
    let outcomes = lib.commit_batch(batch, &seen, "x", NOW);
    assert_eq!(storage.appends.load(Ordering::Relaxed) - before, 2, "one history and one journal write");
    assert!(matches!(outcomes[0], Ok(Committed::New { .. })));
    assert!(matches!(outcomes[1], Ok(Committed::New { .. })));
    assert!(matches!(outcomes[2], Ok(Committed::New { .. })));
    assert!(matches!(outcomes[3], Ok(Committed::Unchanged)), "the same content again changes nothing");
    assert!(matches!(outcomes[4], Ok(Committed::NoFile)));
    // What a restart reads back is what the table holds.
    let reopened = MemCatalog::open(Arc::clone(&storage)).unwrap();
    assert_eq!(reopened.snapshot(None), lib.catalog().snapshot(None));
    assert_eq!(reopened.history("a"), lib.catalog().history("a"));
    assert_eq!(reopened.history("b").len(), 1, "the deleted version is kept");
}

#[test]
fn a_batch_that_cannot_be_made_durable_is_undone_whole_and_its_versions_are_not_handed_out_again() {
    let (lib, storage) = breakable();
    let seen = Mutex::new(SeenVersions::new(0));
    let made = lib.commit_batch(vec![up("a", b"1", 1)], &seen, "x", NOW);
    let Ok(Committed::New { entry: a1, .. }) = &made[0] else { panic!("{made:?}") };
    let before = lib.catalog().snapshot(None);
    storage.broken.store(true, Ordering::Relaxed);
    let other = Mutex::new(SeenVersions::new(0));
    // `other` never saw a1: a conflict copy is made first, and undone too.
    let outcomes = lib.commit_batch(vec![up("a", b"2", 2), up("new", b"n", 3)], &other, "y", NOW);
    assert!(outcomes.iter().all(Result::is_err), "{outcomes:?}");
    assert_eq!(lib.catalog().get("a").as_ref(), Some(a1));
    assert_eq!(lib.catalog().get("new"), None);
    assert_eq!(lib.catalog().len(), 1, "no conflict copy is left");
    assert_eq!(lib.catalog().snapshot(None).0, before.0);
    assert!(lib.catalog().history("a").is_empty());
    assert_eq!(other.lock().unwrap().recorded("a"), None, "what the session saw is put back");
    assert_eq!(other.lock().unwrap().recorded("new"), None);
    storage.broken.store(false, Ordering::Relaxed);
    let again = lib.commit_batch(vec![up("new", b"n", 3)], &other, "y", NOW);
    let Ok(Committed::New { entry, .. }) = &again[0] else { panic!("{again:?}") };
    assert!(entry.version > a1.version + 2, "versions of the undone batch stay used");
    let reopened = MemCatalog::open(Arc::clone(&storage)).unwrap();
    assert_eq!(reopened.snapshot(None), lib.catalog().snapshot(None));
}

/// A change of the property test: an upload of one of a few contents, a
/// delete, or a copy, to one of a few paths, by one of two sessions.
#[derive(Debug, Clone)]
enum Op {
    Up(u8, u8),
    Del(u8),
    Copy(u8, u8),
}

fn op() -> impl Strategy<Value = (Op, bool)> {
    let path = 0u8..4;
    let change = prop_oneof![
        (path.clone(), 0u8..3).prop_map(|(p, c)| Op::Up(p, c)),
        path.clone().prop_map(Op::Del),
        (path.clone(), path).prop_map(|(from, to)| Op::Copy(from, to)),
    ];
    (change, any::<bool>())
}

fn pending(op: &Op) -> Pending<MemTemp> {
    let content = |c: u8| [b'c', c];
    match *op {
        Op::Up(p, c) => up(&format!("p{p}"), &content(c), c + 1),
        Op::Del(p) => del(&format!("p{p}")),
        Op::Copy(from, to) => {
            let from = format!("p{from}");
            // The client names the content it has: say, the first one.
            Pending::Copy { path: format!("p{to}"), from, md5: md5(&content(0)) }
        }
    }
}

/// `op` committed by itself, the way a change is without group commit.
fn single(lib: &BreakableLibrary, op: &Op, seen: &Mutex<SeenVersions>) -> Result<Committed, CoreError> {
    match pending(op) {
        Pending::Upload { path, temp, md5, size } => lib.commit_upload(&path, temp, md5, size, seen, "x", NOW),
        Pending::Delete { path } => lib.delete(&path, 1, seen, NOW),
        Pending::Copy { path, from, md5 } => lib.commit_copy(&path, &from, md5, seen, "x", NOW),
    }
}

proptest! {
    /// However one session's changes are cut into batches, the outcomes,
    /// the table, the history and what a restart reads are the ones of
    /// committing them one at a time.
    #[test]
    fn batches_commit_what_single_commits_do(ops in proptest::collection::vec(op(), 1..40), cuts in proptest::collection::vec(any::<bool>(), 40)) {
        let (one, one_storage) = breakable();
        let (many, many_storage) = breakable();
        let sessions = [Mutex::new(SeenVersions::new(0)), Mutex::new(SeenVersions::new(0))];
        let batched_sessions = [Mutex::new(SeenVersions::new(0)), Mutex::new(SeenVersions::new(0))];
        let mut singles = Vec::new();
        for (op, second) in &ops {
            let s = &sessions[usize::from(*second)];
            singles.push(format!("{:?}", single(&one, op, s)));
        }
        // Batches of consecutive changes of one session.
        let mut batched = Vec::new();
        let mut i = 0;
        while i < ops.len() {
            let who = ops[i].1;
            let mut batch = vec![pending(&ops[i].0)];
            i += 1;
            while i < ops.len() && ops[i].1 == who && !cuts[i % cuts.len()] {
                batch.push(pending(&ops[i].0));
                i += 1;
            }
            let s = &batched_sessions[usize::from(who)];
            batched.extend(many.commit_batch(batch, s, "x", NOW).into_iter().map(|o| format!("{o:?}")));
        }
        prop_assert_eq!(batched, singles);
        prop_assert_eq!(many.catalog().snapshot(None), one.catalog().snapshot(None));
        for p in 0..4 {
            let path = format!("p{p}");
            prop_assert_eq!(many.catalog().history(&path), one.catalog().history(&path));
        }
        let reopened = MemCatalog::open(Arc::clone(&many_storage)).unwrap();
        prop_assert_eq!(reopened.snapshot(None), one.catalog().snapshot(None));
        let single_reopened = MemCatalog::open(Arc::clone(&one_storage)).unwrap();
        prop_assert_eq!(single_reopened.snapshot(None), one.catalog().snapshot(None));
    }
}
