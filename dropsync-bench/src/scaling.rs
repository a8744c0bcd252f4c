//! The P phases (issue 18): B1, B3 and B4 again with the server's catalog
//! on PostgreSQL (`--catalog`) and its contents in S3 (`--blobs`, moto's
//! server), and PX, the propagation latency between two instances sharing
//! them. Each run gets a fresh cluster and S3 server (testkit's `PgProc`
//! and `S3Proc`), started before the clock and kept in `procs`' registry so
//! that a signal or the watchdog stops them too. When PostgreSQL or moto
//! is missing, their rows say SKIPPED and the rest of the bench goes on.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dropsync_testkit::{PgProc, S3Proc};

use crate::stats::percentile;
use crate::{b1_upload, b3_upload, edit_latencies, note_err, procs, Cfg, Results, Row, MIB, R};

/// The bucket every run makes on its own S3 server.
const BUCKET: &str = "bench";

/// Where a server keeps its catalog and contents: empty for the local
/// disk under `--root`, else the P phases' arguments and environment.
#[derive(Clone, Debug, Default)]
pub struct Backend {
    /// Arguments added to the server's.
    pub args: Vec<String>,
    /// Environment variables for the server.
    pub env: Vec<(String, String)>,
}

impl Backend {
    /// True for PostgreSQL + S3.
    pub fn is_shared(&self) -> bool {
        self.args.iter().any(|a| a == "--catalog")
    }
}

/// The newest `/usr/lib/postgresql/<version>` with an `initdb` (where
/// testkit's `PgProc` looks).
fn pg_version() -> Option<String> {
    let mut v: Vec<String> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter(|e| e.path().join("bin/initdb").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v.pop()
}

fn moto_present() -> bool {
    Command::new("sh").args(["-c", "command -v moto_server"]).output().is_ok_and(|o| o.status.success())
}

/// Why the P phases cannot run here, if they cannot.
fn missing() -> Option<String> {
    let mut why = Vec::new();
    if pg_version().is_none() {
        why.push("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb; apt-get install postgresql)");
    }
    if !moto_present() {
        why.push("moto_server is not on PATH (pip install \"moto[server]\")");
    }
    (!why.is_empty()).then(|| why.join("; "))
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default()
}

/// A PostgreSQL cluster and an S3 server for one run, stopped (and their
/// folder removed) when dropped.
struct Services {
    dir: PathBuf,
    url: String,
    endpoint: String,
    s3_port: u16,
}

impl Services {
    fn start(cfg: &Cfg, tag: &str, i: usize) -> R<Services> {
        let dir = cfg.work.join(format!("{tag}-services-run{}", i + 1));
        procs::locked(|| {
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir(&dir)
        })?;
        let t = Instant::now();
        // From here on, dropping `sv` stops whatever was kept.
        let mut sv = Services { dir, url: String::new(), endpoint: String::new(), s3_port: 0 };
        let pg_dir = sv.dir.join("pg");
        let pg = catch_unwind(AssertUnwindSafe(|| PgProc::start(&pg_dir)))
            .map_err(|e| format!("PostgreSQL did not start: {}", panic_text(e.as_ref())))?;
        sv.url = pg.url.clone();
        procs::keep_service(Box::new(pg));
        let s3 = catch_unwind(|| S3Proc::start(BUCKET))
            .map_err(|e| format!("moto_server did not start: {}", panic_text(e.as_ref())))?;
        sv.endpoint = s3.endpoint.clone();
        sv.s3_port = s3.port;
        procs::keep_service(Box::new(s3));
        eprintln!("bench: {tag} run {}: PostgreSQL and S3 up in {:.1} s", i + 1, t.elapsed().as_secs_f64());
        Ok(sv)
    }

    /// The server's arguments and environment for contents under `prefix`.
    fn backend(&self, prefix: &str) -> Backend {
        let args =
            ["--catalog", &self.url, "--blobs", &format!("s3://{BUCKET}/{prefix}"), "--s3-endpoint", &self.endpoint];
        Backend {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: dropsync_testkit::S3Proc::CREDENTIALS.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// How many objects the bucket holds under `prefix/` (one unsigned
    /// ListObjectsV2, which moto allows; at most one page).
    fn objects(&self, prefix: &str) -> R<usize> {
        let mut s = TcpStream::connect(("127.0.0.1", self.s3_port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        write!(
            s,
            "GET /{BUCKET}?list-type=2&prefix={prefix}/ HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.s3_port
        )?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)?;
        Ok(raw.matches("<Key>").count())
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        procs::release_services();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The P phases' rows (those of the phases that run).
pub(crate) fn rows(cfg: &Cfg) -> Vec<Row> {
    let big = format!("{} MiB", cfg.big / MIB);
    let nfiles = cfg.small_dirs * cfg.small_per_dir;
    vec![
        Row::new("P1", "p1_mbps", format!("B1 on PostgreSQL + S3: upload 1 × {big} (client --once), one instance, MB/s"), "MB/s"),
        Row::new("P1", "p1_vs_b1", "… ÷ local disk (B1 of the same invocation, run by run)", "×"),
        Row::new(
            "P3",
            "p3_files",
            format!("B3 on PostgreSQL + S3: upload {nfiles} × {} KiB, one instance, files/s", cfg.small_size / 1024),
            "files/s",
        ),
        Row::new("P3", "p3_vs_b3", "… ÷ local disk (B3 of the same invocation, run by run)", "×"),
        Row::new(
            "P4",
            "p4_p50",
            format!("B4 on PostgreSQL + S3: edit on A visible on B, one instance ({} edits of {} B), p50 ms", cfg.edits, cfg.edit_size),
            "ms",
        ),
        Row::new("P4", "p4_p99", "p99 ms", "ms"),
        Row::new("P4", "p4_max", "max ms", "ms"),
        Row::new("P4", "p4_vs_b4", "p50 ÷ local disk p50 (B4 of the same invocation, run by run)", "×"),
        Row::new(
            "PX",
            "px_p50",
            format!("edit on A (instance 1) visible on B (instance 2), two instances sharing PostgreSQL + S3 ({} edits), p50 ms", cfg.edits),
            "ms",
        ),
        Row::new("PX", "px_p99", "p99 ms", "ms"),
        Row::new("PX", "px_max", "max ms", "ms"),
    ]
    .into_iter()
    .filter(|r| cfg.runs_phase(r.id))
    .collect()
}

/// How the P phases run, for the table's notes; `None` when none runs.
pub(crate) fn config_line(cfg: &Cfg) -> Option<String> {
    if !["P1", "P3", "P4", "PX"].iter().any(|p| cfg.runs_phase(p)) {
        return None;
    }
    let pg = pg_version().map_or("PostgreSQL (missing)".to_string(), |v| format!("PostgreSQL {v}"));
    Some(format!(
        "P rows: per run, a fresh {pg} cluster (testkit's PgProc: initdb, trust auth, loopback, fsync=off) and a fresh \
         moto_server (S3 in Python, objects in memory), started before the clock; the server adds `--catalog \
         postgres://dropsync@127.0.0.1:PORT/postgres --blobs s3://{BUCKET}/PHASE --s3-endpoint http://127.0.0.1:PORT` \
         (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY=testing), otherwise as in B1, B3 and B4 (plain mode); PX: two \
         instances on the same database and bucket, client A on the first, client B on the second, measured as B4"
    ))
}

/// Runs the P phases that are selected, or marks their rows SKIPPED.
pub(crate) fn run_all(cfg: &Cfg, res: &mut Results, big: &Path, tree: &Path) {
    let phases: Vec<&str> = ["P1", "P3", "P4", "PX"].into_iter().filter(|p| cfg.runs_phase(p)).collect();
    if phases.is_empty() {
        return;
    }
    if let Some(why) = missing() {
        eprintln!("bench: {} SKIPPED: {why}", phases.join(", "));
        res.notes.push(format!("{} SKIPPED: {why}", phases.join(", ")));
        for r in res.rows.iter_mut().filter(|r| r.id.starts_with('P')) {
            r.skipped = true;
        }
        return;
    }
    for phase in phases {
        for i in 0..cfg.runs {
            let t = Instant::now();
            let out = match phase {
                "P1" => p1(cfg, res, big, i),
                "P3" => p3(cfg, res, tree, i),
                "P4" => p4(cfg, res, i),
                _ => px(cfg, res, i),
            };
            match out {
                Ok(()) => eprintln!("bench: {phase} run {} took {:.1} s in all", i + 1, t.elapsed().as_secs_f64()),
                Err(e) => note_err(res, format!("{phase} run {}: {e}", i + 1)),
            }
        }
    }
    ratio(res, "p1_vs_b1", "p1_mbps", "b1_dropsync");
    ratio(res, "p3_vs_b3", "p3_files", "b3_dropsync");
    ratio(res, "p4_vs_b4", "p4_p50", "b4_p50");
}

/// Fills row `key` with `num ÷ den` run by run, when both rows ran.
pub(crate) fn ratio(res: &mut Results, key: &str, num: &str, den: &str) {
    let runs = |k: &str| res.rows.iter().find(|r| r.key == k).map(|r| r.fig.runs.clone()).unwrap_or_default();
    let (n, d) = (runs(num), runs(den));
    if !res.rows.iter().any(|r| r.key == key) {
        return;
    }
    if d.is_empty() {
        let local = den.split('_').next().unwrap_or(den).to_ascii_uppercase();
        res.notes.push(format!("{key}: no {den} figure ({local} did not run in this invocation)"));
        return;
    }
    for (a, b) in n.iter().zip(&d) {
        res.push(key, a / b);
    }
}

fn p1(cfg: &Cfg, res: &mut Results, big: &Path, i: usize) -> R<()> {
    let sv = Services::start(cfg, "p1", i)?;
    let (mbps, _, _) = b1_upload(cfg, res, big, i, false, &sv.backend("p1"))?;
    let objects = sv.objects("p1")?;
    if objects == 0 {
        return Err("the client exited 0 but the bucket holds no object".into());
    }
    eprintln!("P1 run {}: {mbps:.0} MB/s on PostgreSQL + S3 ({objects} object(s) in the bucket)", i + 1);
    res.push("p1_mbps", mbps);
    Ok(())
}

fn p3(cfg: &Cfg, res: &mut Results, tree: &Path, i: usize) -> R<()> {
    let sv = Services::start(cfg, "p3", i)?;
    let secs = b3_upload(cfg, res, tree, i, false, &sv.backend("p3"))?;
    let objects = sv.objects("p3")?;
    if objects == 0 {
        return Err("the client exited 0 but the bucket holds no object".into());
    }
    let n = (cfg.small_dirs * cfg.small_per_dir) as f64;
    eprintln!(
        "P3 run {}: {secs:.2} s = {:.0} files/s on PostgreSQL + S3 ({objects} object(s) listed in one page)",
        i + 1,
        n / secs
    );
    res.push("p3_files", n / secs);
    Ok(())
}

fn push_latencies(res: &mut Results, prefix: &str, lat: &[f64]) {
    res.push(&format!("{prefix}_p50"), percentile(lat, 50.0));
    res.push(&format!("{prefix}_p99"), percentile(lat, 99.0));
    res.push(&format!("{prefix}_max"), percentile(lat, 100.0));
}

fn p4(cfg: &Cfg, res: &mut Results, i: usize) -> R<()> {
    let sv = Services::start(cfg, "p4", i)?;
    let lat = edit_latencies(cfg, res, &format!("P4 run {}", i + 1), "p4", i, &sv.backend("p4"), false)?;
    push_latencies(res, "p4", &lat);
    Ok(())
}

fn px(cfg: &Cfg, res: &mut Results, i: usize) -> R<()> {
    let sv = Services::start(cfg, "px", i)?;
    let lat = edit_latencies(cfg, res, &format!("PX run {}", i + 1), "px", i, &sv.backend("px"), true)?;
    push_latencies(res, "px", &lat);
    Ok(())
}
