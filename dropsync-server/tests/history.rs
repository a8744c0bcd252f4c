//! Version history (issue 17) with the real binaries: `rm -rf` of a folder
//! undone by `server undelete`, an overwrite undone by `server restore`
//! after `server history` lists the versions, and retention dropping what
//! is older than `--keep-days`, and the wipe issue 17 measured (23 DELETEs
//! from one peer emptied every replica in 0.01 s) undone with one command.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dropsync_proto::{md5, Frame, StatusCode};
use dropsync_testkit::{
    bin_path, tree, wait_until, write_file, ClientProc, RawPeer, ServerProc, TempDir, DEFAULT_DEADLINE,
};

/// Runs `server ARGS` (a history command); its success and output. The
/// command itself waits at most 15 s for the running server.
fn server_cmd(args: &[&str]) -> (bool, String) {
    let out = Command::new(bin_path("server")).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn files_under(dir: &Path, prefix: &str) -> Vec<(String, Vec<u8>)> {
    tree(dir).into_iter().filter(|(p, _)| p.starts_with(prefix)).collect()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn a_deleted_folder_comes_back_on_every_client_with_one_command() {
    let tmp = TempDir::new("history-undelete");
    let root = tmp.join("root");
    let server = ServerProc::start(&root, &[]);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    for i in 0..5 {
        write_file(&a, &format!("d/f{i}.txt"), format!("file {i}").as_bytes());
    }
    let _ca = ClientProc::start(&server, &a, 4096, &[]);
    let _cb = ClientProc::start(&server, &b, 4096, &[]);
    let before = files_under(&a, "d/");
    assert!(wait_until(DEFAULT_DEADLINE, || files_under(&b, "d/") == before), "b has the folder");
    // A moment everything was there, then the folder is removed.
    let at = now_secs() + 1;
    assert!(wait_until(Duration::from_secs(3), || now_secs() > at), "the clock moves on");
    std::fs::remove_dir_all(a.join("d")).unwrap();
    assert!(wait_until(DEFAULT_DEADLINE, || files_under(&b, "d/").is_empty()), "the delete reached b");

    let (ok, out) = server_cmd(&["undelete", "--root", root.to_str().unwrap(), "d", "--at", &format!("@{at}")]);
    assert!(ok, "{out}");
    assert!(out.contains("5 file(s)"), "{out}");
    for dir in [&a, &b] {
        assert!(
            wait_until(DEFAULT_DEADLINE, || files_under(dir, "d/") == before),
            "{} has it back: {out}",
            dir.display()
        );
    }
}

#[test]
fn a_wipe_by_23_deletes_from_one_peer_is_undone_everywhere_with_one_command() {
    let tmp = TempDir::new("history-wipe");
    let root = tmp.join("root");
    let server = ServerProc::start(&root, &[]);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    for i in 0..23 {
        write_file(&a, &format!("work/{}/file{i}.txt", i % 4), format!("precious {i}").as_bytes());
    }
    std::fs::create_dir_all(&b).unwrap();
    let _ca = ClientProc::start(&server, &a, 4096, &[]);
    let _cb = ClientProc::start(&server, &b, 4096, &[]);
    let before = tree(&a);
    assert_eq!(before.len(), 23);
    assert!(wait_until(DEFAULT_DEADLINE, || tree(&b) == before), "b has everything");
    let at = now_secs() + 1;
    assert!(wait_until(Duration::from_secs(3), || now_secs() > at), "the clock moves on");
    // One peer, no client: 23 DELETEs, each naming the version it saw.
    let mut peer = RawPeer::hello(server.send_port, server.recv_port, [0x23; 16], "wiper");
    peer.receive_metadata();
    for (name, bytes) in &before {
        assert_eq!(peer.request(&Frame::Delete { digest: md5(bytes), name }), StatusCode::OK, "{name}");
    }
    for dir in [&a, &b] {
        assert!(wait_until(DEFAULT_DEADLINE, || tree(dir).is_empty()), "{} was wiped", dir.display());
    }
    let (ok, out) = server_cmd(&["undelete", "--root", root.to_str().unwrap(), "--at", &format!("@{at}")]);
    assert!(ok, "{out}");
    assert!(out.contains("23 file(s)"), "{out}");
    for dir in [&a, &b] {
        assert!(wait_until(DEFAULT_DEADLINE, || tree(dir) == before), "{} has every file back: {out}", dir.display());
    }
}

#[test]
fn history_lists_the_versions_and_restore_brings_one_back_everywhere() {
    let tmp = TempDir::new("history-restore");
    let root = tmp.join("root");
    let server = ServerProc::start(&root, &[]);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let _ca = ClientProc::start(&server, &a, 4096, &[]);
    let _cb = ClientProc::start(&server, &b, 4096, &[]);
    write_file(&a, "notes.txt", b"first draft");
    assert!(wait_until(DEFAULT_DEADLINE, || tree(&b).get("notes.txt").map(Vec::as_slice) == Some(b"first draft")));
    write_file(&a, "notes.txt", b"second draft, worse");
    assert!(
        wait_until(DEFAULT_DEADLINE, || tree(&b).get("notes.txt").map(Vec::as_slice) == Some(b"second draft, worse"))
    );

    let root_s = root.to_str().unwrap();
    let (ok, listing) = server_cmd(&["history", "--root", root_s, "notes.txt"]);
    assert!(ok, "{listing}");
    let versions: Vec<u64> = listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("version "))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(versions.len(), 2, "{listing}");
    assert!(listing.lines().last().unwrap_or_default().contains("server restore"), "{listing}");

    let (ok, out) = server_cmd(&["restore", "--root", root_s, "notes.txt", &versions[0].to_string()]);
    assert!(ok, "{out}");
    for dir in [&a, &b] {
        assert!(
            wait_until(DEFAULT_DEADLINE, || tree(dir).get("notes.txt").map(Vec::as_slice) == Some(b"first draft")),
            "{} has the first draft back: {out}",
            dir.display()
        );
    }
    let (_, listing) = server_cmd(&["history", "--root", root_s, "notes.txt"]);
    assert_eq!(
        listing.lines().filter(|l| l.trim().starts_with("version ")).count(),
        3,
        "the restore is a new version: {listing}"
    );

    let (ok, out) = server_cmd(&["restore", "--root", root_s, "notes.txt", "999999"]);
    assert!(!ok && out.contains("no file version 999999"), "{out}");
    let (ok, out) = server_cmd(&["history", "--root", root_s, "never.txt"]);
    assert!(!ok && out.contains("not known"), "{out}");
}

#[test]
fn retention_drops_versions_older_than_keep_days_and_a_restore_needs_a_running_server() {
    let tmp = TempDir::new("history-retention");
    let root = tmp.join("root");
    let root_s = root.to_str().unwrap().to_owned();
    let mut server = ServerProc::start(&root, &[]);
    let a = tmp.join("a");
    std::fs::create_dir_all(&a).unwrap();
    write_file(&a, "x.txt", b"one");
    assert!(ClientProc::run_once(&server, &a, 4096, &[], DEFAULT_DEADLINE).is_some_and(|s| s.success()));
    write_file(&a, "x.txt", b"two");
    assert!(ClientProc::run_once(&server, &a, 4096, &[], DEFAULT_DEADLINE).is_some_and(|s| s.success()));
    let versions = |root: &str| {
        server_cmd(&["history", "--root", root, "x.txt"]).1.lines().filter(|l| l.trim().starts_with("version ")).count()
    };
    assert_eq!(versions(&root_s), 2);
    server.terminate();

    // Retention runs at start: with --keep-days 0 the old version goes.
    let mut server = ServerProc::start(&root, &["--keep-days", "0"]);
    assert!(wait_until(DEFAULT_DEADLINE, || versions(&root_s) == 1), "{}", server.log());
    server.terminate();
    let (ok, out) = server_cmd(&["restore", "--root", &root_s, "x.txt", "1"]);
    assert!(!ok && out.contains("is the server running"), "{out}");
    let (ok, out) = server_cmd(&["undelete", "--root", &root_s, "--at", "yesterday"]);
    assert!(!ok && out.contains("not a time"), "{out}");
}
