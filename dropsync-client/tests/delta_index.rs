//! [ext] META-DATA since a version (issue 19, B8), end to end: a client
//! that comes back is sent only what changed while it was away, and still
//! ends identical to the others; one whose saved state is not the listing
//! the server remembers (a folder restored from a backup) is sent every
//! path instead.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::Path;

use common::{conflict_copies, converge, files, show, Net};
use dropsync_testkit::{tree, wait_until, write_file, DEFAULT_DEADLINE};

/// The number of server entries the client's last reconciliation read
/// (its log line "reconciled N local files with M server entries").
fn last_server_entries(log: &str) -> Option<usize> {
    let line = log.lines().rev().find(|l| l.contains("] reconciled "))?;
    let words: Vec<&str> = line.split(' ').collect();
    let at = words.iter().position(|w| *w == "server")?;
    words.get(at.checked_sub(1)?)?.parse().ok()
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn a_client_that_comes_back_is_sent_only_what_changed_and_ends_identical() {
    let net = Net::new("delta-index");
    let (a, b) = (net.folder("a"), net.folder("b"));
    for i in 0..30 {
        write_file(&a, &format!("d{}/f{i}.txt", i % 3), format!("file {i}").as_bytes());
    }
    let mut ca = net.client("a", &["--checkpoint-secs", "0"]);
    let cb = net.client("b", &[]);
    converge(&[&a, &b], &[&ca, &cb], "the first sync", |t| t.len() == 30);
    // a acknowledged the listing it reconciled with (empty: the server had
    // nothing yet), then, in sync, a listing of what changed since that it
    // had not received itself (nothing: every change was its own upload).
    let acks = |log: &str| log.lines().filter(|l| l.contains("index/") && l.ends_with(": Committed")).count();
    assert!(wait_until(DEFAULT_DEADLINE, || acks(&ca.log()) >= 3), "{}", ca.log());
    assert!(ca.log().contains("/more: Committed"), "{}", ca.log());
    ca.terminate();

    // While a is away: b changes three files, and a's own folder changes.
    write_file(&b, "d0/f0.txt", b"edited on b");
    fs::remove_file(b.join("d1/f1.txt")).unwrap();
    write_file(&b, "new-on-b.txt", b"made on b");
    write_file(&a, "d2/f2.txt", b"edited on a while away");
    fs::remove_file(a.join("d0/f3.txt")).unwrap();
    write_file(&a, "new-on-a.txt", b"made on a while away");
    assert!(
        wait_until(DEFAULT_DEADLINE, || cb.log().matches("deleted d1/f1.txt on the server").count() == 1
            && cb.log().contains("uploaded new-on-b.txt")
            && cb.log().contains("uploaded d0/f0.txt")),
        "{}",
        cb.log()
    );

    let ca = net.client("a", &[]);
    let t = converge(&[&a, &b], &[&ca, &cb], "a's return", |t| {
        t.len() == 30 && t.get("new-on-a.txt").is_some() && t.get("d0/f0.txt").is_some_and(|v| v == b"edited on b")
    });
    assert_eq!(t["d2/f2.txt"], b"edited on a while away");
    assert!(!t.contains_key("d1/f1.txt") && !t.contains_key("d0/f3.txt"), "{:?}", show(&t));
    assert!(conflict_copies(&t).is_empty(), "{:?}", show(&t));
    // The server listed a's return only what changed since: b's three.
    assert!(net.server.log().contains("META-DATA of the changes since version"), "{}", net.server.log());
    assert_eq!(last_server_entries(&ca.log()), Some(3), "{}", ca.log());
}

#[test]
fn a_folder_restored_from_a_backup_is_sent_every_path_instead() {
    let net = Net::new("delta-restore");
    let (a, b) = (net.folder("a"), net.folder("b"));
    let backup = net.tmp.join("backup");
    write_file(&a, "kept.txt", b"v1");
    write_file(&a, "later.txt", b"v1");
    net.once("a");
    fs::create_dir_all(&backup).unwrap();
    copy_tree(&a, &backup);

    // Later, b edits a file and a takes it, acknowledging a newer listing
    // than the backup's.
    net.once("b");
    write_file(&b, "later.txt", b"v2 from b");
    net.once("b");
    net.once("a");
    assert_eq!(tree(&a), files(&[("kept.txt", "v1"), ("later.txt", "v2 from b")]));

    // a's folder goes back to the backup: the server still has a's newer
    // listing, which the backup never saw, so a delta from it would miss
    // b's edit.
    fs::remove_dir_all(&a).unwrap();
    fs::create_dir_all(&a).unwrap();
    copy_tree(&backup, &a);
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    converge(&[&a, &b], &[&ca, &cb], "the restored folder", |t| {
        t == &files(&[("kept.txt", "v1"), ("later.txt", "v2 from b")])
    });
    let log = ca.log();
    assert!(log.contains("reconnecting for all of it"), "{log}");
    assert!(net.server.log().contains("will be sent every path next time"), "{}", net.server.log());
}
