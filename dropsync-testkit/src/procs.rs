//! The real `server` and `client` binaries as child processes: started on
//! 127.0.0.1 with ephemeral ports and temp folders, killed and reaped on drop.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::wait::{wait_until, DEFAULT_DEADLINE};

/// Path of a workspace binary (`server` or `client`), next to the test
/// executable's `deps/` folder. `make test` builds the binaries first.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let p = dir.join(name);
    assert!(p.exists(), "{} not built: run `cargo build --workspace --bins` (make test does)", p.display());
    p
}

/// A command for `bin`, run under `$DROPSYNC_WRAPPER` when that is set
/// (e.g. `valgrind --error-exitcode=99 --leak-check=full`, as `make
/// valgrind` does), so the same tests check memory handling.
fn wrapped(bin: PathBuf) -> Command {
    match std::env::var("DROPSYNC_WRAPPER") {
        Ok(w) if !w.trim().is_empty() => {
            let mut words = w.split_whitespace();
            let mut c = Command::new(words.next().unwrap_or("env"));
            c.args(words).arg(bin);
            c
        }
        _ => Command::new(bin),
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

/// Waits up to `deadline` for `c` to exit; kills and reaps it if it does not.
fn reap_within(mut c: Child, deadline: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(deadline, || {
        status = c.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        kill_and_reap(Some(c));
    }
    status
}

/// SIGKILL, then reap (no zombie left behind).
fn kill_and_reap(child: Option<Child>) {
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A running server, its ports and its root folder.
#[derive(Debug)]
pub struct ServerProc {
    child: Option<Child>,
    /// Port clients send files to (the first CLI argument).
    pub send_port: u16,
    /// Port clients receive files from.
    pub recv_port: u16,
    /// The server's storage root.
    pub root: PathBuf,
    /// The `--http` port, when the server was started with one.
    pub http_port: Option<u16>,
    log: PathBuf,
    args: Vec<String>,
    env: Vec<(String, OsString)>,
}

impl ServerProc {
    /// Starts `server 0 0 --bind 127.0.0.1 --root <root> <extra>`, waiting for
    /// its "listening" line to learn the ports.
    pub fn start(root: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(root, extra, &[])
    }

    /// Like [`ServerProc::start`], with these environment variables set for
    /// the server (e.g. `SSLKEYLOGFILE`), kept on restart.
    pub fn start_with_env(root: &Path, extra: &[&str], env: &[(&str, &OsStr)]) -> Self {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_os_string())).collect();
        Self::spawn(root.to_path_buf(), 0, 0, args, env)
    }

    fn spawn(root: PathBuf, send: u16, recv: u16, args: Vec<String>, env: Vec<(String, OsString)>) -> Self {
        let log = root.with_extension("server.log");
        let err = File::options().create(true).append(true).open(&log).unwrap();
        let mut child = wrapped(bin_path("server"))
            .arg(send.to_string())
            .arg(recv.to_string())
            .args(["--bind", "127.0.0.1", "--root"])
            .arg(&root)
            .args(&args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(rest) = line.strip_prefix("dropsync-server listening ") {
                    let _ = tx.send(rest.to_owned());
                }
            }
        });
        let line = match rx.recv_timeout(DEFAULT_DEADLINE) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
            }
        };
        let port = |key: &str| -> u16 {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("bad listening line {line:?}"))
        };
        let (send_port, recv_port) = (port("send="), port("receive="));
        let http_port = line.contains("http=").then(|| port("http="));
        Self { child: Some(child), send_port, recv_port, root, http_port, log, args, env }
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        kill_and_reap(self.child.take());
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let c = self.child.take()?;
        signal(c.id(), "-TERM");
        reap_within(c, DEFAULT_DEADLINE)
    }

    /// Starts the server again on the same ports, root and flags.
    pub fn restart(&mut self) {
        self.kill9();
        let root = self.root.clone();
        let next = Self::spawn(root, self.send_port, self.recv_port, self.args.clone(), self.env.clone());
        *self = next;
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running (or finished) client.
#[derive(Debug)]
pub struct ClientProc {
    child: Option<Child>,
    /// The synced folder.
    pub folder: PathBuf,
    log: PathBuf,
}

impl ClientProc {
    /// Starts `client 127.0.0.1 <send> <receive> <folder> <chunk> <extra>`.
    pub fn start(server: &ServerProc, folder: &Path, chunk: u32, extra: &[&str]) -> Self {
        Self::start_with_ports(server.send_port, server.recv_port, folder, chunk, extra)
    }

    /// Like [`ClientProc::start`], against any ports (a scripted fake
    /// server in the test, a proxy, or nothing listening at all).
    pub fn start_with_ports(send_port: u16, recv_port: u16, folder: &Path, chunk: u32, extra: &[&str]) -> Self {
        Self::spawn(send_port, recv_port, folder, chunk, extra, &[])
    }

    /// Like [`ClientProc::start`], with these environment variables set for
    /// the client (e.g. `SSLKEYLOGFILE`).
    pub fn start_with_env(server: &ServerProc, folder: &Path, chunk: u32, extra: &[&str], env: &[(&str, &OsStr)]) -> Self {
        Self::spawn(server.send_port, server.recv_port, folder, chunk, extra, env)
    }

    fn spawn(send_port: u16, recv_port: u16, folder: &Path, chunk: u32, extra: &[&str], env: &[(&str, &OsStr)]) -> Self {
        std::fs::create_dir_all(folder).unwrap();
        let log = folder.with_extension("client.log");
        let err = File::options().create(true).append(true).open(&log).unwrap();
        let child = wrapped(bin_path("client"))
            .arg("127.0.0.1")
            .arg(send_port.to_string())
            .arg(recv_port.to_string())
            .arg(folder)
            .arg(chunk.to_string())
            .args(extra)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .unwrap();
        Self { child: Some(child), folder: folder.to_path_buf(), log }
    }

    /// Runs a client with `--once` to completion (bounded by `deadline`).
    pub fn run_once(server: &ServerProc, folder: &Path, chunk: u32, extra: &[&str], deadline: Duration) -> Option<ExitStatus> {
        let mut args = vec!["--once"];
        args.extend_from_slice(extra);
        let mut c = Self::start(server, folder, chunk, &args);
        c.wait(deadline)
    }

    /// Waits (bounded) for the client to exit; kills it on timeout.
    pub fn wait(&mut self, deadline: Duration) -> Option<ExitStatus> {
        reap_within(self.child.take()?, deadline)
    }

    /// The client's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        kill_and_reap(self.child.take());
    }

    /// SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_ref()?;
        signal(c.id(), "-TERM");
        self.wait(DEFAULT_DEADLINE)
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

