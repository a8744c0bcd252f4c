//! `make dist` (scripts/dist.sh): the submission archive holds what the
//! assignment asks for (Makefile, README, docs, sources and the files that go
//! with them) and nothing it forbids (object files and other build outputs,
//! large files, version-control files). Building it from the unpacked archive
//! (`make all`) is too slow for the test suite; see scripts/dist.sh.

// Test helpers, like the tests themselves, may unwrap: a panic is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use dropsync_testkit::{wait_until, TempDir};

/// A file above this does not belong in the submission (scripts/dist.sh's default).
const MAX_FILE_BYTES: u64 = 1024 * 1024;
const TOP: &str = "dropsync/";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Runs `cmd` with a deadline; panics with its output if it fails.
fn run(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let finished = wait_until(Duration::from_secs(120), || child.try_wait().ok().flatten().is_some());
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        finished && out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn dist(dir: &Path, out: &Path, env: &[(&str, &str)]) {
    let mut cmd = Command::new("bash");
    cmd.arg(dir.join("scripts/dist.sh")).arg(out).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, "scripts/dist.sh");
}

/// (path, size) of every entry, as `tar -tvzf` lists them.
fn listing(archive: &Path) -> Vec<(String, u64)> {
    let mut cmd = Command::new("tar");
    cmd.arg("-tvzf").arg(archive);
    let out = run(cmd, "tar -tvzf");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            // -rw-r--r-- 0/0   1863 2024-01-01 00:00 dropsync/Makefile
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert!(cols.len() >= 6, "odd tar line {l:?}");
            (cols[5..].join(" "), cols[2].parse().unwrap())
        })
        .collect()
}

fn files(list: &[(String, u64)]) -> BTreeSet<String> {
    list.iter()
        .filter(|(p, _)| !p.ends_with('/'))
        .map(|(p, _)| p.strip_prefix(TOP).unwrap_or_else(|| panic!("{p} is outside {TOP}")).to_owned())
        .collect()
}

#[test]
fn dist_archive_has_sources_and_nothing_forbidden() {
    let ws = workspace();
    let tmp = TempDir::new("dist");
    let archive = tmp.join("dropsync.tar.gz");
    dist(&ws, &archive, &[]);
    let list = listing(&archive);
    let names = files(&list);

    let fixed = [
        "Makefile",
        "README.md",
        "Cargo.toml",
        "Cargo.lock",
        "docs/PROTOCOL.md",
        "scripts/dist.sh",
        "contrib/wireshark/dropsync.lua",
        "dropsync-proto/src/lib.rs",
        "dropsync-core/src/lib.rs",
        "dropsync-server/src/main.rs",
        "dropsync-client/src/main.rs",
        "dropsync-testkit/src/lib.rs",
        "dropsync-server/tests/wireshark.rs",
    ];
    let crates = ["dropsync-proto", "dropsync-core", "dropsync-io", "dropsync-server", "dropsync-client", "dropsync-testkit"];
    let required = fixed.iter().map(|f| f.to_string()).chain(crates.iter().map(|c| format!("{c}/Cargo.toml")));
    let missing: Vec<String> = required.filter(|r| !names.contains(r)).collect();
    assert!(missing.is_empty(), "missing from the archive (tracked by git?): {missing:?}");

    for (path, size) in &list {
        let rel = path.strip_prefix(TOP).unwrap_or(path);
        let parts: Vec<&str> = rel.trim_end_matches('/').split('/').collect();
        let base = parts.last().copied().unwrap_or_default();
        assert!(!parts.iter().any(|p| *p == "target" || *p == ".git"), "build or git folder in the archive: {path}");
        assert!(!base.starts_with(".git"), "version-control file in the archive: {path}");
        assert!(parts[0] != "dist", "dist output in the archive: {path}");
        assert!(!(parts.len() == 1 && (base == "server" || base == "client")), "built binary in the archive: {path}");
        for ext in [".o", ".a", ".so", ".rlib", ".rmeta", ".tar.gz", ".pcapng", ".pcap"] {
            assert!(!base.ends_with(ext), "build output or large data in the archive: {path}");
        }
        assert!(*size <= MAX_FILE_BYTES, "{path} is {size} bytes: too large for the submission");
    }

    // The Makefile has the targets the assignment grades.
    let makefile = std::fs::read_to_string(ws.join("Makefile")).unwrap();
    for target in ["all:", "clean:"] {
        assert!(makefile.lines().any(|l| l.starts_with(target)), "Makefile lacks `{target}`");
    }

    // In a git checkout: exactly the tracked files, less git's own.
    if ws.join(".git").exists() {
        let mut cmd = Command::new("git");
        cmd.args(["ls-files", "-z"]).current_dir(&ws);
        let out = run(cmd, "git ls-files");
        let tracked: BTreeSet<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|p| !p.is_empty() && ws.join(p).exists())
            .filter(|p| !p.rsplit('/').next().unwrap_or_default().starts_with(".git"))
            .map(str::to_owned)
            .collect();
        assert_eq!(names, tracked, "archive differs from the tracked files");
    }

    // Reproducible: the same tree gives the same bytes.
    let again = tmp.join("again.tar.gz");
    dist(&ws, &again, &[]);
    assert!(std::fs::read(&archive).unwrap() == std::fs::read(&again).unwrap(), "two builds of the archive differ");

    // Unpacked (no git), `make dist` still works and ships the same files.
    let unpacked = tmp.join("unpacked");
    std::fs::create_dir_all(&unpacked).unwrap();
    let mut cmd = Command::new("tar");
    cmd.arg("-xzf").arg(&archive).arg("-C").arg(&unpacked);
    run(cmd, "tar -xzf");
    let inner = unpacked.join("dropsync");
    let second = tmp.join("from-unpacked.tar.gz");
    let ceiling = unpacked.to_string_lossy().into_owned();
    dist(&inner, &second, &[("GIT_CEILING_DIRECTORIES", &ceiling)]);
    assert_eq!(files(&listing(&second)), names, "the archive rebuilt from the unpacked archive differs");
}
