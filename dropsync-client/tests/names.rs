//! Names (issue 17), with the real binaries: names travel as NFC (a local
//! NFD name is renamed to NFC, as Syncthing's autoNormalize does, and an
//! NFD twin of an NFC name is kept as a conflict copy), and a file whose
//! name differs from a live one in letter case alone is kept as a conflict
//! copy rather than sent as a twin no case-insensitive file system could
//! hold. Nothing is overwritten in either case.
#![allow(clippy::unwrap_used)]

mod common;

use common::{converge, Net};
use dropsync_testkit::{tree, write_file};

const NFD: &str = "cafe\u{301}.txt";
const NFC: &str = "caf\u{e9}.txt";

#[test]
fn an_nfd_name_travels_as_nfc_and_an_nfd_twin_is_kept_as_a_copy() {
    let net = Net::new("names-nfc");
    let (a, b) = (net.folder("a"), net.folder("b"));
    write_file(&a, &format!("menu/{NFD}"), b"written on a Mac");
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    let nfc_path = format!("menu/{NFC}");
    let t = converge(&[&a, &b], &[&ca, &cb], "the NFC name everywhere", |t| t.contains_key(&nfc_path));
    assert_eq!(t.len(), 1, "only the NFC name: {:?}", t.keys());
    assert_eq!(t[&nfc_path], b"written on a Mac");

    // An NFD twin of the live NFC name: kept, under a conflict-copy name.
    write_file(&a, &format!("menu/{NFD}"), b"the twin");
    let t = converge(&[&a, &b], &[&ca, &cb], "the twin as a copy", |t| t.len() == 2);
    assert_eq!(t[&nfc_path], b"written on a Mac", "the NFC file is not overwritten");
    let (copy, body) = t.iter().find(|(k, _)| k.contains("conflicted copy unicode twin")).unwrap();
    assert!(copy.starts_with("menu/caf\u{e9} ("), "{copy}");
    assert_eq!(body, b"the twin");
    assert!(tree(&a).keys().all(|k| !k.contains('\u{301}')), "no NFD name is left on a");
}

#[test]
fn a_case_twin_of_a_live_file_is_kept_as_a_conflict_copy() {
    let net = Net::new("names-case");
    let (a, b) = (net.folder("a"), net.folder("b"));
    write_file(&a, "docs/readme.txt", b"the original");
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    converge(&[&a, &b], &[&ca, &cb], "readme.txt everywhere", |t| t.contains_key("docs/readme.txt"));
    // Linux can hold both spellings; a Mac or Windows client could not.
    write_file(&a, "docs/README.TXT", b"a twin in capitals");
    let t = converge(&[&a, &b], &[&ca, &cb], "the twin as a copy", |t| t.len() == 2);
    assert_eq!(t["docs/readme.txt"], b"the original", "never overwritten");
    let (copy, body) = t.iter().find(|(k, _)| k.contains("conflicted copy case twin")).unwrap();
    assert!(copy.starts_with("docs/README (") && copy.ends_with(").TXT"), "{copy}");
    assert_eq!(body, b"a twin in capitals");
    assert!(!t.contains_key("docs/README.TXT"));
}
