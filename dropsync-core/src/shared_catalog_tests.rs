//! The shared catalog's rules over a database in memory: two views of
//! one database stand for two server instances.

use std::collections::BTreeMap;

use super::*;

/// The tables, as the PostgreSQL catalog keeps them.
#[derive(Default)]
struct TestDb {
    counter: u64,
    entries: BTreeMap<String, Entry>,
    changes: Vec<(u64, String)>,
    history: Vec<(i64, Kept)>,
}

/// A transaction: its writes apply at commit.
struct Tx<'a> {
    db: &'a mut TestDb,
    version: Option<u64>,
    writes: Option<(Option<Kept>, Entry)>,
}

impl CommitTx for Tx<'_> {
    fn lock_row(&mut self, path: &str) -> Result<Option<u64>, CoreError> {
        Ok(self.db.entries.get(path).map(|e| e.version))
    }
    fn next_version(&mut self) -> Result<u64, CoreError> {
        let v = self.db.counter + 1;
        self.version = Some(v);
        Ok(v)
    }
    fn write(&mut self, replaced: Option<&Kept>, entry: &Entry) -> Result<(), CoreError> {
        self.writes = Some((replaced.cloned(), entry.clone()));
        Ok(())
    }
    fn commit(self) -> Result<(), CoreError> {
        let (Some(v), Some((replaced, entry))) = (self.version, self.writes) else { return Ok(()) };
        self.db.counter = v;
        if let Some(k) = replaced {
            let id = self.db.history.len() as i64 + 1;
            self.db.history.push((id, k));
        }
        self.db.changes.push((v, entry.path.clone()));
        self.db.entries.insert(entry.path.clone(), entry);
        Ok(())
    }
}

impl SharedDb for TestDb {
    type Tx<'a> = Tx<'a>;
    fn begin(&mut self) -> Result<Tx<'_>, CoreError> {
        Ok(Tx { db: self, version: None, writes: None })
    }
    fn load(&mut self) -> Result<(u64, Vec<Entry>), CoreError> {
        Ok((self.counter, self.entries.values().cloned().collect()))
    }
    fn changes_since(&mut self, cursor: u64) -> Result<Vec<(u64, Entry)>, CoreError> {
        let rows = self.changes.iter().filter(|(v, _)| *v > cursor);
        Ok(rows.filter_map(|(v, p)| self.entries.get(p).map(|e| (*v, e.clone()))).collect())
    }
    fn history_since(&mut self, id: i64) -> Result<Vec<(i64, Kept)>, CoreError> {
        Ok(self.history.iter().filter(|(i, _)| *i > id).cloned().collect())
    }
}

fn file(n: u8) -> Change {
    Change::File { md5: [n; 16], size: u64::from(n), mtime_ns: i64::from(n), strong: [n; 32] }
}

#[test]
fn versions_come_from_one_counter_whatever_instance_commits() {
    let mut db = TestDb::default();
    let (mut a, mut b) = (SharedView::open(&mut db).unwrap(), SharedView::open(&mut db).unwrap());
    assert_eq!(a.commit(&mut db, "p", file(1)).unwrap().version, 1);
    assert_eq!(b.commit(&mut db, "q", file(2)).unwrap().version, 2);
    assert_eq!(a.commit(&mut db, "r", file(3)).unwrap().version, 3);
    assert_eq!(b.follow(&mut db).unwrap().iter().map(|e| e.version).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(a.follow(&mut db).unwrap().iter().map(|e| e.version).collect::<Vec<_>>(), [2]);
    assert_eq!((a.cursor(), b.cursor()), (3, 3));
}

#[test]
fn a_commit_over_a_line_this_instance_has_not_seen_is_refused_after_catching_up() {
    let mut db = TestDb::default();
    let (mut a, mut b) = (SharedView::open(&mut db).unwrap(), SharedView::open(&mut db).unwrap());
    a.commit(&mut db, "p", file(1)).unwrap();
    assert!(b.commit(&mut db, "p", file(2)).is_err(), "compare-and-set: b never saw version 1");
    assert_eq!(b.get("p").map(|e| e.version), Some(1), "caught up");
    let second = b.commit(&mut db, "p", file(2)).unwrap();
    assert_eq!(second.version, 2);
    assert_eq!(b.history("p").iter().map(|k| k.entry.version).collect::<Vec<_>>(), [1]);
    a.follow(&mut db).unwrap();
    assert_eq!(a.history("p").len(), 1);
}

#[test]
fn the_cursor_does_not_pass_a_version_this_instance_has_not_applied() {
    let mut db = TestDb::default();
    let (mut a, mut b) = (SharedView::open(&mut db).unwrap(), SharedView::open(&mut db).unwrap());
    a.commit(&mut db, "q", file(1)).unwrap();
    b.commit(&mut db, "p", file(2)).unwrap();
    assert_eq!(b.cursor(), 0, "version 1 is not applied at b yet");
    assert_eq!(b.follow(&mut db).unwrap().iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["q"]);
    assert_eq!(b.cursor(), 2);
}

#[test]
fn what_a_refused_commit_caught_up_on_is_followed_too() {
    let mut db = TestDb::default();
    let (mut a, mut b) = (SharedView::open(&mut db).unwrap(), SharedView::open(&mut db).unwrap());
    a.commit(&mut db, "q", file(1)).unwrap();
    a.commit(&mut db, "p", file(2)).unwrap();
    assert!(b.commit(&mut db, "p", file(3)).is_err());
    // b's clients are told of both lines, though b applied them already.
    let followed: Vec<String> = b.follow(&mut db).unwrap().into_iter().map(|e| e.path).collect();
    assert_eq!(followed, ["q", "p"]);
    assert!(b.follow(&mut db).unwrap().is_empty(), "once");
}

#[test]
fn a_snapshot_lists_up_to_the_cursor_not_up_to_a_newer_own_commit() {
    let mut db = TestDb::default();
    let (mut a, mut b) = (SharedView::open(&mut db).unwrap(), SharedView::open(&mut db).unwrap());
    a.commit(&mut db, "q", file(1)).unwrap();
    b.commit(&mut db, "p", file(2)).unwrap();
    // b's text lists p (version 2) but not q (version 1): a client paired
    // now has not seen version 1, whatever b's newest version is.
    let (text, upto) = b.snapshot(None, &|_| false);
    let listed = dropsync_proto::metadata::parse_document(&text).unwrap().entries;
    assert_eq!(listed.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), ["p"]);
    assert_eq!(upto, 0);
    b.follow(&mut db).unwrap();
    assert_eq!(b.snapshot(None, &|_| false).1, 2);
}
