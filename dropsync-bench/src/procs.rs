//! Child processes, each bounded twice: started under `timeout` (so it dies
//! on its own even if this program is SIGKILLed) in its own process group
//! (so one signal reaches it and anything it started), and registered here
//! so a signal to the benchmark, a panic or the global watchdog kills every
//! group still alive.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::cell::Cell;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::R;

/// Process groups alive (the pid of each `timeout` wrapper).
static GROUPS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Services not started under `timeout` (the PostgreSQL cluster and the
/// S3 server of the S phases), stopped by dropping them.
static SERVICES: Mutex<Vec<Box<dyn Send>>> = Mutex::new(Vec::new());
/// The scratch folder, removed by [`kill_all_and_clean`].
static WORKDIR: Mutex<Option<PathBuf>> = Mutex::new(None);
/// Changes to the machine to undo (a loop-mounted disk image, raised
/// kernel limits), newest last, each with the id [`at_exit`] gave it.
type Undo = Box<dyn FnOnce() + Send>;
static UNDO: Mutex<Vec<(u64, Undo)>> = Mutex::new(Vec::new());
static UNDO_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Remembers the scratch folder so an interrupted run still removes it.
pub fn set_workdir(dir: &Path) {
    *WORKDIR.lock().unwrap_or_else(|e| e.into_inner()) = Some(dir.to_path_buf());
}

fn signal_group(pgid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args(["-s", sig, "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// SIGKILLs every registered process group and removes the scratch
/// folder; with `exit`, exits with that code while still holding the
/// registry, so no other thread can start a process in between.
pub fn kill_all_and_clean(exit: Option<i32>) {
    let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    for g in groups.drain(..) {
        signal_group(g, "KILL");
    }
    release_services();
    undo_all();
    if let Some(dir) = WORKDIR.lock().unwrap_or_else(|e| e.into_inner()).take() {
        let _ = std::fs::remove_dir_all(dir);
    }
    if let Some(code) = exit {
        std::process::exit(code);
    }
}

/// Registers `undo`, run by [`undo_now`] with the id returned, or else by
/// [`kill_all_and_clean`] (the end of the run, a signal, a panic of the
/// main thread or the watchdog), whichever comes first, once. Undo actions
/// must not start processes through [`Proc`] (the registry is locked
/// while they run): plain `Command`s under `timeout`.
pub fn at_exit(undo: impl FnOnce() + Send + 'static) -> u64 {
    let id = UNDO_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    UNDO.lock().unwrap_or_else(|e| e.into_inner()).push((id, Box::new(undo)));
    id
}

/// Runs the undo action `id` now, if it has not run yet.
pub fn undo_now(id: u64) {
    let found = {
        let mut all = UNDO.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().position(|(i, _)| *i == id).map(|at| all.remove(at).1)
    };
    if let Some(undo) = found {
        undo();
    }
}

/// Runs every undo action not yet run, newest first.
fn undo_all() {
    loop {
        let next = UNDO.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match next {
            Some((_, undo)) => undo(),
            None => return,
        }
    }
}

/// Keeps `service` (e.g. a `PgProc`, stopped when dropped) until
/// [`release_services`], or until [`kill_all_and_clean`] on a signal, a
/// panic or the watchdog.
pub fn keep_service(service: Box<dyn Send>) {
    SERVICES.lock().unwrap_or_else(|e| e.into_inner()).push(service);
}

/// Stops (drops) every service kept, newest first.
pub fn release_services() {
    let mut all = std::mem::take(&mut *SERVICES.lock().unwrap_or_else(|e| e.into_inner()));
    while let Some(s) = all.pop() {
        drop(s);
    }
}

/// Runs `f` while holding the registry (so it cannot race with
/// [`kill_all_and_clean`]), e.g. creating a folder in the scratch area.
pub fn locked<T>(f: impl FnOnce() -> T) -> T {
    let _g = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    f()
}

/// `/usr/bin/time` if it is GNU time (prints the peak RSS with `-f %M`).
pub fn gnu_time() -> Option<PathBuf> {
    let p = PathBuf::from("/usr/bin/time");
    let ok = Command::new(&p)
        .args(["-f", "%M", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stderr).ok())
        .is_some_and(|s| s.trim().parse::<u64>().is_ok());
    ok.then_some(p)
}

/// Fields of `/proc/<pid>/status` the benchmark reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStatus {
    /// Peak resident set size, KiB.
    pub vm_hwm_kib: u64,
    /// Current resident set size, KiB.
    pub vm_rss_kib: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>/status`; `None` once the process is gone.
pub fn proc_status(pid: u32) -> Option<ProcStatus> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut st = ProcStatus::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else { continue };
        let v = val.parse().unwrap_or(0);
        match key {
            "VmHWM:" => st.vm_hwm_kib = v,
            "VmRSS:" => st.vm_rss_kib = v,
            "Threads:" => st.threads = v,
            _ => {}
        }
    }
    Some(st)
}

fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// Follows the first child from `root` down to the process named `name`
/// (the program under `timeout` and maybe `time`); 0 if it is not there
/// (not started yet, or already gone).
fn find_leaf_once(root: u32, name: &str) -> u32 {
    let want: String = name.chars().take(15).collect();
    let mut p = root;
    for _ in 0..4 {
        if comm(p) == want {
            return p;
        }
        match children(p).first() {
            Some(&c) => p = c,
            None => return 0,
        }
    }
    if comm(p) == want {
        p
    } else {
        0
    }
}

/// [`find_leaf_once`], retried for up to `within`.
fn find_leaf(root: u32, name: &str, within: Duration) -> u32 {
    let deadline = Instant::now() + within;
    loop {
        let p = find_leaf_once(root, name);
        if p != 0 || Instant::now() >= deadline {
            return p;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What to start.
pub struct Spec {
    /// The program.
    pub bin: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
    /// Hard bound: `timeout` sends SIGTERM after this, SIGKILL 5 s later.
    pub limit: Duration,
    /// stderr (and stdout unless `read_listening`) go here.
    pub log: PathBuf,
    /// Wait for the server's `dropsync-server listening` line on stdout.
    pub read_listening: bool,
    /// Wrap in GNU time, writing the peak RSS (KiB) to this file at exit.
    pub time_file: Option<PathBuf>,
    /// Environment variables set for the program.
    pub env: Vec<(String, String)>,
}

/// A running child (its process group), stopped and reaped on drop.
pub struct Proc {
    /// Short name for messages.
    pub name: String,
    bin_name: String,
    child: Option<Child>,
    pgid: u32,
    /// Pid of the program itself (0 until found; see [`Proc::pid`]).
    pid: Cell<u32>,
    /// Its log file.
    pub log: PathBuf,
    /// The listening line, if asked for.
    pub listening: Option<String>,
    time_file: Option<PathBuf>,
    started: Instant,
}

impl Proc {
    /// Starts `spec` under `timeout` in a new process group.
    pub fn start(name: &str, spec: Spec) -> R<Proc> {
        Proc::spawn(name, spec, false)
    }

    /// [`Proc::start`] with the program's stdin and stdout piped to this
    /// process (B5's load-generating workers); stderr goes to the log.
    pub fn start_piped(name: &str, spec: Spec) -> R<(Proc, ChildStdin, ChildStdout)> {
        let mut p = Proc::spawn(name, spec, true)?;
        let child = p.child.as_mut().ok_or("no child")?;
        let (i, o) = (child.stdin.take().ok_or("no stdin")?, child.stdout.take().ok_or("no stdout")?);
        Ok((p, i, o))
    }

    fn spawn(name: &str, spec: Spec, piped: bool) -> R<Proc> {
        let err = File::options().create(true).append(true).open(&spec.log)?;
        let out: Stdio = if spec.read_listening || piped { Stdio::piped() } else { err.try_clone()?.into() };
        let stdin = if piped { Stdio::piped() } else { Stdio::null() };
        let mut cmd = Command::new("timeout");
        cmd.args(["-k", "5", &format!("{}", spec.limit.as_secs().max(1))]);
        if let (Some(tf), Some(time)) = (&spec.time_file, gnu_time()) {
            cmd.arg(time).arg("-f").arg("%M").arg("-o").arg(tf);
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
        cmd.arg(&spec.bin).args(&spec.args).stdin(stdin).stdout(out).stderr(err);
        // Spawned and registered under the lock: a concurrent
        // kill_all_and_clean either sees this group or runs before it exists.
        let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("starting {}: {e}", spec.bin.display()))?;
        let pgid = child.id();
        groups.push(pgid);
        drop(groups);
        let bin_name = spec.bin.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let mut listening = None;
        if spec.read_listening && !piped {
            let stdout = child.stdout.take().ok_or("no stdout")?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if line.starts_with("dropsync-server listening ") {
                        let _ = tx.send(line);
                    }
                }
            });
            let mut p = Proc {
                bin_name: bin_name.clone(),
                name: name.to_owned(),
                child: Some(child),
                pgid,
                pid: Cell::new(0),
                log: spec.log.clone(),
                listening: None,
                time_file: spec.time_file.clone(),
                started,
            };
            match rx.recv_timeout(Duration::from_secs(15)) {
                Ok(l) => listening = Some(l),
                Err(_) => {
                    p.stop();
                    return Err(format!("{name} printed no listening line; log {}", spec.log.display()).into());
                }
            }
            p.listening = listening;
            p.pid.set(find_leaf(pgid, &bin_name, Duration::from_secs(3)));
            return Ok(p);
        }
        let pid = find_leaf(pgid, &bin_name, Duration::from_millis(3));
        Ok(Proc {
            bin_name,
            name: name.to_owned(),
            child: Some(child),
            pgid,
            pid: Cell::new(pid),
            log: spec.log,
            listening,
            time_file: spec.time_file,
            started,
        })
    }

    /// Pid of the program itself, looked up under its wrappers the first
    /// time it is there; 0 while it is not (not started yet, or gone).
    pub fn pid(&self) -> u32 {
        if self.pid.get() == 0 && self.child.is_some() {
            self.pid.set(find_leaf_once(self.pgid, &self.bin_name));
        }
        self.pid.get()
    }

    /// `/proc/<pid>/status` of the program, if still running.
    pub fn status(&self) -> Option<ProcStatus> {
        match self.pid() {
            0 => None,
            pid => proc_status(pid),
        }
    }

    /// The listening ports of a server: (send, receive).
    pub fn ports(&self) -> R<(u16, u16)> {
        let line = self.listening.as_deref().ok_or("no listening line")?;
        let port = |key: &str| -> Option<u16> {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(key))
                .and_then(|v| v.rsplit(':').next())
                .and_then(|p| p.parse().ok())
        };
        match (port("send="), port("receive=")) {
            (Some(s), Some(r)) => Ok((s, r)),
            _ => Err(format!("bad listening line {line:?}").into()),
        }
    }

    /// Waits for the program to exit by itself (bounded by its `timeout`),
    /// sampling VmHWM meanwhile. Returns (wall time since start, exit
    /// status, peak RSS in KiB: from GNU time if it wrapped the program,
    /// else the last VmHWM sampled).
    pub fn wait_exit(&mut self) -> R<(Duration, ExitStatus, u64)> {
        let mut child = self.child.take().ok_or("already reaped")?;
        let mut sampled = 0u64;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if self.pid.get() == 0 {
                self.pid.set(find_leaf_once(self.pgid, &self.bin_name));
            }
            if self.pid.get() != 0 {
                if let Some(s) = proc_status(self.pid.get()) {
                    sampled = sampled.max(s.vm_hwm_kib);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        let elapsed = self.started.elapsed();
        self.unregister();
        let from_time = self
            .time_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| t.lines().rev().find_map(|l| l.trim().parse::<u64>().ok()));
        Ok((elapsed, status, from_time.unwrap_or(sampled)))
    }

    fn unregister(&self) {
        GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|&g| g != self.pgid);
    }

    /// SIGTERM to the group, then (after 10 s) SIGKILL; reaps. Returns the
    /// exit status of the wrapper (the program's, or 124 on timeout).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal_group(self.pgid, "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut status = None;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                status = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if status.is_none() {
            eprintln!("bench: {} ignored SIGTERM for 10 s; SIGKILL", self.name);
            signal_group(self.pgid, "KILL");
            status = child.wait().ok();
        }
        // Anything left in the group (e.g. the program under `time`).
        signal_group(self.pgid, "KILL");
        self.unregister();
        status
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}

/// Runs a short command to completion under `timeout`, in its own group,
/// output to `log`; returns its wall time. Fails on a non-zero exit.
pub fn run_timed(name: &str, bin: &str, args: &[String], limit: Duration, log: &Path) -> R<Duration> {
    let mut p = Proc::start(
        name,
        Spec {
            bin: PathBuf::from(bin),
            args: args.to_vec(),
            limit,
            log: log.to_path_buf(),
            read_listening: false,
            time_file: None,
            env: Vec::new(),
        },
    )?;
    let (d, st, _) = p.wait_exit()?;
    if !st.success() {
        return Err(format!("{name} failed ({st}); log {}", log.display()).into());
    }
    Ok(d)
}
