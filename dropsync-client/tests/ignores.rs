//! Ignore rules (issue 17), with the real binaries: editors' temp files and
//! the patterns of `.syncignore` (gitignore syntax, synced like any
//! file) are never sent, and stay as they are on each client.
#![allow(clippy::unwrap_used)]

mod common;

use common::{converge, Net};
use dropsync_testkit::{tree, write_file};

#[test]
fn ignored_files_stay_where_they_are_and_the_ignore_file_syncs() {
    let net = Net::new("ignores");
    let (a, b) = (net.folder("a"), net.folder("b"));
    write_file(&a, ".syncignore", b"*.log\nbuild/\n");
    write_file(&a, "a.txt", b"synced");
    write_file(&a, "x.log", b"a's log");
    write_file(&a, "build/o.bin", b"a's build output");
    write_file(&a, "notes.txt.swp", b"vim swap");
    write_file(&a, "4913", b"vim probe");
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    let synced = |t: &std::collections::BTreeMap<String, Vec<u8>>| t.contains_key("a.txt") && t.contains_key(".syncignore");
    let bt = common::converge(&[&b], &[&cb], "b has the synced files", synced);
    assert_eq!(bt.keys().collect::<Vec<_>>(), [".syncignore", "a.txt"], "only what is not ignored reaches b");

    // b's own ignored files stay on b; a later file still syncs.
    write_file(&b, "b.log", b"b's log");
    write_file(&b, "build/b.bin", b"b's build output");
    write_file(&b, "c.txt", b"after the ignored ones");
    converge(&[&a], &[&ca], "a has c.txt", |t| t.contains_key("c.txt"));
    let at = tree(&a);
    assert!(!at.contains_key("b.log") && !at.contains_key("build/b.bin"), "{:?}", at.keys());
    assert_eq!(at["x.log"], b"a's log", "a's ignored files are untouched");

    // A new client gets no ignored file from the server either.
    net.once("c");
    let ct = tree(&net.folder("c"));
    assert_eq!(ct.keys().collect::<Vec<_>>(), [".syncignore", "a.txt", "c.txt"]);
}
