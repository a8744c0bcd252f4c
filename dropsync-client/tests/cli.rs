//! The command line: clear errors and a non-zero exit for bad arguments,
//! `--help` documenting every flag, `--once` failing cleanly without a
//! server.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Command, Output};

use dropsync_testkit::{bin_path, TempDir};

fn client(args: &[&str]) -> Output {
    Command::new(bin_path("client")).args(args).env("RUST_LOG", "error").output().unwrap()
}

#[test]
fn bad_chunk_sizes_are_refused_with_a_clear_message() {
    let dir = TempDir::new("cli-chunk");
    let folder = dir.join("f");
    let folder = folder.to_str().unwrap();
    for (chunk, why) in [("0", "at least 1 byte"), ("abc", "not a whole number"), ("16777217", "maximum"), ("-3", "")] {
        let out = client(&["127.0.0.1", "5000", "5001", folder, chunk]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "chunk size {chunk} accepted");
        assert!(stderr.contains("CHUNK_SIZE") && stderr.contains(why), "chunk size {chunk}: {stderr}");
    }
    assert!(!dir.join("f").exists(), "nothing is created before the arguments are valid");
}

#[test]
fn missing_arguments_and_bad_ports_are_errors() {
    assert!(!client(&["127.0.0.1", "5000"]).status.success());
    assert!(!client(&["127.0.0.1", "0", "5001", "f", "10"]).status.success());
    assert!(!client(&["127.0.0.1", "70000", "5001", "f", "10"]).status.success());
}

#[test]
fn help_explains_every_flag() {
    let out = client(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--once",
        "--no-conflict-copies",
        "--label",
        "--parallel",
        "--debounce-ms",
        "--rescan-secs",
        "--keepalive-secs",
        "--dead-peer-secs",
        "--verbose",
        "--quiet",
        "<CHUNK_SIZE>",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}:\n{help}");
    }
}

#[test]
fn once_without_a_server_fails_with_one_line() {
    // A port that was free a moment ago: nothing listens on it.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let dir = TempDir::new("cli-once");
    let folder = dir.join("f");
    let out = client(&["--once", "127.0.0.1", &port, &port, folder.to_str().unwrap(), "100"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(lines[0].contains("cannot connect"), "{stderr}");
    assert!(folder.join(".dropsync/metadata").exists(), "folder and state created");
}
