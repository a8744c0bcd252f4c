//! The delete guard (issue 17), with the real binaries: a client that sees
//! many of its files go at once holds those deletes; `client
//! confirm-deletes FOLDER` sends them, `client restore-deletes FOLDER`
//! brings the files back from the server. A few deletes go through as ever.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{converge, Net};
use dropsync_testkit::{bin_path, tree, wait_until, write_file, ClientProc, DEFAULT_DEADLINE};

const FILES: usize = 20;

fn fill(dir: &Path) {
    for i in 0..FILES {
        write_file(dir, &format!("d/f{i}.txt"), format!("file {i}").as_bytes());
    }
}

/// A server and clients `a` and `b`, with [`FILES`] files made in a's
/// folder and synced to b's: the folders and the clients.
fn filled_and_synced(tag: &str) -> (Net, PathBuf, PathBuf, ClientProc, ClientProc) {
    let net = Net::new(tag);
    let (a, b) = (net.folder("a"), net.folder("b"));
    fill(&a);
    let ca = net.client("a", &[]);
    let cb = net.client("b", &[]);
    converge(&[&a, &b], &[&ca, &cb], "every file everywhere", |t| t.len() == FILES);
    (net, a, b, ca, cb)
}

/// Runs `client <word> <folder>` and asserts it succeeds.
fn answer(word: &str, folder: &Path) {
    let out = Command::new(bin_path("client")).arg(word).arg(folder).output().unwrap();
    assert!(out.status.success(), "client {word}: {}", String::from_utf8_lossy(&out.stderr));
}

fn wait_for_log(c: &ClientProc, text: &str) {
    assert!(wait_until(DEFAULT_DEADLINE, || c.log().contains(text)), "no {text:?} in the log:\n{}", c.log());
}

#[test]
fn deleting_every_file_at_once_is_held_until_the_user_confirms() {
    let (net, a, b, ca, cb) = filled_and_synced("guard-all");

    fs::remove_dir_all(a.join("d")).unwrap();
    wait_for_log(&ca, &format!("holding {FILES} deletes"));
    // Nothing was deleted anywhere: the other client and the server (as a
    // new client sees it) still have every file.
    assert_eq!(tree(&b).len(), FILES);
    net.once("c");
    assert_eq!(tree(&net.folder("c")).len(), FILES);

    answer("confirm-deletes", &a);
    wait_for_log(&ca, &format!("confirmed: deleting {FILES} held files"));
    converge(&[&a, &b], &[&ca, &cb], "every file deleted everywhere", |t| t.is_empty());
}

#[test]
fn a_few_deletes_go_through() {
    let (_net, a, b, ca, cb) = filled_and_synced("guard-few");
    for i in 0..3 {
        fs::remove_file(a.join(format!("d/f{i}.txt"))).unwrap();
    }
    converge(&[&a, &b], &[&ca, &cb], "three deleted everywhere", |t| t.len() == FILES - 3);
    assert!(!ca.log().contains("holding"), "{}", ca.log());
}

#[test]
fn a_mass_delete_made_while_the_client_was_stopped_is_held_and_restore_brings_the_files_back() {
    let (net, a, b, mut ca, cb) = filled_and_synced("guard-restore");
    assert!(ca.terminate().is_some_and(|s| s.success()));

    fs::remove_dir_all(a.join("d")).unwrap();
    let ca = net.client("a", &[]);
    wait_for_log(&ca, &format!("holding {FILES} deletes"));
    assert_eq!(tree(&b).len(), FILES);

    answer("restore-deletes", &a);
    converge(&[&a, &b], &[&ca, &cb], "every file back", |t| t.len() == FILES);
    assert!(ca.log().contains(&format!("restoring {FILES} held files")), "{}", ca.log());
}

#[test]
fn the_commands_refuse_a_folder_that_is_not_synced() {
    let net = Net::new("guard-cli");
    let not_synced = net.folder("plain");
    fs::create_dir_all(&not_synced).unwrap();
    let out = Command::new(bin_path("client")).arg("confirm-deletes").arg(&not_synced).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a synced folder"));
}

#[test]
fn a_folder_of_every_file_renamed_is_no_mass_delete() {
    let (_net, a, b, ca, cb) = filled_and_synced("guard-rename");
    // A rename goes as COPYs only for files last written outside the
    // client's racy window (2 s): before, their stat proves nothing.
    let settled = || {
        tree(&a)
            .keys()
            .all(|n| fs::metadata(a.join(n)).unwrap().modified().unwrap().elapsed().unwrap().as_millis() > 2100)
    };
    assert!(wait_until(DEFAULT_DEADLINE, settled));

    fs::rename(a.join("d"), a.join("e")).unwrap();
    converge(&[&a, &b], &[&ca, &cb], "every file under its new folder everywhere", |t| {
        t.len() == FILES && t.keys().all(|n| n.starts_with("e/"))
    });
    assert!(!ca.log().contains("holding"), "{}", ca.log());
    assert!(ca.log().contains("renamed to e/f0.txt"), "each DELETE went with its COPY:\n{}", ca.log());
}
