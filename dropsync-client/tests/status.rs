//! `client status FOLDER` (part of issue 20) against a running client: it
//! says whether the folder is in sync, what is held, and whether the
//! client that wrote the status is still running.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::Net;
use dropsync_testkit::{bin_path, wait_until, write_file, DEFAULT_DEADLINE};

/// What `client status FOLDER` prints (its error, before the client has
/// set the folder up).
fn status(folder: &Path) -> String {
    let out = Command::new(bin_path("client")).arg("status").arg(folder).output().unwrap();
    let text = if out.status.success() { out.stdout } else { out.stderr };
    String::from_utf8(text).unwrap()
}

fn wait_for_status(folder: &Path, text: &str) -> String {
    let mut last = String::new();
    let seen = wait_until(DEFAULT_DEADLINE, || {
        last = status(folder);
        last.contains(text)
    });
    assert!(seen, "no {text:?} in:\n{last}");
    last
}

#[test]
fn status_tells_in_sync_held_deletes_and_a_stopped_client() {
    let net = Net::new("status");
    let a = net.folder("a");
    for i in 0..12 {
        write_file(&a, &format!("f{i}.txt"), b"x");
    }
    let mut ca = net.client("a", &[]);
    let s = wait_for_status(&a, "state: in sync");
    assert!(s.contains("uploads: 0") && s.contains("last in sync: 20"), "{s}");

    for i in 0..12 {
        std::fs::remove_file(a.join(format!("f{i}.txt"))).unwrap();
    }
    let s = wait_for_status(&a, "12 deletes held");
    assert!(s.contains("held deletes: 12"), "{s}");

    assert!(ca.terminate().is_some_and(|st| st.success()), "{}", ca.log());
    wait_for_status(&a, "not running");
    let out = Command::new(bin_path("client")).arg("status").arg(net.folder("nowhere")).output().unwrap();
    assert!(!out.status.success());
}
