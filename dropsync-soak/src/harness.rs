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
//!
//! # Several instances (`DROPSYNC_SOAK_INSTANCES=N`, N ≥ 2)
//! Issue 18's set-up: N server instances on 127.0.0.1, each with its own
//! `--root`, sharing one PostgreSQL catalog and one S3 bucket (a throwaway
//! cluster and moto, `shared.rs`), the clients spread over them round-robin
//! (client `i` on instance `(seed + i) mod N`). The workload and the
//! client faults are the same; `kill -9` of the server becomes `kill -9`
//! of one instance (up to [`MAX_INSTANCE_KILLS`] per run, restarted a few
//! steps later on the same ports, so its clients reconnect to it), and a
//! new, rare fault restarts PostgreSQL at once (`pg_ctl -m immediate
//! restart`, like a crash). The seed also draws the garbage collection:
//! the defaults, or an eager one (`--keep-days 0 --gc-grace-secs`
//! [`EAGER_GC_GRACE_SECS`]) under which the bucket's collector deletes
//! objects while the workload runs. The checks, adapted to where things
//! now are:
//! 1. convergence: the server's view is the catalog's table in
//!    PostgreSQL, and the fresh `--once` client runs through *every*
//!    instance (so an instance no client uses, or one that stopped
//!    following, is seen too);
//! 2. and 3. unchanged (they judge the client folders);
//! 4. no torn files: every file's object in the bucket holds exactly its
//!    content, every object in the bucket hashes to its name, and so does
//!    every file of every instance's cache (`<root>/blobs`);
//! 5. no debris: at idle, with every instance up, no advisory lock is held
//!    (a lock left behind would refuse that path's uploads for good); after
//!    a clean shutdown and one more start of every instance, no temp file
//!    in any root and nothing in a cache that no line names (the table's or
//!    the history's), besides the instance's key (and in secure mode the
//!    enrolment list);
//! 6. no crash: as above, for every instance.
//!
//! Not checked in this mode: objects in the bucket that no line names are
//! only counted (in the summary), not failed: an upload is put in the
//! bucket before its commit, so an instance killed in between, a commit
//! refused (another instance committed first, or the database was down)
//! or a conflict settled otherwise leaves one, and with a shared catalog
//! nothing sweeps those (the start-up sweep trusts one instance's counts,
//! so it is off; the collector only sees contents some instance recorded
//! as no longer referred to). Nor is the collector's ledger required to
//! be empty (its candidates wait out the grace). And the history's
//! contents are not compared with the single server's `meta/history`
//! check: the history is in PostgreSQL, and eager garbage collection drops
//! it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dropsync_testkit::{ClientProc, LatencyProxy, S3Proc, ServerProc};

use crate::model::{History, Tree, Version};
use crate::names::is_conflict_copy;
use crate::procs;
use crate::rng::Rng;
use crate::shared::{self, Shared};
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
/// `kill -9` of one instance, with several instances.
pub const MAX_INSTANCE_KILLS: u32 = 3;
/// Restarts of PostgreSQL, with several instances.
const MAX_DB_RESTARTS: u32 = 1;
/// The grace (`--gc-grace-secs`) of the eager garbage collection some
/// seeds draw with several instances: the collector runs every half of it,
/// so it deletes objects during the run, while still far longer than an
/// upload takes from its install (which claims the content) to its commit.
pub const EAGER_GC_GRACE_SECS: u64 = 6;
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

/// The kinds of action only the multi-instance mode has (its `kill-server`
/// is `kill -9` of one instance).
pub const INSTANCE_KINDS: &[&str] = &["restart-db"];

/// How a run is shaped beyond its seed.
#[derive(Clone, Debug)]
pub struct Options {
    /// Workload steps before quiescence.
    pub steps: usize,
    /// Print the operation log while it happens.
    pub echo: bool,
    /// Secure mode (`DROPSYNC_SOAK_SECURE=1`): TLS, every client enrolled
    /// before the server starts, and pinned to its key.
    pub secure: bool,
    /// Server instances (`DROPSYNC_SOAK_INSTANCES`): 1 is the embedded
    /// catalog under one root; more share a PostgreSQL catalog and an S3
    /// bucket (see the module doc).
    pub instances: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { steps: 40, echo: false, secure: false, instances: 1 }
    }
}

/// The command that replays `seed` as `opts` ran it (steps, secure mode,
/// instances).
pub fn replay_command(seed: u64, opts: &Options) -> String {
    let steps = opts.steps;
    let (mut env, mut make) = (String::new(), String::new());
    if opts.secure {
        env.push_str(" DROPSYNC_SOAK_SECURE=1");
        make.push_str(" SECURE=1");
    }
    if opts.instances > 1 {
        let n = opts.instances;
        let _ = write!(env, " DROPSYNC_SOAK_INSTANCES={n}");
        let _ = write!(make, " INSTANCES={n}");
    }
    format!(
        "cargo build --workspace --bins &&{env} DROPSYNC_SOAK_SEED={seed} DROPSYNC_SOAK_STEPS={steps} \
         cargo test -p dropsync-soak --test convergence -- --ignored --exact replay --nocapture   \
         (or: make soak SEED={seed} STEPS={steps}{make})"
    )
}

/// What a successful run did.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The seed.
    pub seed: u64,
    /// Number of clients.
    pub clients: usize,
    /// Server instances.
    pub instances: usize,
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
    /// What the run found but does not judge (with several instances: the
    /// bucket's objects no line names, the collector's ledger).
    pub notes: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<String> = self.kinds.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        let instances = if self.instances > 1 { format!("{} instances, ", self.instances) } else { String::new() };
        write!(
            f,
            "seed {}: ok in {:.1}s ({instances}{} clients, {} changes, {} files of which {} conflict copies, idle after {:.1}s; {}){}",
            self.seed,
            self.secs,
            self.clients,
            self.events,
            self.files,
            self.copies,
            self.converge_secs,
            kinds.join(" "),
            if self.notes.is_empty() { String::new() } else { format!("; {}", self.notes) }
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
    /// The server instance it uses (always 0 with one server).
    instance: usize,
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

/// One server instance (the only one, with one server).
struct Instance {
    /// Its process; restarted on the same ports and root.
    proc: ServerProc,
    /// Its name in the operation log and the reports.
    name: String,
    up: bool,
    /// When down: started again at this step.
    restart_at: usize,
}

impl Instance {
    fn root(&self) -> &Path {
        &self.proc.root
    }
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
    /// With several instances, their database and bucket. Before `dir`:
    /// fields drop in order, and the cluster must stop before its folder
    /// goes.
    shared: Option<Shared>,
    dir: RunDir,
    cwd_before: Vec<String>,
    /// The server instances (one, unless `opts.instances` says more).
    servers: Vec<Instance>,
    server_kills: u32,
    db_restarts: u32,
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
    /// What the checks found but do not judge, for the summary.
    notes: String,
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
        let notes = run.notes.clone();
        return Ok(Summary {
            seed,
            clients: run.clients.len(),
            instances: run.servers.len(),
            events: run.history.events.len(),
            kinds: run.kinds.clone(),
            files: end.len(),
            copies,
            converge_secs: run.converge_secs,
            secs: started.elapsed().as_secs_f64(),
            notes,
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
        let instances = opts.instances.max(1);
        let roots: Vec<PathBuf> = if instances == 1 {
            vec![dir.path.join("server")]
        } else {
            (0..instances).map(|i| dir.path.join(format!("server{i}"))).collect()
        };
        let mut server_args = vec![
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
        // Several instances: one database and one bucket for all of them,
        // and (drawn only in this mode, so that one server's seeds keep
        // their scenarios) eager garbage collection or the defaults.
        let shared = (instances > 1).then(|| Shared::start(&dir.path.join("pg")));
        if let Some(sh) = &shared {
            server_args.extend(sh.server_args());
            if rng.chance(50) {
                server_args.extend(
                    ["--keep-days", "0", "--gc-grace-secs", &EAGER_GC_GRACE_SECS.to_string()].map(String::from),
                );
            }
        }
        let server_args: Vec<&str> = server_args.iter().map(String::as_str).collect();
        // Secure mode (TLS, every client enrolled before the server starts,
        // and pinned to its key), so that the faults hit TLS connections
        // too. The seeds' scenarios are the same. Every instance gets the
        // first one's key and enrolment list, as the README says to.
        let secure = opts.secure;
        let pin = if secure {
            let folders: Vec<PathBuf> = (0..n)
                .map(|i| dir.path.join(format!("c{i}")))
                .chain(verify_folders(instances).into_iter().map(|v| dir.path.join(v)))
                .collect();
            let fp = enrol(&roots[0], &folders)?;
            for root in &roots[1..] {
                fs::create_dir_all(root.join("meta")).map_err(harness_err)?;
                for f in ["meta/identity.pem", "meta/clients"] {
                    fs::copy(roots[0].join(f), root.join(f)).map_err(harness_err)?;
                }
            }
            Some(fp)
        } else {
            None
        };
        let env: Vec<(&str, &std::ffi::OsStr)> = if shared.is_some() { S3Proc::env().to_vec() } else { Vec::new() };
        let servers: Vec<Instance> = roots
            .iter()
            .enumerate()
            .map(|(i, root)| Instance {
                proc: ServerProc::start_with_env(root, &server_args, &env),
                name: if instances == 1 { "the server".to_owned() } else { format!("instance {i}") },
                up: true,
                restart_at: 0,
            })
            .collect();
        let mut config = format!("{}server {} ; ", if secure { "SECURE (DROPSYNC_SOAK_SECURE=1) " } else { "" }, server_args.join(" "));
        if instances > 1 {
            config.insert_str(0, &format!("{instances} INSTANCES (DROPSYNC_SOAK_INSTANCES={instances}) "));
        }
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
            // Round-robin from the seed, so that which clients share an
            // instance varies from seed to seed without a draw.
            let instance = (seed as usize).wrapping_add(i) % instances;
            let on = if instances > 1 { format!(" on instance {instance}") } else { String::new() };
            let _ = write!(
                config,
                "{label}{on}: chunk {chunk} parallel {parallel} debounce {debounce}ms delay {delay:?}; "
            );
            let server = &servers[instance].proc;
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
                instance,
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
            shared,
            dir,
            cwd_before,
            servers,
            server_kills: 0,
            db_restarts: 0,
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
            notes: String::new(),
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
        for s in self.servers.iter_mut().filter(|s| s.up) {
            if procs::exited(s.proc.pid()) {
                let status = s.proc.terminate();
                return Err(problem(
                    6,
                    format!("{} exited by itself ({status:?}); log tail:\n{}", s.name, tail(&s.proc.log(), 30)),
                ));
            }
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
        for i in 0..self.servers.len() {
            let s = &mut self.servers[i];
            if !s.up && step >= s.restart_at {
                s.proc.restart();
                s.up = true;
                let name = s.name.clone();
                self.note(format!("step {step}: {name} restarted"));
            }
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
        // kill-client, kill-server, stop-client, once; with several
        // instances, kill-server is one instance and restart-db comes last
        // (one server's weights stay as they were: its seeds keep their
        // scenarios).
        let action = if self.shared.is_some() {
            r.weighted(&[16, 22, 10, 8, 8, 2, 12, 4, 3, 3, 3, 1])
        } else {
            r.weighted(&[16, 22, 10, 8, 8, 2, 12, 4, 2, 3, 3])
        };
        let done = match action {
            7 => self.kill_client(&mut r, step)?,
            8 => self.kill_server(&mut r, step)?,
            9 => self.stop_client(&mut r, step)?,
            10 => self.once_restart(&mut r, step)?,
            11 => self.restart_db(step)?,
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

    /// `kill -9` of the server, or of one instance that is up (restarted
    /// a few steps later on the same ports).
    fn kill_server(&mut self, r: &mut Rng, step: usize) -> Result<bool, Problem> {
        let budget = if self.servers.len() > 1 { MAX_INSTANCE_KILLS } else { MAX_SERVER_KILLS };
        let up: Vec<usize> = (0..self.servers.len()).filter(|&i| self.servers[i].up).collect();
        if self.server_kills >= budget || up.is_empty() {
            return Ok(false);
        }
        let restart_at = step + r.range(1, 4) as usize;
        let i = if up.len() > 1 { up[r.index(up.len())] } else { up[0] };
        let s = &mut self.servers[i];
        s.proc.kill9();
        s.up = false;
        s.restart_at = restart_at;
        let name = s.name.clone();
        self.server_kills += 1;
        self.count("kill-server");
        self.note(format!("step {step}: kill -9 {name} (restart at step {restart_at})"));
        Ok(true)
    }

    /// With several instances: PostgreSQL stops at once (like a crash) and
    /// starts again on its port; every instance must connect again.
    fn restart_db(&mut self, step: usize) -> Result<bool, Problem> {
        let Some(sh) = &self.shared else { return Ok(false) };
        if self.db_restarts >= MAX_DB_RESTARTS {
            return Ok(false);
        }
        let t = Instant::now();
        sh.pg.restart();
        self.db_restarts += 1;
        self.count("restart-db");
        self.note(format!("step {step}: PostgreSQL restarted (immediate stop, {:.1}s)", t.elapsed().as_secs_f64()));
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
        // `--once` needs its server up: a client whose instance is down is
        // no candidate (one server down: none is, before any draw).
        let candidates: Vec<usize> =
            candidates.into_iter().filter(|&c| self.servers[self.clients[c].instance].up).collect();
        if self.onces >= MAX_ONCE || candidates.is_empty() {
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
        problems.extend(self.locks_left());
        if let Err(p) = self.verify_with_fresh_client(&end) {
            problems.push(p);
        }
        problems.extend(self.check_contents(&end));
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
        for i in 0..self.servers.len() {
            let s = &mut self.servers[i];
            if !s.up {
                s.proc.restart();
                s.up = true;
                let name = s.name.clone();
                self.note(format!("quiesce: {name} restarted"));
            }
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
            let server = self.server_view();
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

    /// The server's view: its META-DATA, or with several instances the
    /// shared catalog's table.
    fn server_view(&mut self) -> Result<Tree, String> {
        match &mut self.shared {
            Some(sh) => sh.tree(),
            None => views::server_tree(self.servers[0].root()),
        }
    }

    /// Invariant 5 at idle, with several instances (every instance up,
    /// nothing moving): no per-file lock is held in PostgreSQL. One left
    /// behind would refuse every upload of its path, through any instance,
    /// until its instance's lock connection ends.
    fn locks_left(&mut self) -> Vec<Problem> {
        let Some(sh) = &mut self.shared else { return Vec::new() };
        match sh.advisory_locks() {
            Ok(0) => Vec::new(),
            Ok(n) => {
                vec![problem(5, format!("{n} advisory lock(s) still held in PostgreSQL while every instance is idle"))]
            }
            Err(e) => vec![problem(5, format!("cannot count the advisory locks: {e}"))],
        }
    }

    /// Invariant 4 on the server's side. One server: every file's blob
    /// holds its content. Several instances: every file's object in the
    /// bucket holds its content, and every object hashes to its name (the
    /// bucket's objects no line names are counted for the summary).
    fn check_contents(&mut self, end: &Tree) -> Vec<Problem> {
        let Some(sh) = &mut self.shared else {
            return views::check_blobs(self.servers[0].root(), end).into_iter().map(|t| problem(4, t)).collect();
        };
        let mut out = Vec::new();
        let lines = match sh.lines() {
            Ok(l) => l,
            Err(e) => return vec![problem(1, e)],
        };
        for (path, v) in end {
            let Some(key) = lines.get(path).and_then(|l| l.strong) else {
                out.push(problem(4, format!("the catalog names no content for {path:?}")));
                continue;
            };
            match sh.object(&key) {
                Ok(Some(bytes)) if Version::of(&bytes) == *v => {}
                Ok(Some(bytes)) => out.push(problem(
                    4,
                    format!(
                        "the object of {path:?} ({}) holds {} bytes of another content",
                        shared::hex(&key),
                        bytes.len()
                    ),
                )),
                Ok(None) => {
                    out.push(problem(4, format!("the bucket has no object for {path:?} ({})", shared::hex(&key))))
                }
                Err(e) => out.push(problem(4, format!("the object of {path:?}: {e}"))),
            }
        }
        let named: BTreeSet<String> = match sh.named() {
            Ok(n) => n.iter().map(shared::hex).collect(),
            Err(e) => return vec![problem(1, e)],
        };
        let objects = sh.objects();
        for name in &objects {
            let Some(key) = dropsync_proto::digest::bytes_from_hex::<32>(name) else {
                out.push(problem(5, format!("the bucket holds {name:?}, not named by a content key")));
                continue;
            };
            // One the collector deletes meanwhile is simply gone.
            match sh.object(&key) {
                Ok(Some(bytes)) if sha256_hex(&bytes) == *name => {}
                Ok(Some(bytes)) => out.push(problem(
                    4,
                    format!("object {name} holds {} bytes that do not hash to its name", bytes.len()),
                )),
                Ok(None) => {}
                Err(e) => out.push(problem(4, format!("object {name}: {e}"))),
            }
        }
        let unnamed = objects.iter().filter(|o| !named.contains(*o)).count();
        let ledger = sh.candidates().map_or_else(|e| format!("? ({e})"), |n| n.to_string());
        self.notes = format!("bucket: {} objects, {unnamed} named by no line; gc ledger: {ledger} rows", objects.len());
        out
    }

    /// The folders of the fresh `--once` clients: one, or one per instance.
    fn verify_folders(&self) -> Vec<String> {
        verify_folders(self.servers.len())
    }

    /// Invariant 1, third view: a new client with an empty folder, run with
    /// `--once`, ends with exactly the common tree; and that run changed
    /// nothing anywhere else. With several instances, one such client
    /// through each of them.
    fn verify_with_fresh_client(&mut self, end: &Tree) -> Result<(), Problem> {
        let (keepalive, dead_peer) = (KEEPALIVE_SECS.to_string(), DEAD_PEER_SECS.to_string());
        let mut fresh = Vec::new();
        for (i, label) in self.verify_folders().into_iter().enumerate() {
            let folder = self.dir.path.join(&label);
            let mut args =
                vec!["--once", "--label", &label, "--keepalive-secs", &keepalive, "--dead-peer-secs", &dead_peer];
            // In secure mode the verifying clients were enrolled at start too.
            let pinned = self.clients.first().and_then(|c| c.args.iter().position(|a| a == "--server-fingerprint"));
            if let (Some(p), Some(c)) = (pinned, self.clients.first()) {
                args.extend(["--server-fingerprint", c.args[p + 1].as_str()]);
            }
            let server = &self.servers[i].proc;
            let mut once = ClientProc::start_with_ports(server.send_port, server.recv_port, &folder, 64 * 1024, &args);
            let status = once.wait(ONCE_DEADLINE);
            if !status.is_some_and(|s| s.success()) {
                let through =
                    if self.servers.len() > 1 { format!(" (through {})", self.servers[i].name) } else { String::new() };
                return Err(problem(
                    6,
                    format!(
                        "the verifying --once client{through} ended with {status:?}; log tail:\n{}",
                        tail(&once.log(), 40)
                    ),
                ));
            }
            fresh.push((label, views::tree(&folder)));
        }
        let mut trees: Vec<Tree> = self.clients.iter().map(|c| views::tree(&c.folder)).collect();
        let mut names: Vec<String> = self.clients.iter().map(|c| c.label.clone()).collect();
        trees.push(self.server_view().unwrap_or_default());
        names.push("server".into());
        for (label, tree) in fresh {
            trees.push(tree);
            names.push(label);
        }
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
        for s in &mut self.servers {
            let status = s.proc.terminate();
            if !status.is_some_and(|s| s.success()) {
                out.push(problem(
                    6,
                    format!("{} ended with {status:?} on SIGTERM; log tail:\n{}", s.name, tail(&s.proc.log(), 30)),
                ));
            }
            s.up = false;
        }
        out
    }

    /// Invariant 5, after a clean shutdown and one more start of every
    /// server (which removes blobs orphaned by a `kill -9` between storing
    /// a blob and journaling it, as documented, and with several instances
    /// every cached content no line names): only the expected files
    /// anywhere.
    fn debris(&mut self, end: &Tree) -> Vec<Problem> {
        let mut out = Vec::new();
        // What a cache may keep: what the catalog names as the instances
        // start (their retention may drop history lines afterwards).
        let named = match self.shared.as_mut().map(Shared::named).transpose() {
            Ok(n) => n,
            Err(e) => return vec![problem(1, e)],
        };
        for s in &mut self.servers {
            s.proc.restart();
        }
        for s in &mut self.servers {
            let status = s.proc.terminate();
            if !status.is_some_and(|s| s.success()) {
                out.push(problem(6, format!("{} (restarted) ended with {status:?} on SIGTERM", s.name)));
            }
        }
        match self.server_view() {
            Ok(view) if view == *end => {}
            Ok(view) => out.push(problem(
                1,
                format!("the server's view after a restart differs:\n{}", self.diff(&["before".into(), "after".into()], &[end.clone(), view])),
            )),
            Err(e) => out.push(problem(1, e)),
        }
        match named {
            None => out.extend(self.server_root_debris(end)),
            Some(named) => out.extend(self.instance_root_debris(&named)),
        }
        for c in &self.clients {
            // The snapshot, the (empty) journal that follows it, the
            // status file `client status` reads (never a half-written
            // `status.tmp`: it is renamed into place), the client's key and
            // the listing it acknowledged ([ext] META-DATA since a version).
            let state = c.folder.join(".dropsync");
            let snapshot = fs::read_to_string(state.join("metadata")).unwrap_or_default();
            let generation = snapshot.lines().rev().find_map(|l| l.strip_prefix("# generation ")).unwrap_or("?");
            let journal = format!("metadata.journal.{generation}");
            let kept = ["metadata", journal.as_str(), "status", "identity.pem", "server-fingerprint", "index"];
            for f in views::all_files(&state) {
                if !kept.contains(&f.as_str()) {
                    out.push(problem(5, format!("{}: unexpected file .dropsync/{f}", c.label)));
                }
            }
            for n in views::names_in(&c.folder) {
                if n.starts_with(".dropsync") && n != ".dropsync" {
                    out.push(problem(5, format!("{}: unexpected {n} in the folder", c.label)));
                }
            }
        }
        let mut allowed: BTreeSet<String> = BTreeSet::new();
        for s in &self.servers {
            let root = s.root();
            allowed.extend(root.file_name().map(|n| n.to_string_lossy().into_owned()));
            allowed.extend(root.with_extension("server.log").file_name().map(|n| n.to_string_lossy().into_owned()));
        }
        for v in self.verify_folders() {
            allowed.insert(format!("{v}.client.log"));
            allowed.insert(v);
        }
        if self.shared.is_some() {
            allowed.insert("pg".into());
        }
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

    /// One server's root: its META-DATA, history, key, enrolment list and
    /// the blobs of the files and of the versions the history keeps.
    fn server_root_debris(&self, end: &Tree) -> Vec<Problem> {
        let mut out = Vec::new();
        let root = self.servers[0].root();
        // The META-DATA and its journal, the server's key (secure mode's
        // identity, made at every start whether or not it is used) and, in
        // secure mode, the enrolment list and its lock.
        let mut expected: BTreeSet<String> =
            ["meta/metadata", "meta/metadata.journal", "meta/identity.pem", "meta/clients", "meta/clients.lock"]
                .iter()
                .map(|s| s.to_string())
                .collect();
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
        out
    }

    /// Several instances: each root holds its key (and enrolment list) and
    /// a cache of contents the catalog names, each file hashing to its
    /// name; no temp file, no META-DATA (the catalog is in PostgreSQL).
    fn instance_root_debris(
        &self,
        named: &std::collections::HashSet<dropsync_proto::metadata::Strong>,
    ) -> Vec<Problem> {
        let mut out = Vec::new();
        let named: BTreeSet<String> = named.iter().map(shared::hex).collect();
        let expected = ["meta/identity.pem", "meta/clients", "meta/clients.lock"];
        for s in &self.servers {
            let root = s.root();
            for f in views::all_files(root) {
                if expected.contains(&f.as_str()) {
                    continue;
                }
                let cached = f.strip_prefix("blobs/").and_then(|rest| rest.split_once('/'));
                match cached {
                    Some((prefix, name)) if name.starts_with(prefix) && named.contains(name) => {
                        match fs::read(root.join(&f)) {
                            Ok(bytes) if sha256_hex(&bytes) == name => {}
                            Ok(bytes) => out.push(problem(
                                4,
                                format!(
                                    "{}: cached {f} holds {} bytes that do not hash to its name",
                                    s.name,
                                    bytes.len()
                                ),
                            )),
                            Err(e) => out.push(problem(5, format!("{}: cached {f} unreadable: {e}", s.name))),
                        }
                    }
                    Some(_) => out.push(problem(5, format!("{}: cache holds {f}, which no line names", s.name))),
                    None => out.push(problem(5, format!("{}: unexpected file {f} (temp file?)", s.name))),
                }
            }
        }
        out
    }

    /// Invariant 6: no thread of any process panicked.
    fn panics(&self) -> Vec<Problem> {
        let mut logs: Vec<(String, PathBuf)> =
            self.servers.iter().map(|s| (s.name.clone(), s.root().with_extension("server.log"))).collect();
        for c in &self.clients {
            logs.push((c.label.clone(), self.dir.path.join(format!("{}.client.log", c.label))));
        }
        for v in self.verify_folders() {
            logs.push((v.clone(), self.dir.path.join(format!("{v}.client.log"))));
        }
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
        let _ = writeln!(r, "replay: {}", replay_command(self.seed, &self.opts));
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

/// The folders of the fresh `--once` clients of the last check: `verify`,
/// or with several instances `verify<i>` through instance `i`.
fn verify_folders(instances: usize) -> Vec<String> {
    if instances <= 1 {
        vec!["verify".to_owned()]
    } else {
        (0..instances).map(|i| format!("verify{i}")).collect()
    }
}

/// The lower-case hex SHA-256 of `bytes` (a content's name in a cache and
/// in the bucket).
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    let key: dropsync_proto::metadata::Strong = sha2::Sha256::digest(bytes).into();
    shared::hex(&key)
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
