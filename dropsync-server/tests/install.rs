//! `make install` (issue 20): the binaries land under PREFIX/bin with their
//! installed names and work (an installed client syncs a file to an
//! installed server), and the systemd units point at them. The units are
//! checked with `systemd-analyze verify` where it exists (not required).
//! Uses `make install-files` with the binaries the tests run, since a
//! release build is too slow for the test suite.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;

use dropsync_testkit::{bin_path, wait_until, write_file, TempDir, DEFAULT_DEADLINE};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

/// Runs `cmd` to its end within [`DEFAULT_DEADLINE`].
fn run(mut cmd: Command) -> Output {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let finished = wait_until(DEFAULT_DEADLINE, || child.try_wait().ok().flatten().is_some());
    if !finished {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    assert!(finished, "{cmd:?} did not finish in time");
    out
}

/// A child killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn make_install_puts_working_binaries_and_units_under_the_prefix() {
    let tmp = TempDir::new("install");
    let prefix = tmp.join("usr");
    let mut make = Command::new("make");
    make.current_dir(workspace())
        .arg("--no-print-directory")
        .arg("install-files")
        .arg(format!("PREFIX={}", prefix.display()))
        .arg(format!("SERVER_BIN={}", bin_path("server").display()))
        .arg(format!("CLIENT_BIN={}", bin_path("client").display()));
    let out = run(make);
    assert!(out.status.success(), "make install-files failed:\n{}", String::from_utf8_lossy(&out.stderr));

    let (server, client) = (prefix.join("bin/dropsync-server"), prefix.join("bin/dropsync-client"));
    let units = prefix.join("lib/systemd/system");
    for unit in ["dropsync-server.service", "dropsync-client@.service"] {
        let text = std::fs::read_to_string(units.join(unit)).unwrap();
        assert!(!text.contains("@BINDIR@") && !text.contains("@DOCDIR@"), "{unit} was not filled in");
        assert!(text.contains(&format!("ExecStart={}/bin/dropsync-", prefix.display())), "{unit}:\n{text}");
    }
    assert!(prefix.join("share/doc/dropsync/README.md").exists());

    // The installed server and client, for real.
    let root = tmp.join("root");
    let mut child = Command::new(&server)
        .args(["0", "0", "--bind", "127.0.0.1", "--root"])
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _server = Killed(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx.recv_timeout(DEFAULT_DEADLINE).expect("the installed server says where it listens");
    let port = |key: &str| -> String {
        let v = line.split_whitespace().find_map(|kv| kv.strip_prefix(key)).unwrap();
        v.rsplit(':').next().unwrap().to_owned()
    };
    let folder = tmp.join("folder");
    write_file(&folder, "hello.txt", b"installed");
    let mut once = Command::new(&client);
    once.arg("127.0.0.1").arg(port("send=")).arg(port("receive=")).arg(&folder).arg("4096").arg("--once");
    let out = run(once);
    assert!(out.status.success(), "installed client --once failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let meta = std::fs::read_to_string(root.join("meta/metadata")).unwrap_or_default()
        + &std::fs::read_to_string(root.join("meta/metadata.journal")).unwrap_or_default();
    assert!(meta.contains("hello.txt"), "the upload is not in the server's META-DATA:\n{meta}");

    verify_units(&units, &tmp);
}

/// `systemd-analyze verify` on both units (the template as an instance),
/// when the tool is there: it reports unknown keys and bad values on
/// stderr (with exit status 0 for some), so any line naming a unit fails.
fn verify_units(units: &Path, tmp: &TempDir) {
    let found = Command::new("sh").arg("-c").arg("command -v systemd-analyze").output();
    if !found.is_ok_and(|o| o.status.success()) {
        eprintln!("systemd-analyze not installed: units not verified");
        return;
    }
    let instance = tmp.join("dropsync-client@alice.service");
    std::fs::copy(units.join("dropsync-client@.service"), &instance).unwrap();
    let mut cmd = Command::new("systemd-analyze");
    cmd.args(["verify", "--man=no"]).arg(units.join("dropsync-server.service")).arg(&instance);
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = err.lines().filter(|l| l.contains("dropsync-")).collect();
    assert!(out.status.success() && complaints.is_empty(), "systemd-analyze verify:\n{err}");
}
