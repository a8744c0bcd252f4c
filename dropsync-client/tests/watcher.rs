//! The file watcher watches each folder on its own (not notify's recursive
//! mode, which stats every file at start): a folder that appears later,
//! made here, received, or moved, is watched too. The periodic rescan is
//! put off for an hour, so only the watcher can see these changes.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{converge, Net, CHUNK};
use dropsync_testkit::{write_file, ClientProc};

/// A client of `net` on folder `name` that never rescans within a test.
fn watch_only(net: &Net, name: &str) -> ClientProc {
    ClientProc::start(&net.server, &net.folder(name), CHUNK, &["--label", name, "--rescan-secs", "3600"])
}

#[test]
fn folders_made_received_and_moved_later_are_watched() {
    let net = Net::new("watcher");
    let (a, b) = (net.folder("a"), net.folder("b"));
    write_file(&a, "old/kept.txt", b"there at start");
    let ca = watch_only(&net, "a");
    let cb = watch_only(&net, "b");
    let (all, procs) = ([a.as_path(), b.as_path()], [&ca, &cb]);
    converge(&all, &procs, "the first sync", |t| t.contains_key("old/kept.txt"));

    // A folder there at start.
    write_file(&a, "old/kept.txt", b"edited");
    converge(&all, &procs, "an edit in a folder there at start", |t| t["old/kept.txt"] == b"edited");

    // Folders made since, three deep, then written to again.
    write_file(&a, "n1/n2/n3/f.txt", b"one");
    converge(&all, &procs, "new folders", |t| t.contains_key("n1/n2/n3/f.txt"));
    write_file(&a, "n1/n2/n3/f.txt", b"two");
    write_file(&a, "n1/n2/g.txt", b"beside");
    converge(&all, &procs, "edits in new folders", |t| {
        t["n1/n2/n3/f.txt"] == b"two" && t.get("n1/n2/g.txt").is_some_and(|v| v == b"beside")
    });

    // On b, the folders were made by the files it received.
    write_file(&b, "n1/n2/n3/f.txt", b"three, from b");
    converge(&all, &procs, "an edit in received folders", |t| t["n1/n2/n3/f.txt"] == b"three, from b");

    // A folder renamed: its folders are watched under their new names.
    fs::rename(a.join("n1"), a.join("m1")).unwrap();
    converge(&all, &procs, "the folder renamed", |t| {
        t.contains_key("m1/n2/n3/f.txt") && !t.contains_key("n1/n2/g.txt")
    });
    write_file(&a, "m1/n2/n3/f.txt", b"four, after the rename");
    write_file(&a, "m1/n2/n3/new.txt", b"new after the rename");
    converge(&all, &procs, "edits in the renamed folder", |t| {
        t["m1/n2/n3/f.txt"] == b"four, after the rename" && t.contains_key("m1/n2/n3/new.txt")
    });
}
