//! `make bench` (issues 9 and 19): one table of dropsync's throughput, latency,
//! fan-out and memory on loopback, beside rsync and the machine's MD5
//! speed, also written as JSON under `bench/results/`. See
//! `bench/README.md` for what each figure means and how it is measured.
//!
//! Environment: `BENCH_RUNS` (default 3), `BENCH_QUICK=1` (small sizes for
//! a fast check), `BENCH_DIR` (scratch parent; default `/dev/shm` when it
//! has room), `BENCH_DEADLINE` (seconds before the watchdog kills
//! everything; default 3000), and for the new rows `BENCH_B5_SESSIONS`,
//! `BENCH_B8_FILES`, `BENCH_B8_FALLBACK`, `BENCH_B8_RUNS`, `BENCH_DISK_DIR`.
//! `--only B1,B3` runs those phases alone.
//! The P phases (`scaling.rs`) run B1, B3 and B4 again with the server's
//! catalog on PostgreSQL and its contents in S3, and measure propagation
//! between two instances sharing them. Issue 19's rows: B7 (a rename and
//! a copy of a large file: time and bytes on the wire, `b7.rs`), B8 (a
//! client with 1,000,000 files, `b8.rs`), B9 (a git checkout on a real
//! disk beside rsync, `b9.rs`), and B1 and B3 again on that disk
//! (`disk.rs`: a loop-mounted ext4 image).

mod b2link;
mod b7;
mod b8;
mod b9;
mod data;
mod disk;
mod fanout;
mod json;
mod procs;
mod proxy;
mod rsync;
mod scaling;
mod stats;
mod sys;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};

use crate::data::Rng;
use crate::json::Json;
use crate::procs::{run_timed, Proc, Spec};
use crate::rsync::Rsyncd;
use crate::scaling::Backend;
use crate::stats::{percentile, Figure};

/// Errors: anything printable.
pub type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const MIB: u64 = 1 << 20;
/// Throughput unit: 10^6 bytes per second, for dropsync, rsync and MD5 alike.
const MB: f64 = 1e6;

#[derive(Clone)]
struct Cfg {
    server: PathBuf,
    client: PathBuf,
    out: PathBuf,
    work: PathBuf,
    runs: usize,
    quick: bool,
    cores: usize,
    /// B1/B2 file size.
    big: u64,
    /// Client chunk size in every phase.
    chunk: usize,
    small_dirs: usize,
    small_per_dir: usize,
    small_size: usize,
    edits: usize,
    edit_size: usize,
    fan_sessions: usize,
    fan_size: usize,
    md5_buf: usize,
    /// B8: files in the client's folder.
    b8_files: usize,
    /// B8: seconds over which the idle client's CPU is measured.
    b8_idle: Duration,
    /// Runs of B8 (slow: one by default).
    b8_runs: usize,
    /// B8's files when the initial sync with `b8_files` does not finish.
    b8_fallback: usize,
    /// Size of the ext4 image of the disk rows.
    disk_size: u64,
    /// Bound on every process and wait.
    limit: Duration,
    /// The phases to run (`--only`); `None`: all of them.
    only: Option<Vec<String>>,
    /// Set in the disk rows' copy of the configuration: run folders are
    /// on this disk, and its page cache is dropped before each timed run.
    disk: Option<Arc<disk::Disk>>,
}

impl Cfg {
    /// True when phase `id` ("B1" … "B9", "B1D", "B3D", "P1" …) runs.
    fn runs_phase(&self, id: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|p| p == id))
    }

    /// On the disk rows' disk: writes out and drops the page cache, so the
    /// timed run that follows reads its data from the disk; else nothing.
    fn drop_caches(&self) -> R<()> {
        match &self.disk {
            Some(d) => d.drop_caches(),
            None => Ok(()),
        }
    }
}

/// A check applied to a row's median.
type Check = Box<dyn Fn(f64) -> bool>;

/// One row of the table.
struct Row {
    id: &'static str,
    /// The phase that measures it (`--only`): `id`, except for B6's rows
    /// (measured in B1 and B2) and the disk rows (B1D, B3D).
    phase: &'static str,
    key: &'static str,
    figure: String,
    unit: &'static str,
    fig: Figure,
    /// Target text and the check applied to the median.
    target: Option<(String, Check)>,
    /// Not measured: what it needs is missing here (the P phases).
    skipped: bool,
}

impl Row {
    fn new(id: &'static str, key: &'static str, figure: impl Into<String>, unit: &'static str) -> Row {
        Row { id, phase: id, key, figure: figure.into(), unit, fig: Figure::default(), target: None, skipped: false }
    }

    fn phase(mut self, phase: &'static str) -> Row {
        self.phase = phase;
        self
    }

    fn target(mut self, text: impl Into<String>, check: impl Fn(f64) -> bool + 'static) -> Row {
        self.target = Some((text.into(), Box::new(check)));
        self
    }

    fn verdict(&self) -> Option<bool> {
        let (_, check) = self.target.as_ref()?;
        Some(self.fig.median().is_some_and(check))
    }
}

/// Everything measured, filled phase by phase.
#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    b4_samples: Vec<Vec<f64>>,
    errors: Vec<String>,
    findings: Vec<String>,
    notes: Vec<String>,
}

impl Results {
    fn row(&mut self, key: &str) -> &mut Figure {
        let i = self.rows.iter().position(|r| r.key == key).unwrap_or_else(|| panic!("no row {key}"));
        &mut self.rows[i].fig
    }

    fn push(&mut self, key: &str, v: f64) {
        self.row(key).push(v);
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn free_kib(dir: &Path) -> u64 {
    let out = sh("df", &["-Pk", &dir.display().to_string()]);
    out.lines().nth(1).and_then(|l| l.split_whitespace().nth(3)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn scratch_parent(need: u64) -> PathBuf {
    if let Ok(d) = std::env::var("BENCH_DIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() && free_kib(shm) * 1024 >= need {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

const PHASES: [&str; 14] = ["B1", "B2", "B3", "B4", "B5", "B7", "B8", "B1D", "B3D", "B9", "P1", "P3", "P4", "PX"];

type Args = (PathBuf, PathBuf, PathBuf, Option<Vec<String>>);

fn parse_args() -> R<Args> {
    let mut server = PathBuf::from("target/release/server");
    let mut client = PathBuf::from("target/release/client");
    let mut out = PathBuf::from("bench/results");
    let mut only = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--server" => server = val()?.into(),
            "--client" => client = val()?.into(),
            "--out" => out = val()?.into(),
            "--only" => {
                let list: Vec<String> = val()?.split(',').map(|p| p.trim().to_ascii_uppercase()).filter(|p| !p.is_empty()).collect();
                if let Some(bad) = list.iter().find(|p| !PHASES.contains(&p.as_str())) {
                    return Err(format!("--only: no phase {bad} ({}; B6 is measured in B1 and B2)", PHASES.join(", ")).into());
                }
                only = Some(list);
            }
            "-h" | "--help" => {
                println!(
                    "dropsync-bench [--server PATH] [--client PATH] [--out DIR] [--only B1,B3,...]\n\
                     --only: run these phases alone (B1 to B5, B7, B8, B9, B1D and B3D (B1 and B3 on \
                     an ext4 image), P1, P3, P4, PX; B6's rows come with B1 and B2; P*: on PostgreSQL + \
                     S3, skipped when either is missing); the files written are named latest-b1-b3.* etc.\n\
                     Environment: BENCH_RUNS, BENCH_QUICK=1, BENCH_DIR, BENCH_DEADLINE, BENCH_B5_SESSIONS, \
                     BENCH_B8_FILES, BENCH_B8_FALLBACK, BENCH_B8_RUNS, BENCH_DISK_DIR; see bench/README.md"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    for p in [&server, &client] {
        if !p.exists() {
            return Err(format!("{} not built (make bench builds it)", p.display()).into());
        }
    }
    Ok((fs::canonicalize(server)?, fs::canonicalize(client)?, out, only))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).is_some_and(|a| a == "--fanout-worker") {
        std::process::exit(fanout::worker_main(&args[2..]));
    }
    // A panic of the main thread still stops every process, puts back the
    // kernel limits B5 raised and unmounts the disk image.
    let code = match std::panic::catch_unwind(real_main) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("bench: error: {e}");
            1
        }
        Err(_) => {
            eprintln!("bench: panicked; stopping everything");
            101
        }
    };
    procs::kill_all_and_clean(Some(code));
}

/// Seconds before the watchdog stops everything (`BENCH_DEADLINE`); the
/// Makefile's `timeout` is this plus 60.
const DEFAULT_DEADLINE: usize = 3000;

fn install_guards() -> R<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("bench: signal {sig}: stopping everything");
            procs::kill_all_and_clean(Some(128 + sig));
        }
    });
    let deadline = env_usize("BENCH_DEADLINE", DEFAULT_DEADLINE) as u64;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(deadline));
        eprintln!("bench: watchdog: still running after {deadline} s; killing everything");
        procs::kill_all_and_clean(Some(124));
    });
    Ok(())
}

fn real_main() -> R<()> {
    install_guards()?;
    let (server, client, out, only) = parse_args()?;
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let runs = env_usize("BENCH_RUNS", 3).max(1);
    let big = if quick { 64 * MIB } else { 1024 * MIB };
    let parent = scratch_parent(big * 5);
    let work = parent.join(format!("dropsync-bench.{}", std::process::id()));
    fs::create_dir_all(&work)?;
    procs::set_workdir(&work);
    let cfg = Cfg {
        server,
        client,
        out,
        work,
        runs,
        quick,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        big,
        chunk: MIB as usize,
        small_dirs: if quick { 10 } else { 100 },
        small_per_dir: 100,
        small_size: 4096,
        edits: if quick { 20 } else { 100 },
        edit_size: 100,
        fan_sessions: env_usize("BENCH_B5_SESSIONS", if quick { 100 } else { 10_000 }),
        fan_size: MIB as usize,
        md5_buf: if quick { 64 << 20 } else { 256 << 20 },
        b8_files: env_usize("BENCH_B8_FILES", if quick { 20_000 } else { 1_000_000 }),
        b8_idle: Duration::from_secs(if quick { 5 } else { 20 }),
        b8_runs: env_usize("BENCH_B8_RUNS", 1).clamp(1, runs),
        b8_fallback: env_usize("BENCH_B8_FALLBACK", if quick { 10_000 } else { 300_000 }),
        disk_size: if quick { 2 << 30 } else { 6 << 30 },
        limit: Duration::from_secs(if quick { 120 } else { 300 }),
        only,
        disk: None,
    };
    let started = Instant::now();
    let load_start = sh("cat", &["/proc/loadavg"]);
    eprintln!(
        "bench: {} run(s){}{}, scratch {} ({} MiB free), {} core(s), load {}",
        cfg.runs,
        if quick { ", QUICK sizes" } else { "" },
        cfg.only.as_ref().map_or(String::new(), |o| format!(", only {}", o.join(","))),
        cfg.work.display(),
        free_kib(&cfg.work) / 1024,
        cfg.cores,
        load_start
    );

    // Data, made once.
    let t = Instant::now();
    let data_dir = cfg.work.join("data");
    fs::create_dir_all(&data_dir)?;
    let mut rng = Rng::new(0xd5_0009);
    let big_file = data_dir.join("big.bin");
    data::random_file(&big_file, cfg.big, &mut rng)?;
    let small_tree = data_dir.join("small");
    data::small_tree(&small_tree, cfg.small_dirs, cfg.small_per_dir, cfg.small_size, &mut rng)?;
    let md5_buf = rng.bytes(cfg.md5_buf);
    let fan_data = Arc::new(fanout::payload(cfg.fan_size));
    eprintln!("bench: data ready in {:.1} s", t.elapsed().as_secs_f64());

    let mut res = Results { rows: rows(&cfg), b4_samples: Vec::new(), errors: Vec::new(), findings: Vec::new(), notes: Vec::new() };
    let (rsync_version, rsync_checksums) = rsync::version();
    let rsync_version = rsync_version.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut rsyncd = match cfg.runs_phase("B1") || cfg.runs_phase("B2") || cfg.runs_phase("B3") {
        true => Some(Rsyncd::start(&cfg.work, cfg.limit * 8)?),
        false => None,
    };

    for i in (0..cfg.runs).filter(|_| cfg.runs_phase("B1")) {
        if let Err(e) = b1(&cfg, &mut res, rsyncd.as_ref().ok_or("no rsyncd")?, &big_file, &md5_buf, i) {
            note_err(&mut res, format!("B1 run {}: {e}", i + 1));
        }
    }
    for i in (0..cfg.runs).filter(|_| cfg.runs_phase("B2")) {
        if let Err(e) = b2(&cfg, &mut res, rsyncd.as_ref().ok_or("no rsyncd")?, &big_file, i) {
            note_err(&mut res, format!("B2 run {}: {e}", i + 1));
        }
        if let Err(e) = b2link::run(&cfg, &mut res, &big_file, i) {
            note_err(&mut res, format!("B2 link run {}: {e}", i + 1));
        }
    }
    for i in (0..cfg.runs).filter(|_| cfg.runs_phase("B3")) {
        if let Err(e) = b3(&cfg, &mut res, rsyncd.as_ref().ok_or("no rsyncd")?, &small_tree, i) {
            note_err(&mut res, format!("B3 run {}: {e}", i + 1));
        }
    }
    if let Some(d) = rsyncd.as_mut() {
        d.stop();
    }
    for i in (0..cfg.runs).filter(|_| cfg.runs_phase("B4")) {
        if let Err(e) = b4(&cfg, &mut res, i) {
            note_err(&mut res, format!("B4 run {}: {e}", i + 1));
        }
    }
    if cfg.runs_phase("B5") {
        b5_all(&cfg, &mut res, fan_data);
    }
    for i in (0..cfg.runs).filter(|_| cfg.runs_phase("B7")) {
        if let Err(e) = b7::run(&cfg, &mut res, &big_file, i) {
            note_err(&mut res, format!("B7 run {}: {e}", i + 1));
        }
    }
    if cfg.runs_phase("B8") {
        b8::run_all(&cfg, &mut res);
    }
    disk_phases(&cfg, &mut res, &big_file, &small_tree);
    scaling::run_all(&cfg, &mut res, &big_file, &small_tree);
    scaling::ratio(&mut res, "b2_vs_b1", "b2_mbps", "b1_dropsync");

    let load_end = sh("cat", &["/proc/loadavg"]);
    let elapsed = started.elapsed();
    let config = config_lines(&cfg, &rsync_version, &rsync_checksums);
    let table = render_table(&res, &config, &load_start, &load_end, elapsed);
    let json = render_json(&cfg, &res, &config, &rsync_version, &rsync_checksums, &load_start, &load_end, elapsed);
    fs::create_dir_all(&cfg.out)?;
    let stamp = sh("date", &["-u", "+%Y%m%dT%H%M%SZ"]);
    // A partial run (--only) never replaces the full table's files.
    let only = cfg.only.as_ref().map_or(String::new(), |o| format!("-{}", o.join("-").to_ascii_lowercase()));
    let suffix = format!("{}{only}", if quick { "-quick" } else { "" });
    let stamped = cfg.out.join(format!("{stamp}{suffix}.json"));
    let latest = cfg.out.join(format!("latest{suffix}.json"));
    fs::write(&stamped, json.pretty())?;
    fs::write(&latest, json.pretty())?;
    fs::write(cfg.out.join(format!("latest{suffix}.md")), &table)?;
    if !res.errors.is_empty() || !res.findings.is_empty() {
        println!("\n### Errors and log findings\n");
        for e in &res.errors {
            println!("- ERROR {e}");
        }
        for f in res.findings.iter().take(40) {
            println!("- {f}");
        }
        if res.findings.len() > 40 {
            println!("- … {} more in the JSON", res.findings.len() - 40);
        }
    }
    println!("\n{table}");
    println!("Results: {} (copy: {})", latest.display(), stamped.display());
    Ok(())
}

fn note_err(res: &mut Results, e: String) {
    eprintln!("bench: ERROR {e}");
    res.errors.push(e);
}

fn rows(cfg: &Cfg) -> Vec<Row> {
    let mib = |b: u64| b as f64 / MIB as f64;
    let big = format!("{} MiB", cfg.big / MIB);
    let nfiles = cfg.small_dirs * cfg.small_per_dir;
    let mut rows = vec![
        Row::new("B1", "b1_dropsync", format!("upload 1 × {big} (client --once), MB/s"), "MB/s"),
        Row::new("B1", "b1_tls", "… the same in secure mode (TLS 1.3, client enrolled), MB/s", "MB/s"),
        Row::new("B1", "b1_tls_cost", "secure mode's cost: 1 − TLS ÷ plain MB/s (run by run)", "%").target("≤ 15 %", |v| v <= 15.0),
        Row::new("B1", "b1_rsync", "rsync -a to rsyncd, default checksum, MB/s", "MB/s"),
        Row::new("B1", "b1_rsync_md5", "rsync -a --checksum-choice=md5, MB/s", "MB/s"),
        Row::new("B1", "b1_ratio", "dropsync ÷ rsync default (run by run)", "×"),
        Row::new("B1", "b1_ratio_md5", "dropsync ÷ rsync md5 (run by run)", "×").target("≥ 1.2×", |v| v >= 1.2),
        Row::new("B1", "b1_md5", "md-5 crate, one stream, MB/s", "MB/s"),
        Row::new("B1", "b1_limit", format!("MD5-bound limit = md5 × {} cores ÷ 4, MB/s", cfg.cores), "MB/s"),
        Row::new("B1", "b1_of_limit", "dropsync ÷ MD5-bound limit (run by run)", "%").target("≥ 80 %", |v| v >= 80.0),
        Row::new("B2", "b2_seconds", format!("A → B end to end, {big}, s"), "s"),
        Row::new("B2", "b2_mbps", "A → B end to end, MB/s", "MB/s"),
        Row::new("B2", "b2_upload", "… of which until A logs the upload done, s", "s"),
        Row::new("B2", "b2_deliver", "… and from then until complete in B's folder, s", "s"),
        Row::new("B2", "b2_vs_b1", "A → B MB/s ÷ B1's upload MB/s (run by run)", "×").target("≥ 0.9×", |v| v >= 0.9),
        Row::new("B2", "b2_rsync", "rsync push A → rsyncd, then pull rsyncd → B's folder (one after the other), s", "s"),
        Row::new("B2", "b2_rsync_mbps", "… the same, MB/s", "MB/s"),
        Row::new("B2", "b2_vs_rsync", "dropsync A → B ÷ rsync push + pull, speed (run by run)", "×").target("≥ 1.0×", |v| v >= 1.0),
        Row::new("B3", "b3_dropsync", format!("upload {nfiles} × {} KiB in {} folders, files/s", cfg.small_size / 1024, cfg.small_dirs), "files/s"),
        Row::new("B3", "b3_tls", "… the same in secure mode (TLS 1.3, client enrolled), files/s", "files/s"),
        // Reported: the target (≤ 15 %) is B1's.
        Row::new("B3", "b3_tls_cost", "secure mode's cost: 1 − TLS ÷ plain files/s (run by run)", "%"),
        Row::new("B3", "b3_rsync", "rsync -a (default checksum), files/s", "files/s"),
        Row::new("B3", "b3_ratio", "dropsync ÷ rsync (run by run)", "×").target("≥ 2.0×", |v| v >= 2.0),
        Row::new("B4", "b4_p50", format!("edit on A visible on B ({} edits of {} B), p50 ms", cfg.edits, cfg.edit_size), "ms").target("< 5 ms", |v| v < 5.0),
        Row::new("B4", "b4_p99", "p99 ms", "ms").target("< 20 ms", |v| v < 20.0),
        Row::new("B4", "b4_max", "max ms", "ms"),
        Row::new("B5", "b5_last", format!("{} MiB to {} sessions, until the last has it, s", mib(cfg.fan_size as u64), cfg.fan_sessions), "s")
            .target("< 5 s", |v| v < 5.0),
        Row::new("B5", "b5_upload", "upload to the server alone, s", "s"),
        Row::new("B5", "b5_ramp", "connecting and greeting all sessions, s", "s"),
        Row::new("B5", "b5_hwm", "server peak RSS (VmHWM), MiB", "MiB").target("< 1024 MiB", |v| v < 1024.0),
        Row::new("B5", "b5_threads", "server threads, peak sampled", "threads"),
        Row::new("B5", "b5_fds", "server open descriptors, all sessions connected", "fds"),
        Row::new("B6", "b6_server_b1", "server peak RSS during B1, MiB", "MiB").target("< 64 MiB", |v| v < 64.0).phase("B1"),
        Row::new("B6", "b6_client_b1", "client --once peak RSS during B1, MiB", "MiB").target("< 64 MiB", |v| v < 64.0).phase("B1"),
        Row::new("B6", "b6_server_b1_tls", "server peak RSS during B1 in secure mode, MiB", "MiB")
            .target("< 64 MiB", |v| v < 64.0)
            .phase("B1"),
        Row::new("B6", "b6_client_b1_tls", "client --once peak RSS during B1 in secure mode, MiB", "MiB")
            .target("< 64 MiB", |v| v < 64.0)
            .phase("B1"),
        Row::new("B6", "b6_server_b2", "server peak RSS during B2, MiB", "MiB").target("< 64 MiB", |v| v < 64.0).phase("B2"),
        Row::new("B6", "b6_client_a_b2", "client A (sender) peak RSS during B2, MiB", "MiB").target("< 64 MiB", |v| v < 64.0).phase("B2"),
        Row::new("B6", "b6_client_b_b2", "client B (receiver) peak RSS during B2, MiB", "MiB").target("< 64 MiB", |v| v < 64.0).phase("B2"),
    ];
    // B2 over slower links, right after B2's own rows.
    let at = rows.iter().position(|r| r.key == "b2_vs_rsync").map_or(rows.len(), |p| p + 1);
    rows.splice(at..at, b2link::rows());
    rows.extend(b7::rows(cfg));
    rows.extend(b8::rows(cfg));
    rows.extend(disk_rows(cfg));
    rows.extend(b9::rows(cfg));
    rows.extend(scaling::rows(cfg));
    rows.retain(|r| cfg.runs_phase(r.phase));
    rows
}

/// B1 and B3 again with the client's folder, the server's root and the
/// rsync module on the ext4 image (phases B1D and B3D).
fn disk_rows(cfg: &Cfg) -> Vec<Row> {
    let big = format!("{} MiB", cfg.big / MIB);
    let nfiles = cfg.small_dirs * cfg.small_per_dir;
    vec![
        Row::new("B1", "b1d_dropsync", format!("on ext4 disk: upload 1 × {big} (client --once), MB/s"), "MB/s").phase("B1D"),
        Row::new("B1", "b1d_rsync_md5", "on ext4 disk: rsync -a --checksum-choice=md5, MB/s", "MB/s").phase("B1D"),
        Row::new("B1", "b1d_ratio_md5", "on ext4 disk: dropsync ÷ rsync md5 (run by run)", "×").target("≥ 1.2×", |v| v >= 1.2).phase("B1D"),
        Row::new("B1", "b1d_rsync_md5_fsync", "on ext4 disk: rsync -a --checksum-choice=md5 --fsync, MB/s", "MB/s").phase("B1D"),
        Row::new("B1", "b1d_ratio_md5_fsync", "on ext4 disk: dropsync ÷ rsync md5 --fsync (run by run)", "×").phase("B1D"),
        Row::new("B6", "b6_server_b1d", "on ext4 disk: server peak RSS during B1, MiB", "MiB").target("< 64 MiB", |v| v < 64.0).phase("B1D"),
        Row::new("B3", "b3d_dropsync", format!("on ext4 disk: upload {nfiles} × {} KiB, files/s", cfg.small_size / 1024), "files/s").phase("B3D"),
        Row::new("B3", "b3d_rsync", "on ext4 disk: rsync -a (default checksum), files/s", "files/s").phase("B3D"),
        Row::new("B3", "b3d_ratio", "on ext4 disk: dropsync ÷ rsync (run by run)", "×").target("≥ 2.0×", |v| v >= 2.0).phase("B3D"),
        Row::new("B3", "b3d_rsync_fsync", "on ext4 disk: rsync -a --fsync, files/s", "files/s").phase("B3D"),
        Row::new("B3", "b3d_ratio_fsync", "on ext4 disk: dropsync ÷ rsync --fsync (run by run)", "×").phase("B3D"),
    ]
}

// ---------------------------------------------------------------- processes

fn start_server(cfg: &Cfg, dir: &Path, extra: &[&str]) -> R<(Proc, u16, u16)> {
    let backend = Backend { args: extra.iter().map(|s| s.to_string()).collect(), env: Vec::new() };
    start_instance(cfg, dir, "server", &backend)
}

/// A server named `name` (its root `dir/<name>-root`, its log
/// `dir/<name>.log`) with `backend`'s arguments and environment.
fn start_instance(cfg: &Cfg, dir: &Path, name: &str, backend: &Backend) -> R<(Proc, u16, u16)> {
    let root = dir.join(format!("{name}-root"));
    let mut args: Vec<String> = vec!["0".into(), "0".into(), "--bind".into(), "127.0.0.1".into(), "--root".into()];
    args.push(root.display().to_string());
    args.extend(backend.args.iter().cloned());
    let p = Proc::start(
        name,
        Spec {
            bin: cfg.server.clone(),
            args,
            limit: cfg.limit,
            log: dir.join(format!("{name}.log")),
            read_listening: true,
            time_file: None,
            env: backend.env.clone(),
        },
    )?;
    let (s, r) = p.ports()?;
    Ok((p, s, r))
}

fn client_args(cfg: &Cfg, ports: (u16, u16), folder: &Path, label: &str, once: bool, extra: &[String]) -> Vec<String> {
    let mut a = vec![
        "127.0.0.1".to_string(),
        ports.0.to_string(),
        ports.1.to_string(),
        folder.display().to_string(),
        cfg.chunk.to_string(),
        "--label".into(),
        label.into(),
    ];
    if once {
        a.push("--once".into());
    }
    a.extend_from_slice(extra);
    a
}

fn start_client(cfg: &Cfg, dir: &Path, name: &str, ports: (u16, u16), folder: &Path, once: bool) -> R<Proc> {
    start_client_with(cfg, dir, name, ports, folder, once, &[])
}

/// [`start_client`] with more arguments (`--server-fingerprint FP`).
fn start_client_with(
    cfg: &Cfg,
    dir: &Path,
    name: &str,
    ports: (u16, u16),
    folder: &Path,
    once: bool,
    extra: &[String],
) -> R<Proc> {
    Proc::start(
        name,
        Spec {
            bin: cfg.client.clone(),
            args: client_args(cfg, ports, folder, name, once, extra),
            limit: cfg.limit,
            log: dir.join(format!("{name}.log")),
            read_listening: false,
            time_file: once.then(|| dir.join(format!("{name}.maxrss"))),
            env: Vec::new(),
        },
    )
}

/// The 64-hex-digit fingerprint `bin ARGS` prints (`server fingerprint`,
/// `client fingerprint`), which make the key first if there is none.
fn fingerprint_of(cfg: &Cfg, what: &str, bin: &Path, args: &[String], out: &Path) -> R<String> {
    run_timed(what, &bin.display().to_string(), args, cfg.limit, out)?;
    let text = fs::read_to_string(out)?;
    let fp = text.lines().map(str::trim).find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()));
    Ok(fp.ok_or_else(|| format!("{what} printed no fingerprint: {}", text.trim()))?.to_owned())
}

/// Before the server starts: makes the client's key in `folder` (`client
/// fingerprint`), in both modes, so that the timed run does not include
/// making it (about 30 ms of CPU, mostly seeding aws-lc's random number
/// generator) and the two modes differ by TLS alone; with `secure` (the
/// `*_tls` rows), also makes the server's key in `dir`'s server root and
/// enrols the client's (`server enroll`: from then on the server admits
/// enrolled keys only, over TLS, so the client proves its key too), and
/// returns the client arguments that pin the server's key.
fn prepare_keys(cfg: &Cfg, dir: &Path, folder: &Path, secure: bool) -> R<Vec<String>> {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let fp_args = args(&["fingerprint", &folder.display().to_string()]);
    let client_fp = fingerprint_of(cfg, "client fingerprint", &cfg.client, &fp_args, &dir.join("client-fingerprint.out"))?;
    if !secure {
        return Ok(Vec::new());
    }
    let root = dir.join("server-root").display().to_string();
    let server_fp = fingerprint_of(
        cfg,
        "server fingerprint",
        &cfg.server,
        &args(&["fingerprint", "--root", &root]),
        &dir.join("server-fingerprint.out"),
    )?;
    run_timed(
        "server enroll",
        &cfg.server.display().to_string(),
        &args(&["enroll", "--root", &root, "--label", "bench", &client_fp]),
        cfg.limit,
        &dir.join("enroll.out"),
    )?;
    Ok(vec!["--server-fingerprint".into(), server_fp])
}

/// What one `client --once` upload gave: its wall time, exit status and
/// peak RSS (KiB), and the server's peak RSS (KiB).
struct Once {
    time: Duration,
    status: ExitStatus,
    client_rss: u64,
    server_hwm: u64,
}

/// Starts a fresh server in `dir` and uploads `folder` with `client
/// --once`, after [`prepare_keys`]; with `secure`, over mutual TLS (the
/// server's log must say it is in secure mode: plaintext refused).
fn upload_once(cfg: &Cfg, dir: &Path, folder: &Path, secure: bool, backend: &Backend) -> R<Once> {
    let extra = prepare_keys(cfg, dir, folder, secure)?;
    let (mut server, s, r) = start_instance(cfg, dir, "server", backend)?;
    let mut c = start_client_with(cfg, dir, "client", (s, r), folder, true, &extra)?;
    let (time, status, client_rss) = c.wait_exit()?;
    let server_hwm = server.status().map_or(0, |x| x.vm_hwm_kib);
    server.stop();
    if secure && !fs::read_to_string(dir.join("server.log")).is_ok_and(|t| t.contains("secure mode")) {
        return Err("the server did not log \"secure mode\" (enrolment not in force)".into());
    }
    Ok(Once { time, status, client_rss, server_hwm })
}

/// Waits until `needle` shows up in the log (the client's "reconciled …"
/// line: connected and initial sync done).
fn wait_log(path: &Path, needle: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if fs::read_to_string(path).is_ok_and(|t| t.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn wait_ready(res: &mut Results, phase: &str, p: &Proc) {
    if !wait_log(&p.log, "reconciled", Duration::from_secs(20)) {
        res.notes.push(format!("{phase}: {} never logged \"reconciled\" within 20 s; went on", p.name));
    }
}

/// Collects WARN/ERROR/panic lines of a run's logs, then removes the run's folder.
fn finish_run(res: &mut Results, phase: &str, dir: &Path) {
    if let Ok(rd) = fs::read_dir(dir) {
        let mut logs: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "log")).collect();
        logs.sort();
        for log in logs {
            let text = fs::read_to_string(&log).unwrap_or_default();
            let bad: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(" WARN") || l.contains(" ERROR") || l.contains("panicked") || l.contains("error:"))
                .collect();
            if bad.is_empty() {
                continue;
            }
            let name = log.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            for l in bad.iter().take(3) {
                res.findings.push(format!("{phase} {name}: {}", l.trim()));
            }
            if bad.len() > 3 {
                res.findings.push(format!("{phase} {name}: … {} such lines in all", bad.len()));
            }
        }
    }
    let _ = fs::remove_dir_all(dir);
}

fn run_dir(cfg: &Cfg, phase: &str, i: usize) -> R<PathBuf> {
    let d = cfg.work.join(format!("{phase}-run{}", i + 1));
    procs::locked(|| {
        let _ = fs::remove_dir_all(&d);
        // Not create_dir_all: after an interrupt removed the scratch
        // folder, this must fail rather than recreate it.
        fs::create_dir(&d)
    })?;
    Ok(d)
}

fn kib_to_mib(k: u64) -> f64 {
    k as f64 / 1024.0
}

// ------------------------------------------------------------------- phases

fn md5_mbps(buf: &[u8]) -> f64 {
    let t = Instant::now();
    let d = Md5::digest(buf);
    let s = t.elapsed().as_secs_f64();
    std::hint::black_box(d);
    buf.len() as f64 / MB / s
}

/// One B1 upload of `big` in a fresh run folder, plain or secure, with
/// the server on `backend` (P1 when shared): MB/s, and the peak RSS (KiB)
/// of the server and the client.
fn b1_upload(cfg: &Cfg, res: &mut Results, big: &Path, i: usize, secure: bool, backend: &Backend) -> R<(f64, u64, u64)> {
    let (tag, phase) = match (secure, backend.is_shared(), cfg.disk.is_some()) {
        (_, true, _) => ("p1", format!("P1 run {}", i + 1)),
        (_, _, true) => ("b1d", format!("B1D run {}", i + 1)),
        (true, false, _) => ("b1tls", format!("B1 run {} TLS", i + 1)),
        (false, false, _) => ("b1", format!("B1 run {}", i + 1)),
    };
    let dir = run_dir(cfg, tag, i)?;
    let folder = dir.join("client");
    fs::create_dir_all(&folder)?;
    fs::hard_link(big, folder.join("big.bin")).or_else(|_| fs::copy(big, folder.join("big.bin")).map(|_| ()))?;
    let out = cfg.drop_caches().and_then(|()| upload_once(cfg, &dir, &folder, secure, backend));
    let stored = data::count_files_of_size(&dir.join("server-root"), cfg.big);
    finish_run(res, &phase, &dir);
    let o = out?;
    if !o.status.success() || stored == 0 {
        return Err(format!("client --once exited {}; files of the right size in the server's root: {stored}", o.status).into());
    }
    Ok((cfg.big as f64 / MB / o.time.as_secs_f64(), o.server_hwm, o.client_rss))
}

/// True when run `i` (from 0) uploads in secure mode before the plain one.
fn tls_first(i: usize) -> bool {
    i % 2 == 1
}

fn b1(cfg: &Cfg, res: &mut Results, rsyncd: &Rsyncd, big: &Path, md5_buf: &[u8], i: usize) -> R<()> {
    // Plain and secure back to back, for the cost run by run; the secure
    // upload goes first in even-numbered runs, so that a change in the
    // machine's load does not always fall on the same mode.
    let early = tls_first(i).then(|| b1_upload(cfg, res, big, i, true, &Backend::default()));
    let (ours, server_hwm, client_rss) = b1_upload(cfg, res, big, i, false, &Backend::default())?;
    match early.unwrap_or_else(|| b1_upload(cfg, res, big, i, true, &Backend::default())) {
        Ok((tls, s_hwm, c_rss)) => {
            eprintln!(
                "B1 run {} TLS: {tls:.0} MB/s ({:.1} % below plain {ours:.0} MB/s); RSS server {:.1} MiB, client {:.1} MiB",
                i + 1,
                100.0 * (1.0 - tls / ours),
                kib_to_mib(s_hwm),
                kib_to_mib(c_rss)
            );
            res.push("b1_tls", tls);
            res.push("b1_tls_cost", 100.0 * (1.0 - tls / ours));
            res.push("b6_server_b1_tls", kib_to_mib(s_hwm));
            res.push("b6_client_b1_tls", kib_to_mib(c_rss));
        }
        Err(e) => note_err(res, format!("B1 run {} TLS: {e}", i + 1)),
    }

    let rd = rsyncd.push(big, false, &[], cfg.limit)?;
    let theirs = cfg.big as f64 / MB / rd.as_secs_f64();
    let rm = rsyncd.push(big, false, &["--checksum-choice=md5"], cfg.limit)?;
    let theirs_md5 = cfg.big as f64 / MB / rm.as_secs_f64();
    rsyncd.clear()?;
    let md5 = md5_mbps(md5_buf);
    let limit = md5 * cfg.cores as f64 / 4.0;
    eprintln!(
        "B1 run {}: dropsync {:.2} s = {ours:.0} MB/s; rsync {theirs:.0} MB/s, rsync md5 {theirs_md5:.0} MB/s; md5 {md5:.0} MB/s → limit {limit:.0} MB/s; RSS server {:.1} MiB, client {:.1} MiB",
        i + 1,
        cfg.big as f64 / MB / ours,
        kib_to_mib(server_hwm),
        kib_to_mib(client_rss)
    );
    res.push("b1_dropsync", ours);
    res.push("b1_rsync", theirs);
    res.push("b1_rsync_md5", theirs_md5);
    res.push("b1_ratio", ours / theirs);
    res.push("b1_ratio_md5", ours / theirs_md5);
    res.push("b1_md5", md5);
    res.push("b1_limit", limit);
    res.push("b1_of_limit", 100.0 * ours / limit);
    res.push("b6_server_b1", kib_to_mib(server_hwm));
    res.push("b6_client_b1", kib_to_mib(client_rss));
    Ok(())
}

fn b2(cfg: &Cfg, res: &mut Results, rsyncd: &Rsyncd, big: &Path, i: usize) -> R<()> {
    let phase = format!("B2 run {}", i + 1);
    let dir = run_dir(cfg, "b2", i)?;
    let (fa, fb, stage) = (dir.join("A"), dir.join("B"), dir.join("stage"));
    for d in [&fa, &fb, &stage] {
        fs::create_dir_all(d)?;
    }
    fs::hard_link(big, stage.join("big.bin")).or_else(|_| fs::copy(big, stage.join("big.bin")).map(|_| ()))?;
    let out = (|| -> R<(f64, Option<f64>, u64, u64, u64)> {
        let (mut server, s, r) = start_server(cfg, &dir, &[])?;
        let mut cb = start_client(cfg, &dir, "client-b", (s, r), &fb, false)?;
        let mut ca = start_client(cfg, &dir, "client-a", (s, r), &fa, false)?;
        wait_ready(res, &phase, &cb);
        wait_ready(res, &phase, &ca);
        let target = fb.join("big.bin");
        let t0 = Instant::now();
        fs::rename(stage.join("big.bin"), fa.join("big.bin"))?;
        let (secs, uploaded) = until_arrived(&target, cfg.big, &ca.log, "big.bin", t0, cfg.limit)?;
        let hwm = |p: &Proc| p.status().map_or(0, |x| x.vm_hwm_kib);
        let (hs, ha, hb) = (hwm(&server), hwm(&ca), hwm(&cb));
        ca.stop();
        cb.stop();
        server.stop();
        if !data::same_content(&target, big)? {
            return Err("B's copy differs from the original".into());
        }
        Ok((secs, uploaded, hs, ha, hb))
    })();
    finish_run(res, &phase, &dir);
    let (secs, uploaded, hs, ha, hb) = out?;
    eprintln!(
        "{phase}: {secs:.2} s = {:.0} MB/s (A's upload done at {}); RSS server {:.1} MiB, A {:.1} MiB, B {:.1} MiB",
        cfg.big as f64 / MB / secs,
        uploaded.map_or("? (no \"uploaded big.bin\" in A's log)".to_string(), |u| format!("{u:.2} s")),
        kib_to_mib(hs),
        kib_to_mib(ha),
        kib_to_mib(hb)
    );
    // rsync's way from A to B: a push into the module, then a pull from
    // it into an empty folder, timed together.
    let pulled = run_dir(cfg, "b2rsync", i)?;
    let rsync = (|| -> R<f64> {
        let push = rsyncd.push(big, false, &[], cfg.limit)?;
        let pull = rsyncd.pull(&pulled, &[], cfg.limit)?;
        if !data::same_content(&pulled.join(big.file_name().ok_or("no file name")?), big)? {
            return Err("rsync's pulled copy differs from the original".into());
        }
        Ok((push + pull).as_secs_f64())
    })();
    let _ = fs::remove_dir_all(&pulled);
    rsyncd.clear()?;
    match rsync {
        Ok(r) => {
            eprintln!("{phase}: rsync push + pull {r:.2} s = {:.0} MB/s", cfg.big as f64 / MB / r);
            res.push("b2_rsync", r);
            res.push("b2_rsync_mbps", cfg.big as f64 / MB / r);
            res.push("b2_vs_rsync", r / secs);
        }
        Err(e) => note_err(res, format!("{phase} rsync: {e}")),
    }
    res.push("b2_seconds", secs);
    res.push("b2_mbps", cfg.big as f64 / MB / secs);
    if let Some(u) = uploaded {
        res.push("b2_upload", u);
        res.push("b2_deliver", secs - u);
    }
    res.push("b6_server_b2", kib_to_mib(hs));
    res.push("b6_client_a_b2", kib_to_mib(ha));
    res.push("b6_client_b_b2", kib_to_mib(hb));
    Ok(())
}

/// Waits (polling every 2 ms, at most `limit` after `t0`) until `target`
/// in B's folder has `size` bytes (the client renames a verified file into
/// place, so that is the whole file): seconds after `t0`, and when A's log
/// (`a_log`) said `uploaded NAME` (the split between the two hops).
fn until_arrived(target: &Path, size: u64, a_log: &Path, name: &str, t0: Instant, limit: Duration) -> R<(f64, Option<f64>)> {
    let deadline = t0 + limit;
    let said = format!("uploaded {name}");
    let mut uploaded = None;
    loop {
        if fs::metadata(target).is_ok_and(|m| m.len() == size) {
            return Ok((t0.elapsed().as_secs_f64(), uploaded));
        }
        if uploaded.is_none() && fs::read_to_string(a_log).is_ok_and(|t| t.contains(&said)) {
            uploaded = Some(t0.elapsed().as_secs_f64());
        }
        if Instant::now() > deadline {
            return Err(format!("not in B's folder after {} s", limit.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One B3 upload of `tree` in a fresh run folder, plain or secure, with
/// the server on `backend` (P3 when shared): seconds.
fn b3_upload(cfg: &Cfg, res: &mut Results, tree: &Path, i: usize, secure: bool, backend: &Backend) -> R<f64> {
    let (tag, phase) = match (secure, backend.is_shared(), cfg.disk.is_some()) {
        (_, true, _) => ("p3", format!("P3 run {}", i + 1)),
        (_, _, true) => ("b3d", format!("B3D run {}", i + 1)),
        (true, false, _) => ("b3tls", format!("B3 run {} TLS", i + 1)),
        (false, false, _) => ("b3", format!("B3 run {}", i + 1)),
    };
    let dir = run_dir(cfg, tag, i)?;
    let folder = dir.join("client");
    data::link_tree(tree, &folder)?;
    let n = cfg.small_dirs * cfg.small_per_dir;
    let out = cfg.drop_caches().and_then(|()| upload_once(cfg, &dir, &folder, secure, backend));
    let stored = data::count_files_of_size(&dir.join("server-root"), cfg.small_size as u64);
    finish_run(res, &phase, &dir);
    let o = out?;
    if !o.status.success() || stored < n {
        return Err(format!("client --once exited {}; {stored} of {n} files stored by the server", o.status).into());
    }
    Ok(o.time.as_secs_f64())
}

fn b3(cfg: &Cfg, res: &mut Results, rsyncd: &Rsyncd, tree: &Path, i: usize) -> R<()> {
    let phase = format!("B3 run {}", i + 1);
    let n = (cfg.small_dirs * cfg.small_per_dir) as f64;
    // As in B1: back to back, the secure one first in even-numbered runs.
    let early = tls_first(i).then(|| b3_upload(cfg, res, tree, i, true, &Backend::default()));
    let secs = b3_upload(cfg, res, tree, i, false, &Backend::default())?;
    match early.unwrap_or_else(|| b3_upload(cfg, res, tree, i, true, &Backend::default())) {
        Ok(tls) => {
            eprintln!("{phase} TLS: {tls:.2} s = {:.0} files/s ({:.1} % below plain)", n / tls, 100.0 * (1.0 - secs / tls));
            res.push("b3_tls", n / tls);
            res.push("b3_tls_cost", 100.0 * (1.0 - secs / tls));
        }
        Err(e) => note_err(res, format!("{phase} TLS: {e}")),
    }
    let rd = rsyncd.push(tree, true, &[], cfg.limit)?.as_secs_f64();
    rsyncd.clear()?;
    eprintln!("{phase}: dropsync {secs:.2} s = {:.0} files/s; rsync {rd:.2} s = {:.0} files/s", n / secs, n / rd);
    res.push("b3_dropsync", n / secs);
    res.push("b3_rsync", n / rd);
    res.push("b3_ratio", rd / secs);
    Ok(())
}

fn b4(cfg: &Cfg, res: &mut Results, i: usize) -> R<()> {
    let lat = edit_latencies(cfg, res, &format!("B4 run {}", i + 1), "b4", i, &Backend::default(), false)?;
    res.push("b4_p50", percentile(&lat, 50.0));
    res.push("b4_p99", percentile(&lat, 99.0));
    res.push("b4_max", percentile(&lat, 100.0));
    res.b4_samples.push(lat);
    Ok(())
}

/// B4's measure in a fresh run folder `tag`-runN, the servers on
/// `backend`: the latency of each edit (ms; 10 s for one never seen).
/// With `two`, client B is on a second instance (`server-2`, sharing
/// `backend`'s catalog and bucket), client A on the first.
fn edit_latencies(cfg: &Cfg, res: &mut Results, phase: &str, tag: &str, i: usize, backend: &Backend, two: bool) -> R<Vec<f64>> {
    let dir = run_dir(cfg, tag, i)?;
    let (fa, fb) = (dir.join("A"), dir.join("B"));
    fs::create_dir_all(&fa)?;
    fs::create_dir_all(&fb)?;
    let mut rng = Rng::new(0xb4 + i as u64);
    let out = (|| -> R<(Vec<f64>, usize)> {
        let (mut server, s, r) = start_instance(cfg, &dir, "server", backend)?;
        let mut second = match two {
            true => Some(start_instance(cfg, &dir, "server-2", backend)?),
            false => None,
        };
        let ports_b = second.as_ref().map_or((s, r), |(_, s2, r2)| (*s2, *r2));
        let mut cb = start_client(cfg, &dir, "client-b", ports_b, &fb, false)?;
        let mut ca = start_client(cfg, &dir, "client-a", (s, r), &fa, false)?;
        wait_ready(res, phase, &cb);
        wait_ready(res, phase, &ca);
        let (src, dst) = (fa.join("edit.txt"), fb.join("edit.txt"));
        let per_edit = Duration::from_secs(10);
        let mut lat = Vec::with_capacity(cfg.edits);
        let mut missed = 0;
        for e in 0..cfg.edits {
            let mut content = format!("edit {} of run {} ", e + 1, i + 1).into_bytes();
            while content.len() < cfg.edit_size {
                content.push(b'a' + (rng.next_u64() % 26) as u8);
            }
            content.truncate(cfg.edit_size);
            let t0 = Instant::now();
            fs::write(&src, &content)?;
            loop {
                if fs::read(&dst).is_ok_and(|b| b == content) {
                    lat.push(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                if t0.elapsed() > per_edit {
                    missed += 1;
                    lat.push(per_edit.as_secs_f64() * 1000.0);
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ca.stop();
        cb.stop();
        if let Some((p, _, _)) = second.as_mut() {
            p.stop();
        }
        server.stop();
        Ok((lat, missed))
    })();
    finish_run(res, phase, &dir);
    let (lat, missed) = out?;
    let (p50, p99, max) = (percentile(&lat, 50.0), percentile(&lat, 99.0), percentile(&lat, 100.0));
    eprintln!("{phase}: p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms ({missed} not seen within 10 s)");
    if missed > 0 {
        res.notes.push(format!("{phase}: {missed} edit(s) not seen on B within 10 s (counted as 10 s)"));
    }
    Ok(lat)
}

/// The phases on the ext4 image (B1D, B3D, B9): makes and mounts it,
/// copies B1's file and B3's tree onto it, starts an rsync daemon whose
/// module is on it, runs them with the run folders there, then unmounts
/// and deletes it. Without the image (not root, no room on a disk), each
/// such phase's rows say ERROR and the notes say why.
fn disk_phases(cfg: &Cfg, res: &mut Results, big: &Path, tree: &Path) {
    let phases: Vec<&str> = ["B1D", "B3D", "B9"].into_iter().filter(|p| cfg.runs_phase(p)).collect();
    if phases.is_empty() {
        return;
    }
    let t = Instant::now();
    let disk = match disk::Disk::make(&cfg.work.join("disk"), cfg.disk_size) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            for p in phases {
                note_err(res, format!("{p} run 1: no ext4 disk for it: {e}"));
            }
            return;
        }
    };
    eprintln!("bench: disk ready in {:.1} s: {}", t.elapsed().as_secs_f64(), disk.describe);
    res.notes.push(format!("disk rows (B1D, B3D, B9): {}", disk.describe));
    let dcfg = Cfg { work: disk.mnt.clone(), disk: Some(disk.clone()), ..cfg.clone() };
    let out = (|| -> R<()> {
        let data = disk.mnt.join("data");
        fs::create_dir_all(&data)?;
        let mut rsyncd = match cfg.runs_phase("B1D") || cfg.runs_phase("B3D") {
            true => Some(Rsyncd::start_at(&cfg.work.join("rsyncd-disk"), &disk.mnt.join("rsync-dest"), cfg.limit * 8)?),
            false => None,
        };
        if cfg.runs_phase("B1D") {
            let on_disk = data.join("big.bin");
            fs::copy(big, &on_disk)?;
            for i in 0..cfg.runs {
                if let Err(e) = b1d(&dcfg, res, rsyncd.as_ref().ok_or("no rsyncd")?, &on_disk, i) {
                    note_err(res, format!("B1D run {}: {e}", i + 1));
                }
            }
            fs::remove_file(&on_disk)?;
        }
        if cfg.runs_phase("B3D") {
            let on_disk = data.join("small");
            data::link_tree(tree, &on_disk)?;
            for i in 0..cfg.runs {
                if let Err(e) = b3d(&dcfg, res, rsyncd.as_ref().ok_or("no rsyncd")?, &on_disk, i) {
                    note_err(res, format!("B3D run {}: {e}", i + 1));
                }
            }
            let _ = fs::remove_dir_all(&on_disk);
        }
        if let Some(d) = rsyncd.as_mut() {
            d.stop();
        }
        if cfg.runs_phase("B9") {
            b9::run_all(&dcfg, res, &cfg.work);
        }
        Ok(())
    })();
    if let Err(e) = out {
        for p in phases {
            note_err(res, format!("{p} run 1: {e}"));
        }
    }
    drop(dcfg);
    match Arc::try_unwrap(disk) {
        Ok(d) => d.release(),
        Err(_) => eprintln!("bench: the disk is still in use; unmounted at exit"),
    }
}

/// B1 on the disk: dropsync, then rsync md5 without and with `--fsync`
/// (dropsync's server makes each commit durable; rsync by default does not).
fn b1d(cfg: &Cfg, res: &mut Results, rsyncd: &Rsyncd, big: &Path, i: usize) -> R<()> {
    let (ours, server_hwm, _) = b1_upload(cfg, res, big, i, false, &Backend::default())?;
    let rsync = |extra: &[&str]| -> R<f64> {
        rsyncd.clear()?;
        cfg.drop_caches()?;
        let d = rsyncd.push_onto(big, false, extra, cfg.limit)?;
        Ok(cfg.big as f64 / MB / d.as_secs_f64())
    };
    let md5 = rsync(&["--checksum-choice=md5"])?;
    let md5_fsync = rsync(&["--checksum-choice=md5", "--fsync"])?;
    rsyncd.clear()?;
    eprintln!(
        "B1D run {}: dropsync {ours:.0} MB/s; rsync md5 {md5:.0} MB/s, with --fsync {md5_fsync:.0} MB/s; server RSS {:.1} MiB",
        i + 1,
        kib_to_mib(server_hwm)
    );
    res.push("b1d_dropsync", ours);
    res.push("b1d_rsync_md5", md5);
    res.push("b1d_ratio_md5", ours / md5);
    res.push("b1d_rsync_md5_fsync", md5_fsync);
    res.push("b1d_ratio_md5_fsync", ours / md5_fsync);
    res.push("b6_server_b1d", kib_to_mib(server_hwm));
    Ok(())
}

/// B3 on the disk, beside rsync without and with `--fsync`.
fn b3d(cfg: &Cfg, res: &mut Results, rsyncd: &Rsyncd, tree: &Path, i: usize) -> R<()> {
    let n = (cfg.small_dirs * cfg.small_per_dir) as f64;
    let secs = b3_upload(cfg, res, tree, i, false, &Backend::default())?;
    let rsync = |extra: &[&str]| -> R<f64> {
        rsyncd.clear()?;
        cfg.drop_caches()?;
        Ok(rsyncd.push_onto(tree, true, extra, cfg.limit)?.as_secs_f64())
    };
    let plain = rsync(&[])?;
    let fsync = rsync(&["--fsync"])?;
    rsyncd.clear()?;
    eprintln!(
        "B3D run {}: dropsync {secs:.2} s = {:.0} files/s; rsync {plain:.2} s = {:.0} files/s, with --fsync {fsync:.2} s = {:.0} files/s",
        i + 1,
        n / secs,
        n / plain,
        n / fsync
    );
    res.push("b3d_dropsync", n / secs);
    res.push("b3d_rsync", n / plain);
    res.push("b3d_ratio", plain / secs);
    res.push("b3d_rsync_fsync", n / fsync);
    res.push("b3d_ratio_fsync", fsync / secs);
    Ok(())
}

/// Descriptors the server holds besides its sessions' (listeners, logs,
/// the catalog), with room to spare.
const SERVER_FD_SPARE: u64 = 64;
/// Sessions of the probe that measures the server's descriptors per session.
const PROBE_SESSIONS: usize = 20;

/// The server's open descriptors per session: a server with
/// [`PROBE_SESSIONS`] sessions of one worker, counted before and after.
fn server_fds_per_session(cfg: &Cfg) -> R<f64> {
    let dir = run_dir(cfg, "b5probe", 0)?;
    let out = (|| -> R<f64> {
        let (mut server, s, r) = start_server(cfg, &dir, &[])?;
        let count = |pid: u32| fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()) as u64;
        let before = count(server.pid());
        let spec = Spec {
            bin: std::env::current_exe()?,
            args: ["--fanout-worker".to_string()]
                .into_iter()
                .chain([s as usize, r as usize, 0, PROBE_SESSIONS, 1, 60].map(|v| v.to_string()))
                .collect(),
            limit: Duration::from_secs(90),
            log: dir.join("probe-worker.log"),
            read_listening: false,
            time_file: None,
            env: Vec::new(),
        };
        let (mut w, stdin, stdout) = Proc::start_piped("fan-out probe", spec)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let ready = loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(l) if l == "ready" => break true,
                Ok(_) => continue,
                Err(_) => break false,
            }
        };
        let after = count(server.pid());
        drop(stdin);
        w.stop();
        server.stop();
        if !ready {
            return Err("the probe's sessions were not greeted within 30 s".into());
        }
        Ok((after.saturating_sub(before) as f64 / PROBE_SESSIONS as f64).max(1.0))
    })();
    finish_run(&mut Results::default(), "B5 probe", &dir);
    out
}

/// Raises what B5's sessions need (see `sys.rs`), runs its runs and puts
/// the limits back. When the open files a server may hold cannot be raised
/// to what the sessions asked for need, runs the most sessions that fit
/// (measuring the server's descriptors per session first) and says why.
fn b5_all(cfg: &Cfg, res: &mut Results, payload: Arc<Vec<u8>>) {
    let wanted = cfg.fan_sessions as u64;
    let mut raised = sys::Raised::default();
    // One more than a connected session holds: while the file goes out,
    // each session's delivery holds the content open (the server's
    // outbound.rs opens it per session as it prepares the batch).
    let per = match server_fds_per_session(cfg) {
        Ok(p) => p + 1.0,
        Err(e) => {
            note_err(res, format!("B5 run 1: measuring the server's descriptors per session: {e}"));
            return;
        }
    };
    let need = (per * wanted as f64).ceil() as u64 + SERVER_FD_SPARE;
    let files = raised.nofile_at_least(need);
    let fit = ((files.saturating_sub(SERVER_FD_SPARE) as f64 / per) as u64).min(wanted);
    // Rounded down to hundreds when cut, for a margin and a plain figure.
    let n = if fit < wanted { fit / 100 * 100 } else { wanted };
    if n < wanted {
        let (_, hard) = sys::nofile();
        let why = format!(
            "B5 ran {n} sessions, not {wanted}: the server holds {:.1} descriptors per connected session (measured with {PROBE_SESSIONS}) and one more per session while the file goes out (the content, opened for each delivery), so {wanted} need {need}, and a process here may open {hard} at most (the hard limit; root here lacks CAP_SYS_RESOURCE to raise it)",
            per - 1.0
        );
        eprintln!("bench: {why}");
        res.notes.push(why);
    }
    if n == 0 {
        note_err(res, "B5 run 1: no session fits in the open files allowed".into());
        return;
    }
    let cfg = Cfg { fan_sessions: n as usize, ..cfg.clone() };
    if let Some(r) = res.rows.iter_mut().find(|r| r.key == "b5_last") {
        r.figure = format!("{} MiB to {n} sessions, until the last has it, s", cfg.fan_size as u64 / MIB);
    }
    // 3 server threads and 1 worker thread per session, and room for the
    // rest of the machine; each thread's stack is 2 mappings.
    let needs = (|| -> R<()> {
        raised.sysctl_at_least("kernel/pid_max", (4 * n + 32_768).next_power_of_two().max(32_768))?;
        raised.sysctl_at_least("kernel/threads-max", 6 * n + 65_536)?;
        raised.sysctl_at_least("vm/max_map_count", (8 * n + 65_530).next_power_of_two())?;
        Ok(())
    })();
    if let Err(e) = needs {
        raised.restore();
        note_err(res, format!("B5 run 1: cannot give {n} sessions what they need: {e}"));
        return;
    }
    if !raised.changed.is_empty() {
        let what = raised.changed.join(", ");
        eprintln!("bench: B5: raised {what} (put back after B5)");
        res.notes.push(format!("B5 raised for its runs, then put back: {what}"));
    }
    for i in 0..cfg.runs {
        if let Err(e) = b5(&cfg, res, payload.clone(), i) {
            note_err(res, format!("B5 run {}: {e}", i + 1));
        }
    }
    raised.restore();
}

fn b5(cfg: &Cfg, res: &mut Results, payload: Arc<Vec<u8>>, i: usize) -> R<()> {
    let phase = format!("B5 run {}", i + 1);
    let dir = run_dir(cfg, "b5", i)?;
    let out = (|| -> R<fanout::FanoutResult> {
        // The server's defaults admit 4096 clients, 3584 from one address;
        // every session here comes from 127.0.0.1.
        let max = (cfg.fan_sessions + 64).to_string();
        let (mut server, s, r) = start_server(cfg, &dir, &["--max-clients", &max, "--max-clients-per-address", &max])?;
        let f = fanout::run(s, r, server.pid(), cfg.fan_sessions, payload, cfg.chunk, cfg.limit, &dir)?;
        server.stop();
        Ok(f)
    })();
    finish_run(res, &phase, &dir);
    let f = out?;
    eprintln!(
        "{phase}: ramp {:.2} s, upload {:.3} s, last session {:.2} s; {} ok, {} failed; server VmHWM {:.1} MiB, threads peak {} (end {}), {} descriptors",
        f.ramp.as_secs_f64(),
        f.upload.as_secs_f64(),
        f.last.as_secs_f64(),
        f.ok,
        f.failures.len(),
        kib_to_mib(f.server_hwm_kib),
        f.threads_peak,
        f.threads_end,
        f.server_fds
    );
    if !f.failures.is_empty() {
        res.notes.push(format!("{phase}: {} session(s) failed, e.g. {}", f.failures.len(), f.failures[0]));
    }
    if f.ok < cfg.fan_sessions {
        return Err(format!("only {} of {} sessions got the file", f.ok, cfg.fan_sessions).into());
    }
    res.push("b5_last", f.last.as_secs_f64());
    res.push("b5_upload", f.upload.as_secs_f64());
    res.push("b5_ramp", f.ramp.as_secs_f64());
    res.push("b5_hwm", kib_to_mib(f.server_hwm_kib));
    res.push("b5_threads", f.threads_peak as f64);
    res.push("b5_fds", f.server_fds as f64);
    Ok(())
}

// ------------------------------------------------------------------ output

fn config_lines(cfg: &Cfg, rsync_version: &str, rsync_checksums: &str) -> Vec<String> {
    let default_ck = rsync_checksums.split_whitespace().next().unwrap_or("?");
    let mut lines = vec![
        format!("runs: {} per figure (median, min, max){}", cfg.runs, if cfg.quick { "; BENCH_QUICK sizes" } else { "" }),
        format!("machine: {} core(s), {}", cfg.cores, cpu_model()),
        format!("scratch: {} (tmpfs when /dev/shm), loopback 127.0.0.1 only", cfg.work.parent().map_or(String::new(), |p| p.display().to_string())),
        format!(
            "server: `server 0 0 --bind 127.0.0.1 --root DIR` (defaults: --workers {}, --parallel {}, --chunk-size {}, info logging)",
            help_default(&cfg.server, "--workers"),
            help_default(&cfg.server, "--parallel"),
            help_default(&cfg.server, "--chunk-size"),
        ),
        format!(
            "client: `client 127.0.0.1 SEND RECV DIR {} --label NAME [--once]` (chunk size {} MiB; defaults: --parallel {}, --in-flight {}, --debounce-ms {} (B4), --rescan-secs {}, info logging)",
            cfg.chunk,
            cfg.chunk / MIB as usize,
            help_default(&cfg.client, "--parallel"),
            help_default(&cfg.client, "--in-flight"),
            help_default(&cfg.client, "--debounce-ms"),
            help_default(&cfg.client, "--rescan-secs"),
        ),
        format!("rsync: {rsync_version}; `rsync -a SRC rsync://127.0.0.1:PORT/bench/` into an emptied module; default checksum negotiates {default_ck} (list: {rsync_checksums})"),
        "MB = 10^6 bytes; MiB = 2^20 bytes; PASS/MISS judged on the median".into(),
    ];
    if let Some(o) = &cfg.only {
        lines.insert(1, format!("phases run: {} (--only)", o.join(", ")));
    }
    let mut at = lines.len() - 1;
    if cfg.runs_phase("B1") || cfg.runs_phase("B3") {
        lines.insert(at, "secure rows (`*_tls`): before the server starts, `server fingerprint --root DIR`, `client fingerprint DIR` and `server enroll --root DIR --label bench FP` (secure mode: plaintext and unknown keys refused, so the TLS 1.3 is mutual); the client adds `--server-fingerprint FP`; back to back with the plain upload of the same run (after it in odd-numbered runs, before it in even-numbered ones), cost = 1 − TLS ÷ plain. B1 and B3 in both modes: the client's key made (`client fingerprint DIR`) before the timed run".into());
        at += 1;
    }
    if let Some(line) = scaling::config_line(cfg) {
        lines.insert(at, line);
        at += 1;
    }
    if cfg.runs_phase("B5") {
        lines.insert(
            at,
            format!(
                "B5 sessions: raw protocol sessions in worker processes ({} at most each), a thread each (128 KiB stack), chunk {} MiB upload; the server adds `--max-clients N+64 --max-clients-per-address N+64` for N sessions (every session comes from 127.0.0.1)",
                fanout::PER_WORKER,
                cfg.chunk / MIB as usize,
            ),
        );
        at += 1;
    }
    if cfg.runs_phase("B7") {
        lines.insert(at, "B7: both clients connect through byte-counting TCP proxies in the bench (every byte of their 4 connections, both ways; the times include the proxies' copies)".into());
        at += 1;
    }
    if cfg.runs_phase("B8") {
        lines.insert(
            at,
            format!(
                "B8: {} run(s) (BENCH_B8_RUNS); {} files (BENCH_B8_FILES) on the scratch tmpfs, or {} (BENCH_B8_FALLBACK) once an initial sync with them stalls (no file sent for 60 s) or takes over 450 s; the server adds `--http 127.0.0.1:0` (its /metrics confirms the paths); in sync = the client's `.dropsync/status` says so",
                cfg.b8_runs, cfg.b8_files, cfg.b8_fallback
            ),
        );
        at += 1;
    }
    if cfg.runs_phase("B9") {
        lines.insert(at, "B9: A's folder holds `.syncignore` = `/.git`; B's folder compared with the tag's files (paths, sizes, then MD5s; empty folders aside) every 20 ms; rsync: `rsync -a --delete --exclude=/.git --exclude=/.syncignore A/ rsync://…/bench/`, then `rsync -a --delete rsync://…/bench/ B/`, module on the same disk".into());
        at += 1;
    }
    if cfg.runs_phase("B1D") || cfg.runs_phase("B3D") {
        lines.insert(at, "disk rows (B1D, B3D): the client's folder, the server's root and the rsync module on the ext4 image, the data copied there first; the file system unmounted and mounted again before each timed run (dropsync, rsync, rsync --fsync), so the data is read from the disk".into());
    }
    lines
}

/// The `[default: X]` that `bin --help` shows for `flag`, or "?".
fn help_default(bin: &Path, flag: &str) -> String {
    let help = sh(&bin.display().to_string(), &["--help"]);
    let mut found = false;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || t.starts_with("-v") || t.starts_with("-q") || t.starts_with("-h") {
            if found {
                break;
            }
            found = t.starts_with(&format!("{flag} ")) || t == flag;
        }
        if found {
            if let Some(rest) = line.split("[default: ").nth(1) {
                return rest.split(']').next().unwrap_or("?").to_owned();
            }
        }
    }
    "?".into()
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}

fn fmt_val(v: Option<f64>, unit: &str) -> String {
    match v {
        None => "—".into(),
        Some(v) => match unit {
            "×" if v < 0.1 => format!("{v:.3}×"),
            "×" => format!("{v:.2}×"),
            "%" => format!("{v:.0} %"),
            "% core" => format!("{v:.2} %"),
            "ms" => format!("{v:.1}"),
            "s" if v < 1.0 => format!("{v:.3}"),
            "s" => format!("{v:.2}"),
            "MiB" if v < 1.0 => format!("{v:.3}"),
            "MiB" => format!("{v:.1}"),
            _ => format!("{v:.0}"),
        },
    }
}

fn render_table(res: &Results, config: &[String], load_start: &str, load_end: &str, elapsed: Duration) -> String {
    let mut t = String::new();
    t.push_str("| | Figure | Median | Min | Max | Target | |\n|---|---|---:|---:|---:|---|---|\n");
    for r in &res.rows {
        // A row left empty by a failed phase says so (the reason is in
        // the errors above the table).
        let failed = r.fig.runs.is_empty() && res.errors.iter().any(|e| e.starts_with(&format!("{} ", r.phase)));
        let (target, verdict) = match (&r.target, r.verdict()) {
            (t, _) if r.skipped => (t.as_ref().map_or(String::new(), |(t, _)| t.clone()), "SKIPPED"),
            (t, _) if failed => (t.as_ref().map_or(String::new(), |(t, _)| t.clone()), "ERROR"),
            (Some((text, _)), Some(true)) => (text.clone(), "PASS"),
            (Some((text, _)), _) if r.fig.runs.is_empty() => (text.clone(), "n/a"),
            (Some((text, _)), _) => (text.clone(), "MISS"),
            _ => (String::new(), ""),
        };
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.id,
            r.figure,
            fmt_val(r.fig.median(), r.unit),
            fmt_val(r.fig.min(), r.unit),
            fmt_val(r.fig.max(), r.unit),
            target,
            verdict
        ));
    }
    t.push('\n');
    for c in config {
        t.push_str(&format!("- {c}\n"));
    }
    t.push_str(&format!("- load average: {load_start} at start, {load_end} at end; whole run {:.0} s\n", elapsed.as_secs_f64()));
    for n in &res.notes {
        t.push_str(&format!("- note: {n}\n"));
    }
    t
}

#[allow(clippy::too_many_arguments)]
fn render_json(
    cfg: &Cfg,
    res: &Results,
    config: &[String],
    rsync_version: &str,
    rsync_checksums: &str,
    load_start: &str,
    load_end: &str,
    elapsed: Duration,
) -> Json {
    let commit = sh("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = !sh("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let mem = fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    let figures = res
        .rows
        .iter()
        .map(|r| {
            Json::obj(vec![
                ("id", Json::s(r.id)),
                ("key", Json::s(r.key)),
                ("figure", Json::s(r.figure.clone())),
                ("unit", Json::s(r.unit)),
                ("median", Json::opt(r.fig.median())),
                ("min", Json::opt(r.fig.min())),
                ("max", Json::opt(r.fig.max())),
                ("runs", Json::Arr(r.fig.runs.iter().map(|&v| Json::Num(v)).collect())),
                ("target", r.target.as_ref().map_or(Json::Null, |(t, _)| Json::s(t.clone()))),
                ("pass", r.verdict().map_or(Json::Null, Json::Bool)),
                ("skipped", Json::Bool(r.skipped)),
            ])
        })
        .collect();
    Json::obj(vec![
        ("schema", Json::s("dropsync-bench/1")),
        ("timestamp", Json::s(sh("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]))),
        ("git", Json::s(format!("{commit}{}", if dirty { "-dirty" } else { "" }))),
        ("quick", Json::Bool(cfg.quick)),
        ("runs", Json::Num(cfg.runs as f64)),
        ("elapsed_s", Json::Num(elapsed.as_secs_f64())),
        (
            "machine",
            Json::obj(vec![
                ("cpu", Json::s(cpu_model())),
                ("cores", Json::Num(cfg.cores as f64)),
                ("mem_total_mib", Json::opt(mem.map(|k| k / 1024.0))),
                ("loadavg_start", Json::s(load_start)),
                ("loadavg_end", Json::s(load_end)),
            ]),
        ),
        (
            "config",
            Json::obj(vec![
                ("big_file_bytes", Json::Num(cfg.big as f64)),
                ("client_chunk_bytes", Json::Num(cfg.chunk as f64)),
                ("client_debounce_ms", Json::s(help_default(&cfg.client, "--debounce-ms"))),
                ("client_parallel", Json::s(help_default(&cfg.client, "--parallel"))),
                ("client_in_flight", Json::s(help_default(&cfg.client, "--in-flight"))),
                ("server_workers", Json::s(help_default(&cfg.server, "--workers"))),
                ("server_parallel", Json::s(help_default(&cfg.server, "--parallel"))),
                ("small_files", Json::Num((cfg.small_dirs * cfg.small_per_dir) as f64)),
                ("small_file_bytes", Json::Num(cfg.small_size as f64)),
                ("small_folders", Json::Num(cfg.small_dirs as f64)),
                ("edits", Json::Num(cfg.edits as f64)),
                ("edit_bytes", Json::Num(cfg.edit_size as f64)),
                ("fanout_sessions", Json::Num(cfg.fan_sessions as f64)),
                ("fanout_bytes", Json::Num(cfg.fan_size as f64)),
                ("md5_buffer_bytes", Json::Num(cfg.md5_buf as f64)),
                ("b8_files", Json::Num(cfg.b8_files as f64)),
                ("b8_runs", Json::Num(cfg.b8_runs as f64)),
                ("b8_fallback_files", Json::Num(cfg.b8_fallback as f64)),
                ("b8_idle_s", Json::Num(cfg.b8_idle.as_secs_f64())),
                ("disk_image_bytes", Json::Num(cfg.disk_size as f64)),
                ("rsync_version", Json::s(rsync_version)),
                ("rsync_checksums", Json::s(rsync_checksums)),
                ("process_limit_s", Json::Num(cfg.limit.as_secs_f64())),
                ("phases", Json::Arr(PHASES.iter().filter(|p| cfg.runs_phase(p)).map(|p| Json::s(*p)).collect())),
                ("described", Json::Arr(config.iter().map(|c| Json::s(c.clone())).collect())),
            ]),
        ),
        ("figures", Json::Arr(figures)),
        ("b4_latencies_ms", Json::Arr(res.b4_samples.iter().map(|v| Json::Arr(v.iter().map(|&x| Json::Num(x)).collect())).collect())),
        ("errors", Json::Arr(res.errors.iter().map(|e| Json::s(e.clone())).collect())),
        ("notes", Json::Arr(res.notes.iter().map(|e| Json::s(e.clone())).collect())),
        ("log_findings", Json::Arr(res.findings.iter().map(|e| Json::s(e.clone())).collect())),
    ])
}
