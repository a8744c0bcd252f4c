//! Section 6's rules on an in-memory catalog and content store, one test
//! per rule, named by the rule's words.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use dropsync_proto::md5;
use dropsync_proto::metadata::{Entry, EntryState, Strong};
use dropsync_proto::StatusCode;

use super::*;
use crate::locks::MemLockTable;
use crate::meta_server::MemCatalog;
use crate::storage::{MemStorage, Storage};

/// 2026-12-06 12:34:56 UTC.
const NOW: WallTime = WallTime { unix_ns: 1_796_560_496_000_000_000 };

/// An upload's content in memory, with the strong digest the test gives it
/// (so two contents can share an MD5 and differ in strong digest).
struct MemTemp {
    bytes: Vec<u8>,
    strong: Strong,
}

/// Contents in memory with reference counts.
#[derive(Default)]
struct MemBlobs {
    stored: Mutex<HashMap<Strong, (Vec<u8>, u64)>>,
}

impl MemBlobs {
    fn refs(&self, key: &Strong) -> u64 {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner).get(key).map_or(0, |(_, n)| *n)
    }
}

impl BlobStore for Arc<MemBlobs> {
    type Temp = MemTemp;
    type Reader = Vec<u8>;
    fn temp(&self) -> std::io::Result<MemTemp> {
        Ok(MemTemp { bytes: Vec::new(), strong: [0; 32] })
    }
    fn open(&self, key: &Strong) -> std::io::Result<Vec<u8>> {
        let stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        stored.get(key).map(|(b, _)| b.clone()).ok_or_else(|| std::io::ErrorKind::NotFound.into())
    }
    fn strong_of(&self, temp: &MemTemp) -> Strong {
        temp.strong
    }
    fn install(&self, temp: MemTemp) -> std::io::Result<Strong> {
        self.stored.lock().unwrap_or_else(PoisonError::into_inner).entry(temp.strong).or_insert((temp.bytes, 0));
        Ok(temp.strong)
    }
    fn add_ref(&self, key: &Strong) {
        if let Some((_, n)) = self.stored.lock().unwrap_or_else(PoisonError::into_inner).get_mut(key) {
            *n += 1;
        }
    }
    fn drop_ref(&self, key: &Strong) {
        let mut stored = self.stored.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, n)) = stored.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                stored.remove(key);
            }
        }
    }
}

type TestLibrary = Library<MemCatalog<Arc<MemStorage>>, Arc<MemBlobs>>;

struct Server {
    lib: TestLibrary,
    storage: Arc<MemStorage>,
    blobs: Arc<MemBlobs>,
}

fn server(conflict_copies: bool) -> Server {
    let storage = Arc::new(MemStorage::new());
    let blobs = Arc::new(MemBlobs::default());
    let catalog = MemCatalog::open(Arc::clone(&storage)).unwrap();
    let lib = Library::new(catalog, Arc::clone(&blobs), Arc::new(MemLockTable::new()), conflict_copies);
    Server { lib, storage, blobs }
}

/// A session that was sent the META-DATA at this point.
fn session(lib: &TestLibrary) -> Mutex<SeenVersions> {
    Mutex::new(SeenVersions::new(lib.catalog().snapshot(None).1))
}

fn temp(bytes: &[u8], tag: u8) -> MemTemp {
    MemTemp { bytes: bytes.to_vec(), strong: [tag; 32] }
}

fn upload(s: &Server, path: &str, bytes: &[u8], tag: u8, seen: &Mutex<SeenVersions>, label: &str) -> Committed {
    s.lib.commit_upload(path, temp(bytes, tag), md5(bytes), bytes.len() as u64, seen, label, NOW).unwrap()
}

fn new_entry(c: Committed) -> (Entry, Option<String>) {
    match c {
        Committed::New { entry, conflict } => (entry, conflict),
        other => panic!("expected a new version, got {other:?}"),
    }
}

#[test]
fn an_upload_whose_content_equals_the_current_version_is_answered_ok_and_changes_nothing() {
    let s = server(true);
    let seen = session(&s.lib);
    let (first, _) = new_entry(upload(&s, "f", b"same", 1, &seen, "a"));
    let other = session(&s.lib);
    assert_eq!(upload(&s, "f", b"same", 1, &other, "b"), Committed::Unchanged);
    assert_eq!(s.lib.catalog().get("f"), Some(first.clone()), "no new version");
    // Its identical upload matched: that client has seen this version.
    assert!(other.lock().unwrap().has_received("f", first.version));
}

#[test]
fn content_is_compared_by_a_strong_hash_never_by_md5_alone() {
    let s = server(true);
    let seen = session(&s.lib);
    let (first, _) = new_entry(upload(&s, "f", b"one", 1, &seen, "a"));
    // Same MD5 and size, other strong digest: another content.
    let (second, conflict) = new_entry(upload(&s, "f", b"one", 2, &seen, "a"));
    assert!(second.version > first.version);
    assert_eq!(second.strong, Some([2; 32]));
    assert_eq!(conflict, None, "the uploader had seen the version it overwrote");
}

#[test]
fn on_commit_the_version_is_bumped_and_persisted_before_replying() {
    let s = server(true);
    let seen = session(&s.lib);
    let (a, _) = new_entry(upload(&s, "a", b"1", 1, &seen, "x"));
    let (b, _) = new_entry(upload(&s, "b", b"2", 2, &seen, "x"));
    assert!(b.version > a.version, "one server-wide counter");
    let reopened = MemCatalog::open(Arc::clone(&s.storage)).unwrap();
    assert_eq!(reopened.get("b").as_ref(), Some(&b));
    assert_eq!(s.blobs.refs(&[1; 32]), 1);
    assert_eq!(s.lib.open_content(&b).unwrap(), b"2");
}

#[test]
fn a_stale_change_keeps_what_it_overwrites_as_a_conflict_copy_committed_like_any_new_file() {
    let s = server(true);
    let bob = session(&s.lib);
    let alice = session(&s.lib);
    let (v1, _) = new_entry(upload(&s, "docs/report.txt", b"alice's", 1, &alice, "alice"));
    // Bob never saw v1 (it came after his META-DATA) and overwrites it.
    let (v2, conflict) = new_entry(upload(&s, "docs/report.txt", b"bob's", 2, &bob, "bob"));
    let copy = conflict.expect("the overwritten version is kept");
    assert_eq!(copy, "docs/report (conflicted copy alice 2026-12-06 123456).txt");
    let kept = s.lib.catalog().get(&copy).unwrap();
    assert_eq!((kept.md5, kept.strong, kept.state), (v1.md5, v1.strong, EntryState::File));
    assert!(kept.version > v1.version && v2.version > kept.version, "the copy commits first");
    assert_eq!(s.blobs.refs(&[1; 32]), 2, "the copy holds the old content, and so does the history");
}

#[test]
fn a_version_the_client_has_seen_is_overwritten_without_a_copy() {
    let s = server(true);
    let alice = session(&s.lib);
    new_entry(upload(&s, "f", b"1", 1, &alice, "alice"));
    let bob = session(&s.lib);
    let (_, conflict) = new_entry(upload(&s, "f", b"2", 2, &bob, "bob"));
    assert_eq!(conflict, None, "listed in bob's META-DATA");
    assert_eq!(s.blobs.refs(&[1; 32]), 1, "the overwritten content is kept in the history");
    assert_eq!(s.lib.expire(WallTime { unix_ns: NOW.unix_ns + 1 }, None).unwrap(), 1);
    assert_eq!(s.blobs.refs(&[1; 32]), 0, "and released when retention drops it");
}

#[test]
fn if_the_conflict_copy_name_exists_2_is_added_after_the_date() {
    let s = server(true);
    let a = session(&s.lib);
    let taken = "f (conflicted copy a 2026-12-06 123456)";
    new_entry(upload(&s, taken, b"x", 9, &a, "a"));
    new_entry(upload(&s, "f", b"1", 1, &a, "a"));
    let stale = Mutex::new(SeenVersions::new(0));
    let (_, conflict) = new_entry(upload(&s, "f", b"2", 2, &stale, "b"));
    assert_eq!(conflict.as_deref(), Some("f (conflicted copy a 2026-12-06 123456 2)"));
}

#[test]
fn the_label_is_unknown_when_no_longer_known_after_a_restart() {
    let s = server(true);
    let a = session(&s.lib);
    new_entry(upload(&s, "f", b"1", 1, &a, "a"));
    let catalog = MemCatalog::open(Arc::clone(&s.storage)).unwrap();
    let restarted = Library::new(catalog, Arc::clone(&s.blobs), Arc::new(MemLockTable::new()), true);
    let stale = Mutex::new(SeenVersions::new(0));
    let c = restarted.commit_upload("f", temp(b"2", 2), md5(b"2"), 1, &stale, "b", NOW).unwrap();
    assert_eq!(new_entry(c).1.as_deref(), Some("f (conflicted copy unknown 2026-12-06 123456)"));
}

#[test]
fn a_tombstone_has_no_content_so_overwriting_one_keeps_nothing() {
    let s = server(true);
    let a = session(&s.lib);
    new_entry(upload(&s, "f", b"1", 1, &a, "a"));
    new_entry(s.lib.delete("f", 1, &a, NOW).unwrap());
    let stale = Mutex::new(SeenVersions::new(0));
    assert_eq!(new_entry(upload(&s, "f", b"2", 2, &stale, "b")).1, None);
}

#[test]
fn no_conflict_copies_turns_the_rule_off() {
    let s = server(false);
    let a = session(&s.lib);
    new_entry(upload(&s, "f", b"1", 1, &a, "a"));
    let stale = Mutex::new(SeenVersions::new(0));
    assert_eq!(new_entry(upload(&s, "f", b"2", 2, &stale, "b")).1, None);
    assert_eq!(s.lib.catalog().len(), 1);
}

#[test]
fn delete_f_locked_0x0040_unknown_or_already_a_tombstone_0x0020() {
    let s = server(true);
    let a = session(&s.lib);
    assert_eq!(s.lib.delete("never", 1, &a, NOW).unwrap(), Committed::NoFile);
    new_entry(upload(&s, "f", b"1", 1, &a, "a"));
    assert!(s.lib.locks().try_lock("f", 2));
    assert_eq!(s.lib.delete("f", 1, &a, NOW).unwrap(), Committed::Locked);
    s.lib.locks().release("f", 2);
    let (tomb, _) = new_entry(s.lib.delete("f", 1, &a, NOW).unwrap());
    assert_eq!(tomb.state, EntryState::Deleted);
    assert_eq!(tomb.md5, md5(b"1"), "a tombstone keeps the last version's digest");
    assert_eq!(s.blobs.refs(&[1; 32]), 1, "the deleted version is kept in the history");
    assert_eq!(s.lib.delete("f", 1, &a, NOW).unwrap(), Committed::NoFile);
    assert!(s.lib.locks().holder("f").is_none(), "the delete released its lock");
}

#[test]
fn a_stale_delete_keeps_the_file_it_removes_as_a_conflict_copy() {
    let s = server(true);
    let a = session(&s.lib);
    new_entry(upload(&s, "f.txt", b"1", 1, &a, "ann"));
    let stale = Mutex::new(SeenVersions::new(0));
    let (_, conflict) = new_entry(s.lib.delete("f.txt", 2, &stale, NOW).unwrap());
    assert_eq!(conflict.as_deref(), Some("f (conflicted copy ann 2026-12-06 123456).txt"));
}

#[test]
fn request_f_locked_0x0080_unknown_0x0020_else_0x0001() {
    let s = server(true);
    let a = session(&s.lib);
    assert_eq!(s.lib.request("f"), StatusCode::NO_FILE);
    new_entry(upload(&s, "f", b"1", 1, &a, "a"));
    assert_eq!(s.lib.request("f"), StatusCode::OK);
    assert!(s.lib.locks().try_lock("f", 7));
    assert_eq!(s.lib.request("f"), StatusCode::IN_USE);
    s.lib.locks().release("f", 7);
    new_entry(s.lib.delete("f", 1, &a, NOW).unwrap());
    assert_eq!(s.lib.request("f"), StatusCode::OK, "a tombstone is known: the client is sent a DELETE");
}

#[test]
fn identical_files_share_one_content_until_the_last_goes() {
    let s = server(true);
    let a = session(&s.lib);
    new_entry(upload(&s, "x", b"same", 1, &a, "a"));
    new_entry(upload(&s, "y", b"same", 1, &a, "a"));
    assert_eq!(s.blobs.refs(&[1; 32]), 2);
    new_entry(s.lib.delete("x", 1, &a, NOW).unwrap());
    new_entry(s.lib.delete("y", 1, &a, NOW).unwrap());
    assert_eq!(s.blobs.refs(&[1; 32]), 2, "both deleted versions are kept");
    assert_eq!(s.lib.expire(WallTime { unix_ns: NOW.unix_ns + 1 }, None).unwrap(), 2);
    assert_eq!(s.blobs.refs(&[1; 32]), 0, "the content goes with the last of them");
}

fn at(secs: i64) -> WallTime {
    WallTime { unix_ns: NOW.unix_ns + secs * 1_000_000_000 }
}

#[test]
fn a_version_a_commit_replaced_is_kept_and_restored_as_a_new_version() {
    let s = server(true);
    let a = session(&s.lib);
    let (v1, _) = new_entry(s.lib.commit_upload("f", temp(b"one", 1), md5(b"one"), 3, &a, "a", at(0)).unwrap());
    let (v2, _) = new_entry(s.lib.commit_upload("f", temp(b"two", 2), md5(b"two"), 3, &a, "a", at(10)).unwrap());
    let kept = s.lib.catalog().history("f");
    assert_eq!(kept.len(), 1);
    assert_eq!((kept[0].entry.version, kept[0].replaced_ns), (v1.version, at(10).unix_ns));
    let (v3, _) = new_entry(s.lib.restore("f", v1.version, 9, at(20)).unwrap());
    assert!(v3.version > v2.version);
    assert_eq!((v3.strong, v3.md5), (v1.strong, v1.md5));
    assert_eq!(s.lib.restore("f", v3.version, 9, at(21)).unwrap(), Committed::Unchanged, "it holds that content");
    assert_eq!(s.lib.restore("f", 999, 9, at(21)).unwrap(), Committed::NoFile);
    assert!(s.lib.locks().try_lock("f", 2));
    assert_eq!(s.lib.restore("f", v2.version, 9, at(22)).unwrap(), Committed::Locked);
    // The history survives a restart.
    let reopened = MemCatalog::open(Arc::clone(&s.storage)).unwrap();
    assert_eq!(reopened.history("f").len(), 2);
    assert_eq!(s.blobs.refs(&[1; 32]), 2, "live again, and kept as version 1");
}

#[test]
fn a_folder_is_undeleted_as_it_was_at_a_point_in_time() {
    let s = server(true);
    let a = session(&s.lib);
    for (i, p) in ["d/x", "d/e/y", "other"].iter().enumerate() {
        let b = p.as_bytes();
        new_entry(s.lib.commit_upload(p, temp(b, i as u8 + 1), md5(b), b.len() as u64, &a, "a", at(0)).unwrap());
    }
    // Edited at 10, everything deleted at 20 (rm -rf).
    new_entry(s.lib.commit_upload("d/x", temp(b"x2", 9), md5(b"x2"), 2, &a, "a", at(10)).unwrap());
    for p in ["d/x", "d/e/y", "other"] {
        new_entry(s.lib.delete(p, 1, &a, at(20)).unwrap());
    }
    let Undeleted { back, locked, in_the_way } = s.lib.undelete("d", at(5), 9, at(30)).unwrap();
    assert_eq!((locked, in_the_way.len()), (0, 0));
    let got: Vec<(&str, Option<Strong>)> = back.iter().map(|e| (e.path.as_str(), e.strong)).collect();
    assert_eq!(got, [("d/e/y", Some([2; 32])), ("d/x", Some([1; 32]))], "as at 5: before the edit; not 'other'");
    assert_eq!(s.lib.catalog().get("other").unwrap().state, EntryState::Deleted);
    let again = s.lib.undelete("d", at(5), 9, at(31)).unwrap();
    assert!(again.back.is_empty(), "already as it was");
    // A file made since where a folder of the old ones was: left, named.
    new_entry(s.lib.delete("d/x", 1, &a, at(40)).unwrap());
    new_entry(s.lib.delete("d/e/y", 1, &a, at(40)).unwrap());
    new_entry(s.lib.commit_upload("d/e", temp(b"e", 7), md5(b"e"), 1, &a, "a", at(41)).unwrap());
    let left = s.lib.undelete("d", at(5), 9, at(50)).unwrap();
    assert_eq!(left.in_the_way, ["d/e/y"]);
    assert_eq!(left.back.len(), 1, "d/x comes back; d/e/y does not go beside the file d/e");
}

#[test]
fn retention_keeps_what_was_replaced_within_it() {
    let s = server(true);
    let a = session(&s.lib);
    new_entry(s.lib.commit_upload("f", temp(b"1", 1), md5(b"1"), 1, &a, "a", at(0)).unwrap());
    new_entry(s.lib.commit_upload("f", temp(b"2", 2), md5(b"2"), 1, &a, "a", at(10)).unwrap());
    new_entry(s.lib.commit_upload("f", temp(b"3", 3), md5(b"3"), 1, &a, "a", at(20)).unwrap());
    assert_eq!(s.lib.expire(at(15), None).unwrap(), 1, "only what was replaced before the cutoff");
    assert_eq!(s.blobs.refs(&[1; 32]), 0);
    assert_eq!(s.blobs.refs(&[2; 32]), 1);
    let reopened = MemCatalog::open(Arc::clone(&s.storage)).unwrap();
    assert_eq!(reopened.history("f").len(), 1, "durably");
}

#[test]
fn a_size_budget_drops_the_oldest_kept_versions_beyond_it() {
    let s = server(true);
    let a = session(&s.lib);
    for (i, body) in [&b"11111"[..], b"2222", b"333", b"4"].iter().enumerate() {
        let n = i as u8 + 1;
        new_entry(s.lib.commit_upload("f", temp(body, n), md5(body), body.len() as u64, &a, "a", at(10 * i as i64)).unwrap());
    }
    // Kept: 5 bytes (replaced at 10), 4 (at 20), 3 (at 30); 7 bytes fit.
    assert_eq!(s.lib.expire(at(0), Some(7)).unwrap(), 1, "the oldest version goes");
    assert_eq!(s.blobs.refs(&[1; 32]), 0, "its content with it");
    assert_eq!(s.lib.expire(at(0), Some(7)).unwrap(), 0, "within budget now");
    assert_eq!(s.lib.expire(at(0), Some(6)).unwrap(), 1);
    assert_eq!(s.lib.catalog().history("f").len(), 1);
    assert_eq!(s.blobs.refs(&[2; 32]), 0);
}

#[test]
fn a_replaced_version_is_kept_before_the_commit_that_replaces_it_is_durable() {
    let s = server(true);
    let a = session(&s.lib);
    let (v1, _) = new_entry(s.lib.commit_upload("f", temp(b"1", 1), md5(b"1"), 1, &a, "a", at(0)).unwrap());
    // A crash after the history line and before the journal line: the
    // history keeps version 1 though it is still current.
    let mut line = String::new();
    crate::history::Kept { entry: v1.clone(), replaced_ns: at(5).unix_ns }.render(&mut line);
    s.storage.append(crate::history::HISTORY, line.as_bytes()).unwrap();
    let reopened = MemCatalog::open(Arc::clone(&s.storage)).unwrap();
    assert_eq!(reopened.get("f"), Some(v1));
    assert!(reopened.history("f").is_empty(), "a kept line of the current version is dropped");
    assert_eq!(reopened.contents(), [[1; 32]], "and holds no content: only the live file does");
}

#[test]
fn a_copy_commits_the_content_its_source_holds_without_sending_it() {
    let s = server(true);
    let alice = session(&s.lib);
    let (src, _) = new_entry(upload(&s, "big.bin", b"content", 1, &alice, "alice"));
    let (copy, conflict) = new_entry(s.lib.commit_copy("moved.bin", "big.bin", md5(b"content"), &alice, "alice", NOW).unwrap());
    assert_eq!((copy.strong, copy.md5, copy.size), (src.strong, src.md5, src.size));
    assert!(copy.version > src.version && conflict.is_none());
    assert_eq!(s.blobs.refs(&[1; 32]), 2, "both lines hold the content");
    assert!(alice.lock().unwrap().has_received("moved.bin", copy.version));
    // Again: the path holds that content already.
    assert_eq!(s.lib.commit_copy("moved.bin", "big.bin", md5(b"content"), &alice, "alice", NOW).unwrap(), Committed::Unchanged);
}

#[test]
fn a_copy_names_only_a_version_its_sender_has_seen_and_md5_only_checks_it() {
    let s = server(true);
    let alice = session(&s.lib);
    let bob = session(&s.lib);
    new_entry(upload(&s, "f", b"alice's", 1, &alice, "alice"));
    // Bob never saw alice's version (it came after his META-DATA): even
    // with its MD5 he is not given its content.
    assert_eq!(s.lib.commit_copy("g", "f", md5(b"alice's"), &bob, "bob", NOW).unwrap(), Committed::NoFile);
    // A digest of another version, a missing source, a tombstone: NoFile.
    assert_eq!(s.lib.commit_copy("g", "f", md5(b"other"), &alice, "alice", NOW).unwrap(), Committed::NoFile);
    assert_eq!(s.lib.commit_copy("g", "nothing", md5(b"alice's"), &alice, "alice", NOW).unwrap(), Committed::NoFile);
    new_entry(s.lib.delete("f", 1, &alice, NOW).unwrap());
    assert_eq!(s.lib.commit_copy("g", "f", md5(b"alice's"), &alice, "alice", NOW).unwrap(), Committed::NoFile);
    assert_eq!(s.lib.catalog().get("g"), None, "nothing committed");
}

#[test]
fn a_stale_copy_keeps_what_it_overwrites() {
    let s = server(true);
    let alice = session(&s.lib);
    let bob = session(&s.lib);
    new_entry(upload(&s, "src", b"source", 1, &bob, "bob"));
    new_entry(upload(&s, "dst", b"alice's", 2, &alice, "alice"));
    let (_, conflict) = new_entry(s.lib.commit_copy("dst", "src", md5(b"source"), &bob, "bob", NOW).unwrap());
    assert_eq!(conflict.as_deref(), Some("dst (conflicted copy alice 2026-12-06 123456)"));
}

#[test]
fn a_copy_remembers_its_source_for_deliveries() {
    let s = server(true);
    let alice = session(&s.lib);
    let (src, _) = new_entry(upload(&s, "a", b"content", 1, &alice, "alice"));
    let (copy, _) = new_entry(s.lib.commit_copy("b", "a", md5(b"content"), &alice, "alice", NOW).unwrap());
    let origin = s.lib.copied_from("b", copy.version).unwrap();
    assert_eq!((origin.from.as_str(), origin.from_version), ("a", src.version));
    assert_eq!(s.lib.copied_from("a", src.version), None, "an upload is no copy");
}

/// Storage whose appends fail once `left` more have been made.
struct FailsAfter {
    inner: MemStorage,
    left: Mutex<Option<usize>>,
}

impl Storage for FailsAfter {
    fn read(&self, name: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.inner.read(name)
    }
    fn replace(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        self.inner.replace(name, bytes)
    }
    fn append(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        match &mut *self.left.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(0) => return Err(std::io::Error::other("refused (as another instance's commit would be)")),
            Some(n) => *n -= 1,
            None => {}
        }
        self.inner.append(name, bytes)
    }
    fn remove(&self, name: &str) -> std::io::Result<()> {
        self.inner.remove(name)
    }
}

#[test]
fn a_conflict_copy_whose_change_then_fails_to_commit_is_followed_all_the_same() {
    let storage = Arc::new(FailsAfter { inner: MemStorage::new(), left: Mutex::new(None) });
    let catalog = MemCatalog::open(Arc::clone(&storage)).unwrap();
    let lib = Library::new(catalog, Arc::new(MemBlobs::default()), Arc::new(MemLockTable::new()), true);
    let alice = Mutex::new(SeenVersions::new(0));
    lib.commit_upload("f", temp(b"1", 1), md5(b"1"), 1, &alice, "alice", NOW).unwrap();
    // Bob never saw version 1: the copy commits (one append), his change
    // does not (as when another instance committed "f" first).
    *storage.left.lock().unwrap() = Some(1);
    let bob = Mutex::new(SeenVersions::new(0));
    assert!(lib.commit_upload("f", temp(b"2", 2), md5(b"2"), 1, &bob, "bob", NOW).is_err());
    let copy = "f (conflicted copy alice 2026-12-06 123456)";
    assert!(lib.catalog().get(copy).is_some(), "the copy is committed");
    // Nobody queued it: the next follow returns it, for every client.
    let followed: Vec<String> = lib.follow().unwrap().into_iter().map(|e| e.path).collect();
    assert_eq!(followed, [copy]);
    assert!(lib.follow().unwrap().is_empty(), "once");
}

#[test]
fn an_upload_whose_conflict_copy_fails_to_commit_releases_its_content() {
    let storage = Arc::new(FailsAfter { inner: MemStorage::new(), left: Mutex::new(None) });
    let catalog = MemCatalog::open(Arc::clone(&storage)).unwrap();
    let blobs = Arc::new(MemBlobs::default());
    let lib = Library::new(catalog, Arc::clone(&blobs), Arc::new(MemLockTable::new()), true);
    let alice = Mutex::new(SeenVersions::new(0));
    lib.commit_upload("f", temp(b"1", 1), md5(b"1"), 1, &alice, "alice", NOW).unwrap();
    // The copy's commit fails (with a shared catalog: another instance
    // committed a copy of that name first).
    *storage.left.lock().unwrap() = Some(0);
    let bob = Mutex::new(SeenVersions::new(0));
    assert!(lib.commit_upload("f", temp(b"2", 2), md5(b"2"), 1, &bob, "bob", NOW).is_err());
    let stored = blobs.stored.lock().unwrap();
    assert!(!stored.contains_key(&[2; 32]), "bob's content was installed, then released");
    assert_eq!(stored.get(&[1; 32]).map(|(_, n)| *n), Some(1), "alice's is still referred to once");
}

#[path = "group_commit_tests.rs"]
mod group_commit;
