//! Folder ↔ file swaps (issue 17) converge on every replica: a client that
//! cannot write a delivery because the other kind is in the way asks for
//! it again once the deletes that clear the way have arrived, and an empty
//! folder in the way gives way.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{converge, files, Net};
use dropsync_testkit::write_file;

#[test]
fn a_folder_replaced_by_a_file_and_a_file_replaced_by_a_folder_converge() {
    let net = Net::new("swaps");
    let (a, b) = (net.folder("a"), net.folder("b"));
    write_file(&a, "d/f1.txt", b"one");
    write_file(&a, "d/f2.txt", b"two");
    write_file(&a, "e", b"a file named e");
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    converge(&[&a, &b], &[&ca, &cb], "the first state", |t| t.len() == 3);

    fs::remove_dir_all(a.join("d")).unwrap();
    write_file(&a, "d", b"now a file");
    fs::remove_file(a.join("e")).unwrap();
    write_file(&a, "e/inside.txt", b"now a folder");
    let expected = files(&[("d", "now a file"), ("e/inside.txt", "now a folder")]);
    converge(&[&a, &b], &[&ca, &cb], "both swaps everywhere", |t| *t == expected);

    // And back, from the other client.
    fs::remove_file(b.join("d")).unwrap();
    write_file(&b, "d/again.txt", b"a folder again");
    converge(&[&a, &b], &[&ca, &cb], "swapped back", |t| t.contains_key("d/again.txt") && !t.contains_key("d"));
}
