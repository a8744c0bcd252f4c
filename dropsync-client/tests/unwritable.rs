//! A delivery the client cannot write (section 7: refused with 0x0080) is
//! given up by the server for that client (section 6); the client asks for
//! it again later, with a backoff, so its replica does not stay stale once
//! the obstacle is gone (issue 17: refused changes are retried).
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;

use common::{converge, Net};
use dropsync_testkit::{wait_until, write_file, DEFAULT_DEADLINE};

#[test]
fn a_delivery_refused_because_a_folder_was_in_the_way_arrives_once_the_folder_is_gone() {
    let net = Net::new("unwritable");
    let (a, b) = (net.folder("a"), net.folder("b"));
    // An empty folder is not synced: it stays only on b, in the way.
    fs::create_dir_all(b.join("x")).unwrap();
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    write_file(&a, "x", b"a file named x");
    let asked = wait_until(DEFAULT_DEADLINE, || cb.log().contains("could not write x here; asking the server for it again"));
    assert!(asked, "{}", cb.log());
    fs::remove_dir(b.join("x")).unwrap();
    converge(&[&a, &b], &[&ca, &cb], "x on both", |t| t.get("x").is_some_and(|x| x == b"a file named x"));
}
