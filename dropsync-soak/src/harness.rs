//! One seeded run: the real server and 2–5 real clients on temp folders over
//! loopback, a random workload of file changes and faults, then quiescence
//! and the six checks.
//!
//! # The workload
//! Each step draws one action from the seed: on a random client, create a
//! file (empty, small, medium or several MiB), modify one (append,
//! truncate, rewrite), delete one, create nested folders with a file in
//! them, rename one (the client sees a delete and a create), delete a whole
//! folder, or write the same path on two or three clients at once (the
//! same instant, or a few ms to a few hundred apart); or a
//! fault: `kill -9` a client (restarted a few steps later), `kill -9` the
//! server (restarted a few steps later), SIGSTOP a client for longer than
//! the dead-peer timeout (then SIGCONT), or stop a client and run it once
//! with `--once` before starting it again. Between steps the harness pauses
//! for a random 0–250 ms: that timing is part of the workload (it decides
//! which changes race), never a way to wait for something. Every wait for
//! a state is a poll with a deadline.
//!
//! The seed also draws the set-up: 2–5 clients, each with its own chunk
//! size, `--parallel`, debounce (5, 20 or 50 ms) and link (direct, or
//! through a pair of `LatencyProxy`s adding 3 or 10 ms each way, so that a
//! delivery and a conflicting upload overlap as they do over a WAN), and
//! the server's `--parallel` and chunk size. Every process runs with
//! `--keepalive-secs 1 --dead-peer-secs 3`, the clients with
//! `--rescan-secs 1`, the server with `--workers 2`.
//!
//! Every step draws from its own generator forked off the seed's, so the
//! sequence of actions, faults and pauses is fixed by the seed even when
//! what a step finds in a folder (which depends on timing) differs between
//! runs, and with it which existing file an action picks. A replay runs the
//! same workload; whether a race goes the same way again is up to the
//! scheduler.
//!
//! # Changes are atomic for the client
//! The harness changes a folder only while its client cannot run: the
//! client is frozen with SIGSTOP (every thread confirmed stopped), the
//! change is made, and SIGCONT resumes it; a client that is down or
//! already stopped is simply changed. So what the harness reads as the
//! *prior* content is exactly what the client had, and the client never
//! sees a half-written file or replaces a file between the harness's read
//! and write. (Those races exist for real users too, but no sync tool can
//! keep a write made into a file that is being replaced, and no checker can
//! tell what a user "saw" then; freezing keeps every verdict exact.)
//!
//! # The checks (after quiescence: no more changes, every process running)
//! 1. convergence: every client folder, the server's view (its META-DATA
//!    and blobs) and a fresh `client --once` folder hold the same files,
//!    stable for [`STABLE_FOR`];
//! 2. no lost work, 3. no resurrection, 4. no torn files: see `model.rs`;
//! 5. no debris: no temp files in any `.dropsync/` or the server root, no
//!    orphan blobs after a restart, nothing else in the run folder or the
//!    working directory;
//! 6. no crash: no process exits unless the harness kills it, every
//!    `--once` and every SIGTERM ends with status 0 (sent once the process
//!    has logged that it is up: before its `main` runs, SIGTERM can only
//!    kill), and no log reports a panic.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropsync_testkit::{ClientProc, LatencyProxy, ServerProc};

use crate::model::{History, Tree, Version};
use crate::names::is_conflict_copy;
use crate::procs;
use crate::rng::Rng;
use crate::views::{self, TreeCache};

/// Keep-alive interval of every process, in seconds.
pub const KEEPALIVE_SECS: u64 = 1;
/// Dead-peer timeout of every process, in seconds: short, so that a
/// SIGSTOP past it costs only a few seconds.
pub const DEAD_PEER_SECS: u64 = 3;
/// Clients' periodic rescan, in seconds.
pub const RESCAN_SECS: u64 = 1;
/// Clients' longest debounce, in milliseconds (each client draws 5, 20 or
/// this).
pub const DEBOUNCE_MS: u64 = 50;
/// Server worker threads.
pub const SERVER_WORKERS: u32 = 2;
/// How long every folder must stay identical and unchanged to count as
/// idle: longer than a debounce plus a rescan plus a keep-alive round.
pub const STABLE_FOR: Duration = Duration::from_secs(3);
/// Longest wait for quiescence before convergence is declared failed.
/// Generous: a client may be in a 5 s reconnect backoff, and a stale change
/// may wait a dead-peer timeout for a reply.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a `--once` run may take.
pub const ONCE_DEADLINE: Duration = Duration::from_secs(60);
/// Polling interval while waiting for quiescence.
const POLL: Duration = Duration::from_millis(200);
/// Longest random pause between two steps (workload timing).
const MAX_PAUSE_MS: u64 = 250;
/// Files of several MiB per run (each costs real time to hash and send).
const MAX_BIG_FILES: u32 = 3;
/// Fault budgets per run.
const MAX_SERVER_KILLS: u32 = 2;
const MAX_CLIENT_KILLS: u32 = 3;
const MAX_STOPS: u32 = 2;
const MAX_ONCE: u32 = 2;

/// Paths the workload keeps coming back to, so that clients collide. No
/// file name is also a folder name.
const POOL: &[&str] = &[
    "a.txt",
    "b.txt",
    "c.bin",
    "README",
    "arch.tar.gz",
    "docs/x.txt",
    "docs/y.md",
    "docs/deep/z.dat",
    "n0/m0/f0.txt",
    "n1/m1/f1.txt",
];

/// Every kind of action the workload has, as counted in [`Summary::kinds`].
pub const KINDS: &[&str] = &[
    "create",
    "modify",
    "delete",
    "nested",
    "rename",
    "delete-folder",
    "concurrent",
    "kill-client",
    "kill-server",
    "stop-client",
    "once",
];

/// How a run is shaped beyond its seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Workload steps before quiescence.
    pub steps: usize,
    /// Print the operation log while it happens.
    pub echo: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options { steps: 40, echo: false }
    }
}

/// The command that replays `seed` with `steps` steps.
pub fn replay_command(seed: u64, steps: usize) -> String {
    format!(
        "cargo build --workspace --bins && DROPSYNC_SOAK_SEED={seed} DROPSYNC_SOAK_STEPS={steps} \
         cargo test -p dropsync-soak --test convergence -- --ignored --exact replay --nocapture   \
         (or: make soak SEED={seed} STEPS={steps})"
    )
}

/// What a successful run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Number of clients.
    pub clients: usize,
    /// Changes made to folders.
    pub events: usize,
    /// How many times each kind of action ran.
    pub kinds: BTreeMap<&'static str, u32>,
    /// Files at the end, and how many of them are conflict copies.
    pub files: usize,
    /// Conflict copies at the end.
    pub copies: usize,
    /// Seconds until quiescence was reached.
    pub converge_secs: f64,
    /// Seconds for the whole run.
    pub secs: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        write!(
            f,
            "seed {}: ok in {:.1}s ({} clients, {} changes, {} files of which {} conflict copies, idle after {:.1}s; {})",
            self.seed,
            self.secs,
            self.clients,
            self.events,
            self.files,
            self.copies,
            self.converge_secs,
            kinds.join(" ")
        )
    }
}

/// A failed run: the whole report (seed, replay command, what failed, the
/// operation log, where the logs are).
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// The invariants that failed (0: the harness itself could not go on).
    pub invariants: BTreeSet<u8>,
    /// The report to print.
    pub report: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.report)
    }
}

/// One thing found wrong.
#[derive(Debug)]
struct Problem {
    /// 1–6, or 0 when the harness itself failed.
    invariant: u8,
    text: String,
}

fn problem(invariant: u8, text: impl Into<String>) -> Problem {
    Problem { invariant, text: text.into() }
}

fn harness_err(e: impl std::fmt::Display) -> Problem {
    problem(0, format!("harness: {e}"))
}

const INVARIANTS: [&str; 7] = [
    "harness",
    "1 convergence",
    "2 no lost work",
    "3 no resurrection",
    "4 no torn files",
    "5 no debris",
    "6 no crash",
];

/// The run's folder under the temp dir: removed after a successful run,
/// kept (and named in the report) after a failure.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PState {
    Running,
    /// SIGSTOPped by a fault, until then.
    Stopped(Instant),
    /// Killed; started again at that step.
    Dead(usize),
}

struct Client {
    label: String,
    folder: PathBuf,
    chunk: u32,
    args: Vec<String>,
    proc: Option<ClientProc>,
    state: PState,
    /// How many "syncing" lines its log had before the current process
    /// started: one more means that process is up (see [`Run::wait_ready`]).
    starts_logged: usize,
    /// The ports it connects to: the server's, or those of its two latency
    /// proxies (a WAN-like link, so that deliveries and uploads overlap).
    ports: (u16, u16),
    /// Its proxies, if it has a delay (they outlive server restarts: the
    /// server comes back on the same ports).
    _proxies: Vec<LatencyProxy>,
}

/// The line a client logs once it has loaded its state, after it installed
/// its SIGTERM handling.
const READY_LINE: &str = "] syncing ";

/// How long a freshly started client may take to log [`READY_LINE`].
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// How a file is changed.
#[derive(Clone, Copy, Debug)]
enum How {
    /// New content of a random size.
    Fresh,
    Append,
    Truncate,
}

struct Run {
    seed: u64,
    opts: Options,
    rng: Rng,
    dir: RunDir,
    cwd_before: Vec<String>,
    server: ServerProc,
    server_root: PathBuf,
    server_up: bool,
    server_restart_at: usize,
    server_kills: u32,
    clients: Vec<Client>,
    history: History,
    log: Vec<String>,
    started: Instant,
    kinds: BTreeMap<&'static str, u32>,
    big_files: u32,
    client_kills: u32,
    stops: u32,
    onces: u32,
    config: String,
    converge_secs: f64,
}

/// Runs seed `seed`.
pub fn run(seed: u64, opts: &Options) -> Result<Summary, Failure> {
    let started = Instant::now();
    let mut run = match Run::start(seed, opts) {
        Ok(r) => r,
        Err(p) => {
            return Err(Failure {
                seed,
                invariants: [p.invariant].into(),
                report: format!("dropsync-soak: seed {seed} could not start: {}", p.text),
            })
        }
    };
    let problems = match catch_unwind(AssertUnwindSafe(|| run.drive())) {
        Ok(p) => p,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            vec![harness_err(format!("panicked: {what}"))]
        }
    };
    if problems.is_empty() {
        let end = views::tree(&run.clients[0].folder);
        let copies = end.keys().filter(|k| is_conflict_copy(k)).count();
        return Ok(Summary {
            seed,
            clients: run.clients.len(),
            events: run.history.events.len(),
            kinds: run.kinds.clone(),
            files: end.len(),
            copies,
            converge_secs: run.converge_secs,
            secs: started.elapsed().as_secs_f64(),
        });
    }
    run.dir.keep = true;
    Err(run.failure(&problems))
}

impl Run {
    fn start(seed: u64, opts: &Options) -> Result<Self, Problem> {
        let mut rng = Rng::new(seed);
        let n = rng.range(2, 5) as usize;
        let server_parallel = rng.range(1, 4);
        let server_chunk = *rng.pick(&[64 * 1024, 256 * 1024, 1024 * 1024]);
        let path = std::env::temp_dir().join(format!("dropsync-soak-{seed}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).map_err(harness_err)?;
        // DROPSYNC_SOAK_KEEP=1 keeps the folders and logs of passing runs too.
        let keep = std::env::var("DROPSYNC_SOAK_KEEP").is_ok_and(|v| !v.is_empty() && v != "0");
        let dir = RunDir { path, keep };
        let cwd_before = views::names_in(Path::new("."));
        let server_root = dir.path.join("server");
        let server_args = [
            "--workers".to_owned(),
            SERVER_WORKERS.to_string(),
            "--keepalive-secs".to_owned(),
            KEEPALIVE_SECS.to_string(),
            "--dead-peer-secs".to_owned(),
            DEAD_PEER_SECS.to_string(),
            "--parallel".to_owned(),
            server_parallel.to_string(),
            "--chunk-size".to_owned(),
            server_chunk.to_string(),
        ];
        let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
        // DROPSYNC_SOAK_SECURE=1: secure mode (TLS, every client enrolled
        // before the server starts, and pinned to its key), so that the
        // faults hit TLS connections too. The seeds' scenarios are the same.
        let secure = std::env::var("DROPSYNC_SOAK_SECURE").is_ok_and(|v| v == "1");
        let pin = if secure {
            let folders: Vec<PathBuf> =
                (0..n).map(|i| dir.path.join(format!("c{i}"))).chain([dir.path.join("verify")]).collect();
            Some(enrol(&server_root, &folders)?)
        } else {
            None
        };
        let server = ServerProc::start(&server_root, &server_args);
        let mut config = format!("{}server {} ; ", if secure { "SECURE (DROPSYNC_SOAK_SECURE=1) " } else { "" }, server_args.join(" "));
        let mut clients = Vec::new();
        for i in 0..n {
            let label = format!("c{i}");
            let delay = Duration::from_millis(*rng.pick(&[0u64, 0, 3, 10]));
            // Stop-and-wait: tiny chunks over a delayed link would make a
            // file of several MiB take minutes.
            let chunks: &[u32] = if delay.is_zero() { &[1024, 8 * 1024, 64 * 1024, 1024 * 1024] } else { &[64 * 1024, 1024 * 1024] };
            let chunk = *rng.pick(chunks);
            let parallel = rng.range(1, 3);
            let debounce = *rng.pick(&[5u64, 20, DEBOUNCE_MS]);
            let mut args: Vec<String> = [
                "--label",
                &label,
                "--rescan-secs",
                &RESCAN_SECS.to_string(),
                "--keepalive-secs",
                &KEEPALIVE_SECS.to_string(),
                "--dead-peer-secs",
                &DEAD_PEER_SECS.to_string(),
                "--debounce-ms",
                &debounce.to_string(),
                "--parallel",
                &parallel.to_string(),
                // The model has every delete reach the server; the delete
                // guard holds a user's mass deletes until confirmed, which
                // random edits of a small folder trip (it has tests of its
                // own: dropsync-client/tests/delete_guard.rs).
                "--no-delete-guard",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            if let Some(fp) = &pin {
                args.extend(["--server-fingerprint".to_owned(), fp.clone()]);
            }
            let _ = write!(config, "{label}: chunk {chunk} parallel {parallel} debounce {debounce}ms delay {delay:?}; ");
            let mut proxies = Vec::new();
            let mut ports = (server.send_port, server.recv_port);
            if !delay.is_zero() {
                let to = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
                proxies.push(LatencyProxy::start(to(server.send_port), delay).map_err(harness_err)?);
                proxies.push(LatencyProxy::start(to(server.recv_port), delay).map_err(harness_err)?);
                ports = (proxies[0].port, proxies[1].port);
            }
            clients.push(Client {
                folder: dir.path.join(&label),
                label,
                chunk,
                args,
                proc: None,
                state: PState::Dead(0),
                starts_logged: 0,
                ports,
                _proxies: proxies,
            });
        }
        let mut run = Run {
            seed,
            opts: opts.clone(),
            rng,
            dir,
            cwd_before,
            server,
            server_root,
            server_up: true,
            server_restart_at: 0,
            server_kills: 0,
            clients,
            history: History::default(),
            log: Vec::new(),
            started: Instant::now(),
            kinds: BTreeMap::new(),
            big_files: 0,
            client_kills: 0,
            stops: 0,
            onces: 0,
            config,
            converge_secs: 0.0,
        };
        for c in 0..n {
            run.start_client(c);
        }
        run.note(format!("start: {} clients; {}", n, run.config));
        Ok(run)
    }

    fn note(&mut self, line: String) {
        let line = format!("[{:7.3}s] {line}", self.started.elapsed().as_secs_f64());
        if self.opts.echo {
            eprintln!("{line}");
        }
        self.log.push(line);
    }

    fn count(&mut self, kind: &'static str) {
        *self.kinds.entry(kind).or_insert(0) += 1;
    }

    /// The workload, quiescence and every check; the problems found.
    fn drive(&mut self) -> Vec<Problem> {
        for step in 0..self.opts.steps {
            if let Err(p) = self.step(step) {
                return vec![p];
            }
        }
        self.finish()
    }

    // ---- processes -------------------------------------------------------

    fn start_client(&mut self, c: usize) {
        let cl = &mut self.clients[c];
        let (send, recv) = cl.ports;
        let args: Vec<&str> = cl.args.iter().map(String::as_str).collect();
        let log = cl.folder.with_extension("client.log");
        cl.starts_logged = fs::read_to_string(log).unwrap_or_default().matches(READY_LINE).count();
        cl.proc = Some(ClientProc::start_with_ports(send, recv, &cl.folder, cl.chunk, &args));
        cl.state = PState::Running;
    }

    /// Waits until client `c`'s current process has logged that it is up.
    /// A SIGTERM sent before a process has even reached its `main` can only
    /// kill it; after that line it must be a graceful stop (section 9).
    fn wait_ready(&self, c: usize) -> Result<(), Problem> {
        let cl = &self.clients[c];
        let Some(p) = cl.proc.as_ref() else { return Ok(()) };
        let ready = dropsync_testkit::wait_until(READY_DEADLINE, || {
            p.log().matches(READY_LINE).count() > cl.starts_logged || procs::exited(p.pid())
        });
        if ready {
            Ok(())
        } else {
            Err(problem(6, format!("{} did not log {READY_LINE:?} within {READY_DEADLINE:?}", cl.label)))
        }
    }

    fn client_pid(&self, c: usize) -> Option<u32> {
        self.clients[c].proc.as_ref().map(ClientProc::pid)
    }

    /// Invariant 6 during the run: every process the harness believes alive
    /// is. One that exited by itself is reaped and reported with its status.
    fn check_alive(&mut self) -> Result<(), Problem> {
        if self.server_up && procs::exited(self.server.pid()) {
            let status = self.server.terminate();
            return Err(problem(6, format!("the server exited by itself ({status:?}); log tail:\n{}", tail(&self.server.log(), 30))));
        }
        for c in 0..self.clients.len() {
            if matches!(self.clients[c].state, PState::Dead(_)) {
                continue;
            }
            let Some(pid) = self.client_pid(c) else { continue };
            if procs::exited(pid) {
                let cl = &mut self.clients[c];
                let Some(mut p) = cl.proc.take() else { continue };
                let status = p.wait(Duration::ZERO);
                return Err(problem(
                    6,
                    format!("client {} exited by itself ({status:?}); log tail:\n{}", cl.label, tail(&p.log(), 30)),
                ));
            }
        }
        Ok(())
    }

    /// Restarts what is due, resumes stopped clients whose time has come.
    fn housekeeping(&mut self, step: usize) -> Result<(), Problem> {
        self.check_alive()?;
        if !self.server_up && step >= self.server_restart_at {
            self.server.restart();
            self.server_up = true;
            self.note(format!("step {step}: server restarted"));
        }
        for c in 0..self.clients.len() {
            match self.clients[c].state {
                PState::Dead(at) if step >= at => {
                    self.start_client(c);
                    self.note(format!("step {step}: c{c} restarted"));
                }
                PState::Stopped(until) if Instant::now() >= until => self.resume(c, step)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn resume(&mut self, c: usize, step: usize) -> Result<(), Problem> {
        if let Some(pid) = self.client_pid(c) {
            procs::resume(pid).map_err(harness_err)?;
        }
        self.clients[c].state = PState::Running;
        self.note(format!("step {step}: c{c} continued (SIGCONT)"));
        Ok(())
    }

    /// Runs `f` with the given clients unable to run (see the module doc).
    fn frozen<T>(&mut self, cs: &[usize], f: impl FnOnce(&mut Self) -> Result<T, Problem>) -> Result<T, Problem> {
        let mut pids = Vec::new();
        let mut out = Ok(());
        for &c in cs {
            if self.clients[c].state != PState::Running {
                continue;
            }
            if let Some(pid) = self.client_pid(c) {
                if let Err(e) = procs::stop(pid) {
                    out = Err(harness_err(e));
                }
                pids.push(pid);
            }
        }
        let result = out.and_then(|()| f(self));
        for pid in pids {
            let _ = procs::resume(pid);
        }
        result
    }

    // ---- the workload ----------------------------------------------------

    fn step(&mut self, step: usize) -> Result<(), Problem> {
        self.housekeeping(step)?;
        // One draw from the seed's stream per step (see the module doc).
        let mut r = self.rng.fork();
        let pause = Duration::from_millis(self.rng.range(0, MAX_PAUSE_MS));
        let n = self.clients.len();
        let c = r.index(n);
        // create, modify, delete, nested, rename, delete-folder, concurrent,
        // kill-client, kill-server, stop-client, once
        let action = r.weighted(&[16, 22, 10, 8, 8, 2, 12, 4, 2, 3, 3]);
        let done = match action {
            7 => self.kill_client(&mut r, step)?,
            8 => self.kill_server(&mut r, step)?,
            9 => self.stop_client(&mut r, step)?,
            10 => self.once_restart(&mut r, step)?,
            _ => false,
        };
        if !done {
            let action = if action >= 7 { 0 } else { action };
            self.file_op(&mut r, step, c, action)?;
        }
        // Workload timing, not synchronisation (see the module doc).
        std::thread::sleep(pause);
        Ok(())
    }

    fn file_op(&mut self, r: &mut Rng, step: usize, c: usize, action: usize) -> Result<(), Problem> {
        let existing = views::files(&self.clients[c].folder);
        let pick_existing = |r: &mut Rng| (!existing.is_empty()).then(|| existing[r.index(existing.len())].0.clone());
        let line = match action {
            1 => match pick_existing(r) {
                Some(path) => {
                    let how = *r.pick(&[How::Append, How::Append, How::Truncate, How::Fresh]);
                    self.count("modify");
                    self.frozen(&[c], |me| me.write(r, step, c, &path, how))?
                }
                None => {
                    let path = pool(r);
                    self.count("create");
                    self.frozen(&[c], |me| me.write(r, step, c, &path, How::Fresh))?
                }
            },
            2 => match pick_existing(r) {
                Some(path) => {
                    self.count("delete");
                    self.frozen(&[c], |me| me.delete(step, c, &path))?
                }
                None => "nothing to delete".to_owned(),
            },
            3 => {
                let dir = if r.chance(40) {
                    format!("n{}/m{}/o{}/p{}", r.below(2), r.below(3), r.below(2), r.below(2))
                } else {
                    format!("n{}/m{}", r.below(2), r.below(3))
                };
                let path = format!("{dir}/f{}.txt", r.below(3));
                let empty = r.chance(30).then(|| format!("n{}/empty{}/e{}", r.below(2), r.below(2), r.below(2)));
                self.count("nested");
                self.frozen(&[c], |me| {
                    let mut line = me.write(r, step, c, &path, How::Fresh)?;
                    if let Some(e) = empty {
                        if fs::create_dir_all(me.clients[c].folder.join(&e)).is_ok() {
                            let _ = write!(line, "; empty folder {e}");
                        }
                    }
                    Ok(line)
                })?
            }
            4 => match pick_existing(r) {
                Some(from) => {
                    let to = if r.chance(50) {
                        pool(r)
                    } else {
                        format!("{}r{}.txt", r.pick(&["", "docs/"]), r.below(4))
                    };
                    if to == from {
                        "rename onto itself skipped".to_owned()
                    } else {
                        self.count("rename");
                        self.frozen(&[c], |me| me.rename(step, c, &from, &to))?
                    }
                }
                None => "nothing to rename".to_owned(),
            },
            5 => {
                let dirs: Vec<String> = views::names_in(&self.clients[c].folder)
                    .into_iter()
                    .filter(|d| !d.starts_with(".dropsync") && self.clients[c].folder.join(d).is_dir())
                    .collect();
                if dirs.is_empty() {
                    "no folder to delete".to_owned()
                } else {
                    let d = dirs[r.index(dirs.len())].clone();
                    self.count("delete-folder");
                    self.frozen(&[c], |me| me.delete_folder(step, c, &d))?
                }
            }
            6 => {
                let n = self.clients.len();
                let k = if n >= 3 && r.chance(30) { 3 } else { 2 };
                let mut who: Vec<usize> = (0..n).collect();
                // Partial Fisher-Yates: the first k are a random choice.
                for i in 0..k {
                    let j = i + r.index(n - i);
                    who.swap(i, j);
                }
                who.truncate(k);
                let path = match pick_existing(r) {
                    Some(p) if r.chance(50) => p,
                    _ => pool(r),
                };
                let deletes: Vec<bool> = who.iter().map(|_| r.chance(20)).collect();
                self.count("concurrent");
                let change = |me: &mut Self, r: &mut Rng, w: usize, del: bool| {
                    let exists = me.clients[w].folder.join(&path).is_file();
                    if del && exists {
                        me.delete(step, w, &path)
                    } else {
                        me.write(r, step, w, &path, How::Fresh)
                    }
                };
                if r.chance(35) {
                    // The same instant for every client: their uploads race
                    // for the server's lock on the path.
                    self.frozen(&who.clone(), |me| {
                        let mut parts = Vec::new();
                        for (&w, &del) in who.iter().zip(&deletes) {
                            parts.push(change(me, r, w, del)?);
                        }
                        Ok(format!("at once: {}", parts.join(" | ")))
                    })?
                } else {
                    // A few ms to a few hundred apart: one upload may commit
                    // while the other client's starts before it has heard
                    // of it, which is the server's stale-change rule's case.
                    let mut parts = Vec::new();
                    for (i, (&w, &del)) in who.iter().zip(&deletes).enumerate() {
                        if i > 0 {
                            let gap = r.range(0, 250);
                            std::thread::sleep(Duration::from_millis(gap));
                            parts.push(format!("+{gap}ms"));
                        }
                        parts.push(self.frozen(&[w], |me| change(me, r, w, del))?);
                    }
                    format!("nearly at once: {}", parts.join(" | "))
                }
            }
            _ => {
                let path = if r.chance(75) {
                    pool(r)
                } else {
                    format!("{}f{}.dat", r.pick(&["", "docs/", "n0/m1/"]), r.below(6))
                };
                self.count("create");
                self.frozen(&[c], |me| me.write(r, step, c, &path, How::Fresh))?
            }
        };
        self.note(format!("step {step}: {line}"));
        Ok(())
    }

    /// A random size: empty, small, medium, or (a few per run) several MiB.
    fn size(&mut self, r: &mut Rng) -> usize {
        match r.weighted(&[6, 64, 24, 6]) {
            0 => 0,
            1 => r.range(1, 4096) as usize,
            3 if self.big_files < MAX_BIG_FILES => {
                self.big_files += 1;
                r.range(1 << 20, 4 << 20) as usize
            }
            _ => r.range(4097, 256 * 1024) as usize,
        }
    }

    /// New content: a header naming seed, step, client and path (so every
    /// content is unique), then random bytes, half the time text-like.
    fn fresh(&mut self, r: &mut Rng, step: usize, c: usize, path: &str) -> Vec<u8> {
        let size = self.size(r);
        if size == 0 {
            return Vec::new();
        }
        let mut v = format!("dropsync-soak seed={} step={step} c{c} {path}\n", self.seed).into_bytes();
        let start = v.len();
        v.resize(size.max(start), 0);
        let mut bytes = r.fork();
        bytes.fill(&mut v[start..]);
        if r.chance(50) {
            for b in &mut v[start..] {
                *b = if *b % 32 == 0 { b'\n' } else { b'a' + *b % 26 };
            }
        }
        v
    }

    /// The content at `path` in client `c`'s folder, checked to be one the
    /// harness wrote (invariant 4 observed during the run: nothing in a
    /// folder is ever half a transfer, since files arrive by rename).
    fn prior(&self, c: usize, path: &str) -> Result<Option<Vec<u8>>, Problem> {
        let full = self.clients[c].folder.join(path);
        let bytes = match fs::symlink_metadata(&full) {
            Ok(md) if md.is_file() => fs::read(&full).map_err(harness_err)?,
            Ok(_) => return Err(harness_err(format!("{} is not a regular file", full.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(20) => return Ok(None),
            Err(e) => return Err(harness_err(e)),
        };
        let v = Version::of(&bytes);
        if !self.history.contents.contains_key(&v.md5) {
            return Err(problem(
                4,
                format!(
                    "c{c}'s {path:?} holds {}, a content the harness never wrote (seen during the run)\n    events on the path:\n{}",
                    self.history.describe(Some(v)),
                    self.history.show_path(path)
                ),
            ));
        }
        Ok(Some(bytes))
    }

    fn write(&mut self, r: &mut Rng, step: usize, c: usize, path: &str, how: How) -> Result<String, Problem> {
        let full = self.clients[c].folder.join(path);
        if full.is_dir() {
            return Ok(format!("c{c} write {path:?}: a folder is there, skipped"));
        }
        let prior_bytes = self.prior(c, path)?;
        let prior = prior_bytes.as_deref().map(Version::of);
        let (bytes, how_text) = match (how, prior_bytes) {
            (How::Append, Some(mut b)) => {
                let mut tail = format!("+ step={step} c{c}\n").into_bytes();
                let extra = r.range(0, 2048) as usize;
                let start = tail.len();
                tail.resize(start + extra, b'x');
                r.fork().fill(&mut tail[start..]);
                b.extend_from_slice(&tail);
                (b, "append")
            }
            (How::Truncate, Some(mut b)) if !b.is_empty() => {
                let len = b.len() as u64;
                let keep = if r.chance(10) { 0 } else { r.range(len / 2, len - 1) };
                b.truncate(keep as usize);
                (b, "truncate")
            }
            (_, Some(_)) => (self.fresh(r, step, c, path), "rewrite"),
            (_, None) => (self.fresh(r, step, c, path), "create"),
        };
        if let Some(parent) = full.parent() {
            if let Err(e) = fs::create_dir_all(parent) {
                return Ok(format!("c{c} write {path:?}: cannot create its folder ({e}), skipped"));
            }
        }
        fs::write(&full, &bytes).map_err(harness_err)?;
        let v = self.history.write(step, c, path, prior, &bytes);
        Ok(format!(
            "c{c} {how_text} {path:?} {} -> {} (e{})",
            self.history.describe(prior),
            self.history.describe(Some(v)),
            self.history.events.len() - 1
        ))
    }

    fn delete(&mut self, step: usize, c: usize, path: &str) -> Result<String, Problem> {
        let Some(bytes) = self.prior(c, path)? else { return Ok(format!("c{c} delete {path:?}: gone already")) };
        let prior = Version::of(&bytes);
        fs::remove_file(self.clients[c].folder.join(path)).map_err(harness_err)?;
        self.history.delete(step, c, path, prior);
        Ok(format!("c{c} delete {path:?} {} (e{})", self.history.describe(Some(prior)), self.history.events.len() - 1))
    }

    fn rename(&mut self, step: usize, c: usize, from: &str, to: &str) -> Result<String, Problem> {
        let folder = self.clients[c].folder.clone();
        if folder.join(to).is_dir() {
            return Ok(format!("c{c} rename {from:?} -> {to:?}: a folder is there, skipped"));
        }
        let Some(bytes) = self.prior(c, from)? else { return Ok(format!("c{c} rename {from:?}: gone already")) };
        let over = self.prior(c, to)?.map(|b| Version::of(&b));
        if let Some(parent) = folder.join(to).parent() {
            if let Err(e) = fs::create_dir_all(parent) {
                return Ok(format!("c{c} rename to {to:?}: cannot create its folder ({e}), skipped"));
            }
        }
        fs::rename(folder.join(from), folder.join(to)).map_err(harness_err)?;
        let v = Version::of(&bytes);
        self.history.delete(step, c, from, v);
        self.history.write(step, c, to, over, &bytes);
        Ok(format!("c{c} rename {from:?} -> {to:?} {} over {}", self.history.describe(Some(v)), self.history.describe(over)))
    }

    fn delete_folder(&mut self, step: usize, c: usize, dir: &str) -> Result<String, Problem> {
        let folder = self.clients[c].folder.clone();
        let inside: Vec<String> = views::files(&folder.join(dir)).into_iter().map(|(n, _)| format!("{dir}/{n}")).collect();
        let mut priors = Vec::new();
        for p in &inside {
            if let Some(b) = self.prior(c, p)? {
                priors.push((p.clone(), Version::of(&b)));
            }
        }
        fs::remove_dir_all(folder.join(dir)).map_err(harness_err)?;
        for (p, v) in &priors {
            self.history.delete(step, c, p, *v);
        }
        Ok(format!("c{c} delete folder {dir:?} with {} files", priors.len()))
    }

    // ---- faults ----------------------------------------------------------

    fn kill_client(&mut self, r: &mut Rng, step: usize) -> Result<bool, Problem> {
        let alive: Vec<usize> = (0..self.clients.len()).filter(|&c| !matches!(self.clients[c].state, PState::Dead(_))).collect();
        if self.client_kills >= MAX_CLIENT_KILLS || alive.is_empty() {
            return Ok(false);
        }
        let c = alive[r.index(alive.len())];
        let back = step + r.range(1, 6) as usize;
        if let Some(mut p) = self.clients[c].proc.take() {
            p.kill9();
        }
        self.clients[c].state = PState::Dead(back);
        self.client_kills += 1;
        self.count("kill-client");
        self.note(format!("step {step}: kill -9 c{c} (restart at step {back})"));
        Ok(true)
    }

    fn kill_server(&mut self, r: &mut Rng, step: usize) -> Result<bool, Problem> {
        if self.server_kills >= MAX_SERVER_KILLS || !self.server_up {
            return Ok(false);
        }
        self.server.kill9();
        self.server_up = false;
        self.server_restart_at = step + r.range(1, 4) as usize;
        self.server_kills += 1;
        self.count("kill-server");
        self.note(format!("step {step}: kill -9 the server (restart at step {})", self.server_restart_at));
        Ok(true)
    }

    fn stop_client(&mut self, r: &mut Rng, step: usize) -> Result<bool, Problem> {
        let running: Vec<usize> = (0..self.clients.len()).filter(|&c| self.clients[c].state == PState::Running).collect();
        if self.stops >= MAX_STOPS || running.is_empty() {
            return Ok(false);
        }
        let c = running[r.index(running.len())];
        let Some(pid) = self.client_pid(c) else { return Ok(false) };
        let extra = Duration::from_millis(r.range(500, 2500));
        procs::stop(pid).map_err(harness_err)?;
        let until = Instant::now() + Duration::from_secs(DEAD_PEER_SECS) + extra;
        self.clients[c].state = PState::Stopped(until);
        self.stops += 1;
        self.count("stop-client");
        self.note(format!("step {step}: SIGSTOP c{c} for {:.1}s", (Duration::from_secs(DEAD_PEER_SECS) + extra).as_secs_f64()));
        Ok(true)
    }

    /// Stops a client (SIGTERM, which must exit 0, or kill -9), runs it
    /// once with `--once` (which must exit 0), and starts it again.
    fn once_restart(&mut self, r: &mut Rng, step: usize) -> Result<bool, Problem> {
        let candidates: Vec<usize> =
            (0..self.clients.len()).filter(|&c| !matches!(self.clients[c].state, PState::Stopped(_))).collect();
        if self.onces >= MAX_ONCE || !self.server_up || candidates.is_empty() {
            return Ok(false);
        }
        let c = candidates[r.index(candidates.len())];
        let graceful = r.chance(50);
        if graceful {
            self.wait_ready(c)?;
        }
        let how = match self.clients[c].proc.take() {
            Some(mut p) if graceful => {
                let status = p.terminate();
                if !status.is_some_and(|s| s.success()) {
                    return Err(problem(
                        6,
                        format!("c{c} ended with {status:?} on SIGTERM (expected 0); log tail:\n{}", tail(&p.log(), 30)),
                    ));
                }
                "SIGTERM"
            }
            Some(mut p) => {
                p.kill9();
                "kill -9"
            }
            None => "down already",
        };
        let cl = &self.clients[c];
        let (send, recv) = cl.ports;
        // The client's flags without `--rescan-secs N` (--once does not watch).
        let args: Vec<&str> = {
            let mut out = Vec::new();
            let mut skip = false;
            for a in cl.args.iter().map(String::as_str) {
                if skip {
                    skip = false;
                    continue;
                }
                if a == "--rescan-secs" {
                    skip = true;
                    continue;
                }
                out.push(a);
            }
            std::iter::once("--once").chain(out).collect()
        };
        let t = Instant::now();
        let mut once = ClientProc::start_with_ports(send, recv, &cl.folder, cl.chunk, &args);
        let status = once.wait(ONCE_DEADLINE);
        if !status.is_some_and(|s| s.success()) {
            return Err(problem(
                6,
                format!(
                    "c{c} --once ended with {status:?} after {:.1}s (expected 0 within {ONCE_DEADLINE:?}); log tail:\n{}",
                    t.elapsed().as_secs_f64(),
                    tail(&once.log(), 40)
                ),
            ));
        }
        self.start_client(c);
        self.onces += 1;
        self.count("once");
        self.note(format!("step {step}: c{c} stopped ({how}), ran --once ({:.1}s), started again", t.elapsed().as_secs_f64()));
        Ok(true)
    }

    // ---- quiescence and checks ---------------------------------------------

    fn finish(&mut self) -> Vec<Problem> {
        let steps = self.opts.steps;
        if let Err(p) = self.quiesce(steps) {
            return vec![p];
        }
        let end = match self.wait_idle() {
            Ok(t) => t,
            Err(p) => return vec![p],
        };
        let mut problems = Vec::new();
        if let Err(p) = self.verify_with_fresh_client(&end) {
            problems.push(p);
        }
        problems.extend(views::check_blobs(&self.server_root, &end).into_iter().map(|t| problem(4, t)));
        problems.extend(self.history.lost_work(&end).into_iter().map(|t| problem(2, t)));
        problems.extend(self.history.resurrections(&end).into_iter().map(|t| problem(3, t)));
        problems.extend(self.history.torn(&end).into_iter().map(|t| problem(4, t)));
        problems.extend(self.shutdown());
        problems.extend(self.debris(&end));
        problems.extend(self.panics());
        problems
    }

    /// No more changes; every process running.
    fn quiesce(&mut self, step: usize) -> Result<(), Problem> {
        self.check_alive()?;
        if !self.server_up {
            self.server.restart();
            self.server_up = true;
            self.note("quiesce: server restarted".into());
        }
        for c in 0..self.clients.len() {
            match self.clients[c].state {
                PState::Dead(_) => {
                    self.start_client(c);
                    self.note(format!("quiesce: c{c} restarted"));
                }
                PState::Stopped(until) => {
                    // The fault is "stopped past the dead-peer timeout": let
                    // it last its drawn time.
                    if let Some(left) = until.checked_duration_since(Instant::now()) {
                        std::thread::sleep(left);
                    }
                    self.resume(c, step)?;
                }
                PState::Running => {}
            }
        }
        self.note("quiesce: no more changes; every process running".into());
        Ok(())
    }

    /// Polls until every client folder and the server's view are identical
    /// and unchanged for [`STABLE_FOR`]; the common tree.
    fn wait_idle(&mut self) -> Result<Tree, Problem> {
        let t0 = Instant::now();
        let mut caches: Vec<TreeCache> = self.clients.iter().map(|_| TreeCache::default()).collect();
        let mut last: Option<(Vec<Tree>, Result<Tree, String>)> = None;
        let mut since = Instant::now();
        loop {
            self.check_alive()?;
            let trees: Vec<Tree> = self.clients.iter().zip(&mut caches).map(|(c, cache)| cache.tree(&c.folder)).collect();
            let server = views::server_tree(&self.server_root);
            let now = Instant::now();
            let same = last.as_ref().is_some_and(|(t, s)| *t == trees && *s == server);
            let agree = trees.windows(2).all(|w| w[0] == w[1]) && server.as_ref().is_ok_and(|s| *s == trees[0]);
            if !same {
                since = now;
            } else if agree && now - since >= STABLE_FOR {
                self.converge_secs = t0.elapsed().as_secs_f64();
                self.note(format!("idle after {:.1}s: {} files everywhere", self.converge_secs, trees[0].len()));
                return Ok(trees[0].clone());
            }
            if now - t0 > IDLE_DEADLINE {
                let mut names: Vec<String> = self.clients.iter().map(|c| c.label.clone()).collect();
                names.push("server".into());
                let mut all = trees;
                all.push(server.clone().unwrap_or_default());
                let mut text = format!(
                    "no quiescence within {IDLE_DEADLINE:?}: the folders and the server's view still differ{}\n",
                    server.err().map(|e| format!(" (server view: {e})")).unwrap_or_default()
                );
                text.push_str(&self.diff(&names, &all));
                return Err(problem(1, text));
            }
            last = Some((trees, server));
            std::thread::sleep(POLL);
        }
    }

    /// Every path on which the trees disagree, with what each holds.
    fn diff(&self, names: &[String], trees: &[Tree]) -> String {
        let paths: BTreeSet<&String> = trees.iter().flat_map(|t| t.keys()).collect();
        let mut out = String::new();
        for p in paths {
            let vs: Vec<Option<Version>> = trees.iter().map(|t| t.get(p).copied()).collect();
            if vs.windows(2).all(|w| w[0] == w[1]) {
                continue;
            }
            let _ = writeln!(out, "  {p:?}:");
            for (n, v) in names.iter().zip(&vs) {
                let _ = writeln!(out, "      {n:>7}: {}", self.history.describe(*v));
            }
            out.push_str(&self.history.show_path(p));
        }
        out
    }

    /// Invariant 1, third view: a new client with an empty folder, run with
    /// `--once`, ends with exactly the common tree; and that run changed
    /// nothing anywhere else.
    fn verify_with_fresh_client(&mut self, end: &Tree) -> Result<(), Problem> {
        let folder = self.dir.path.join("verify");
        let (keepalive, dead_peer) = (KEEPALIVE_SECS.to_string(), DEAD_PEER_SECS.to_string());
        let mut args =
            vec!["--once", "--label", "verify", "--keepalive-secs", &keepalive, "--dead-peer-secs", &dead_peer];
        // In secure mode the verifying client was enrolled at start too.
        let pinned = self.clients.first().and_then(|c| c.args.iter().position(|a| a == "--server-fingerprint"));
        if let (Some(i), Some(c)) = (pinned, self.clients.first()) {
            args.extend(["--server-fingerprint", c.args[i + 1].as_str()]);
        }
        let mut once = ClientProc::start_with_ports(self.server.send_port, self.server.recv_port, &folder, 64 * 1024, &args);
        let status = once.wait(ONCE_DEADLINE);
        if !status.is_some_and(|s| s.success()) {
            return Err(problem(6, format!("the verifying --once client ended with {status:?}; log tail:\n{}", tail(&once.log(), 40))));
        }
        let fresh = views::tree(&folder);
        let mut trees: Vec<Tree> = self.clients.iter().map(|c| views::tree(&c.folder)).collect();
        let mut names: Vec<String> = self.clients.iter().map(|c| c.label.clone()).collect();
        trees.push(views::server_tree(&self.server_root).unwrap_or_default());
        names.push("server".into());
        trees.push(fresh);
        names.push("verify".into());
        if trees.iter().all(|t| t == end) {
            Ok(())
        } else {
            Err(problem(1, format!("a fresh --once client (or a second look) disagrees with the idle state:\n{}", self.diff(&names, &trees))))
        }
    }

    /// Invariant 6 at the end: SIGTERM ends every process with status 0.
    fn shutdown(&mut self) -> Vec<Problem> {
        let mut out = Vec::new();
        for c in 0..self.clients.len() {
            if let Err(p) = self.wait_ready(c) {
                out.push(p);
            }
            if let Some(mut p) = self.clients[c].proc.take() {
                let status = p.terminate();
                if !status.is_some_and(|s| s.success()) {
                    out.push(problem(6, format!("c{c} ended with {status:?} on SIGTERM; log tail:\n{}", tail(&p.log(), 30))));
                }
            }
            self.clients[c].state = PState::Dead(usize::MAX);
        }
        let status = self.server.terminate();
        if !status.is_some_and(|s| s.success()) {
            out.push(problem(6, format!("the server ended with {status:?} on SIGTERM; log tail:\n{}", tail(&self.server.log(), 30))));
        }
        self.server_up = false;
        out
    }

    /// Invariant 5, after a clean shutdown and one more server start (which
    /// removes blobs orphaned by a `kill -9` between storing a blob and
    /// journaling it, as documented): only the expected files anywhere.
    fn debris(&mut self, end: &Tree) -> Vec<Problem> {
        let mut out = Vec::new();
        self.server.restart();
        let status = self.server.terminate();
        if !status.is_some_and(|s| s.success()) {
            out.push(problem(6, format!("the restarted server ended with {status:?} on SIGTERM")));
        }
        let root = &self.server_root;
        // The META-DATA and its journal, the server's key (secure mode's
        // identity, made at every start whether or not it is used) and, in
        // secure mode, the enrolment list and its lock.
        let mut expected: BTreeSet<String> =
            ["meta/metadata", "meta/metadata.journal", "meta/identity.pem", "meta/clients", "meta/clients.lock"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        match views::server_tree(root) {
            Ok(view) if view == *end => {}
            Ok(view) => out.push(problem(
                1,
                format!("the server's view after a restart differs:\n{}", self.diff(&["before".into(), "after".into()], &[end.clone(), view])),
            )),
            Err(e) => out.push(problem(1, e)),
        }
        let blobs = views::server_blobs(root).unwrap_or_default();
        for p in end.keys().filter_map(|path| blobs.get(path).cloned().flatten()) {
            expected.insert(p.strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_default());
        }
        // The versions the history keeps hold their content (issue 17).
        match views::kept_blobs(root) {
            Ok((kept, has_file)) => {
                if has_file {
                    expected.insert(format!("meta/{}", dropsync_core::history::HISTORY));
                }
                for p in kept {
                    expected.insert(p.strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_default());
                }
            }
            Err(e) => out.push(problem(5, format!("server history unreadable: {e}"))),
        }
        for f in views::all_files(root) {
            if !expected.contains(&f) {
                out.push(problem(5, format!("server root: unexpected file {f} (temp file or orphan blob)")));
            }
        }
        for c in &self.clients {
            // The snapshot, the (empty) journal that follows it, the
            // status file `client status` reads (never a half-written
            // `status.tmp`: it is renamed into place) and the client's key.
            let state = c.folder.join(".dropsync");
            let snapshot = fs::read_to_string(state.join("metadata")).unwrap_or_default();
            let generation = snapshot.lines().rev().find_map(|l| l.strip_prefix("# generation ")).unwrap_or("?");
            let journal = format!("metadata.journal.{generation}");
            for f in views::all_files(&state) {
                if f != "metadata" && f != journal && f != "status" && f != "identity.pem" && f != "server-fingerprint" {
                    out.push(problem(5, format!("{}: unexpected file .dropsync/{f}", c.label)));
                }
            }
            for n in views::names_in(&c.folder) {
                if n.starts_with(".dropsync") && n != ".dropsync" {
                    out.push(problem(5, format!("{}: unexpected {n} in the folder", c.label)));
                }
            }
        }
        let mut allowed: BTreeSet<String> = ["server", "server.server.log", "verify", "verify.client.log"].iter().map(|s| s.to_string()).collect();
        for c in &self.clients {
            allowed.insert(c.label.clone());
            allowed.insert(format!("{}.client.log", c.label));
        }
        for n in views::names_in(&self.dir.path) {
            if !allowed.contains(&n) {
                out.push(problem(5, format!("run folder: unexpected {n}")));
            }
        }
        let cwd_now = views::names_in(Path::new("."));
        for n in cwd_now.iter().filter(|n| !self.cwd_before.contains(n)) {
            out.push(problem(5, format!("working directory: new entry {n}")));
        }
        out
    }

    /// Invariant 6: no thread of any process panicked.
    fn panics(&self) -> Vec<Problem> {
        let mut logs = vec![("server".to_owned(), self.dir.path.join("server.server.log"))];
        for c in &self.clients {
            logs.push((c.label.clone(), self.dir.path.join(format!("{}.client.log", c.label))));
        }
        logs.push(("verify".into(), self.dir.path.join("verify.client.log")));
        let mut out = Vec::new();
        for (who, path) in logs {
            let text = fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines().filter(|l| l.contains("panicked at")) {
                out.push(problem(6, format!("{who} log: {line}")));
            }
        }
        out
    }

    fn failure(&self, problems: &[Problem]) -> Failure {
        let invariants: BTreeSet<u8> = problems.iter().map(|p| p.invariant).collect();
        let mut r = String::new();
        let names: Vec<&str> = invariants.iter().map(|&i| INVARIANTS[usize::from(i)]).collect();
        let _ = writeln!(r, "\n==== dropsync-soak: seed {} FAILED: {} ====", self.seed, names.join(", "));
        let _ = writeln!(r, "replay: {}", replay_command(self.seed, self.opts.steps));
        let _ = writeln!(r, "config: {}", self.config);
        let _ = writeln!(r, "logs and folders kept in {}", self.dir.path.display());
        let _ = writeln!(r, "\n-- problems --");
        for p in problems {
            let _ = writeln!(r, "[{}] {}", INVARIANTS[usize::from(p.invariant)], p.text);
        }
        let _ = writeln!(r, "\n-- operation log --");
        for l in &self.log {
            let _ = writeln!(r, "{l}");
        }
        let _ = writeln!(r, "\n-- warnings and errors in the process logs --");
        for n in views::names_in(&self.dir.path).iter().filter(|n| n.ends_with(".log")) {
            let text = fs::read_to_string(self.dir.path.join(n)).unwrap_or_default();
            let bad: Vec<&str> = text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            let _ = writeln!(r, "{n}: {} lines", bad.len());
            for l in bad.iter().rev().take(15).rev() {
                let _ = writeln!(r, "    {l}");
            }
        }
        let _ = writeln!(r, "==== end of seed {} ====", self.seed);
        Failure { seed: self.seed, invariants, report: r }
    }
}

/// A path from the pool.
fn pool(r: &mut Rng) -> String {
    (*r.pick(POOL)).to_owned()
}

/// The last `n` lines of a log.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Secure mode's set-up: the server's key (returned: its fingerprint, for
/// the clients' `--server-fingerprint`) and each folder's client key,
/// enrolled, before the server starts.
fn enrol(server_root: &Path, folders: &[PathBuf]) -> Result<String, Problem> {
    let run = |cmd: &mut std::process::Command| -> Result<String, Problem> {
        let out = cmd.output().map_err(harness_err)?;
        if !out.status.success() {
            return Err(harness_err(String::from_utf8_lossy(&out.stderr).into_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let server = dropsync_testkit::bin_path("server");
    let root = server_root.to_str().unwrap_or_default();
    let fp = run(std::process::Command::new(&server).args(["fingerprint", "--root", root]))?;
    for folder in folders {
        let key = run(std::process::Command::new(dropsync_testkit::bin_path("client")).arg("fingerprint").arg(folder))?;
        run(std::process::Command::new(&server).args(["enroll", "--root", root, &key]))?;
    }
    Ok(fp)
}
