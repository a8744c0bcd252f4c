//! B8 (issue 19): a client whose folder holds 1,000,000 small files in
//! nested folders (on the scratch tmpfs): its peak memory through the
//! initial sync, its CPU once everything is in sync and nothing changes,
//! and how long a restart takes to reconcile when nothing changed.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::data::Rng;
use crate::procs::{proc_status, Proc};
use crate::{
    finish_run, kib_to_mib, note_err, run_dir, sh, start_client, start_server, wait_log, Cfg, Results, Row, R,
};

/// Folders at each of the two levels above the files (100 × 100 = 10,000
/// folders of 100 files for 1,000,000).
const FANOUT: usize = 100;
/// Bound on the initial sync: the issue asks for 1,000,000 files if that
/// is measured "within about 5 minutes"; at main 3e63d91 on this 2-core
/// machine, under other builds' load, it took about 5 min 20 s.
const SYNC_WITHIN: Duration = Duration::from_secs(450);
/// The initial sync counts as stalled when the files left to send have
/// not gone down for this long.
const STALL: Duration = Duration::from_secs(60);
/// Bound on the client's and the server's lives.
const PROC_LIMIT: Duration = Duration::from_secs(900);
/// Start of the error of an initial sync that did not finish, after which
/// the run is made again with the fallback number of files.
const NOT_SYNCED: &str = "initial sync did not finish";
/// Pause between "in sync" and the idle measurement.
const SETTLE: Duration = Duration::from_secs(2);

/// B8's rows.
pub(crate) fn rows(cfg: &Cfg) -> Vec<Row> {
    let n = cfg.b8_files;
    let idle = cfg.b8_idle.as_secs();
    vec![
        Row::new("B8", "b8_sync_s", sync_label(n), "s"),
        Row::new("B8", "b8_reconciled_s", "… of which until it logs \"reconciled\" (scan, META-DATA, plan), s", "s"),
        Row::new("B8", "b8_rss", "client peak RSS through the initial sync (VmHWM), MiB", "MiB")
            .target("< 500 MiB", |v| v < 500.0),
        Row::new("B8", "b8_server_rss", "server peak RSS through the initial sync (VmHWM), MiB", "MiB"),
        Row::new(
            "B8",
            "b8_idle_cpu",
            format!("client CPU once in sync, nothing changing, over {idle} s, % of a core"),
            "% core",
        )
        .target("< 1 %", |v| v < 1.0),
        Row::new("B8", "b8_idle_cpu_server", "server CPU over the same time, % of a core", "% core"),
        Row::new(
            "B8",
            "b8_reconnect_s",
            "client stopped and started again, nothing changed: until it logs \"reconciled\", s",
            "s",
        )
        .target("< 3 s", |v| v < 3.0),
        Row::new("B8", "b8_reconnect_sync_s", "… until its status says in sync, s", "s"),
    ]
}

fn folders(n: usize) -> usize {
    let leaves = n.div_ceil(files_per_leaf(n)).max(1);
    leaves + leaves.div_ceil(FANOUT)
}

fn files_per_leaf(n: usize) -> usize {
    n.div_ceil(FANOUT * FANOUT).max(1)
}

/// `n` files of about 40 distinct bytes each, `dXX/dYY/fNNNN.txt`.
fn make_tree(root: &Path, n: usize) -> R<()> {
    let per = files_per_leaf(n);
    let mut rng = Rng::new(0xb8);
    let mut made = 0;
    'out: for a in 0..FANOUT {
        for b in 0..FANOUT {
            let dir = root.join(format!("d{a:02}")).join(format!("d{b:02}"));
            fs::create_dir_all(&dir)?;
            for f in 0..per {
                if made == n {
                    break 'out;
                }
                fs::write(dir.join(format!("f{f:04}.txt")), format!("b8 file {made} {:016x}\n", rng.next_u64()))?;
                made += 1;
            }
        }
    }
    Ok(())
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// The status file's text says in sync, written by process `pid` if given.
fn status_in_sync(folder: &Path, pid: Option<u32>) -> bool {
    let Ok(t) = fs::read_to_string(folder.join(".dropsync/status")) else { return false };
    t.contains("state: in sync") && pid.is_none_or(|p| t.contains(&format!("pid: {p}\n")))
}

/// The status file's `uploads:` count.
fn uploads_left(folder: &Path) -> Option<u64> {
    let t = fs::read_to_string(folder.join(".dropsync/status")).ok()?;
    t.lines().find_map(|l| l.strip_prefix("uploads: ")).and_then(|v| v.trim().parse().ok())
}

/// Waits until the status says in sync (written by `pid` if given), at
/// most `within`, and fails early when the uploads left have not gone
/// down for [`STALL`].
fn wait_in_sync(folder: &Path, pid: Option<u32>, within: Duration) -> R<Duration> {
    let t0 = Instant::now();
    let (mut best, mut improved) = (u64::MAX, Instant::now());
    while !status_in_sync(folder, pid) {
        if let Some(left) = uploads_left(folder) {
            if left < best {
                (best, improved) = (left, Instant::now());
            }
        }
        let left = if best == u64::MAX { "?".to_string() } else { best.to_string() };
        if improved.elapsed() > STALL {
            return Err(format!(
                "{NOT_SYNCED}: stalled, {left} files still to send and none sent for {} s (after {:.0} s)",
                STALL.as_secs(),
                t0.elapsed().as_secs_f64()
            )
            .into());
        }
        if t0.elapsed() > within {
            return Err(
                format!("{NOT_SYNCED}: not in sync after {} s, {left} files still to send", within.as_secs()).into()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t0.elapsed())
}

/// `dropsync_paths` from the server's `/metrics`.
fn server_paths(http: &str) -> R<u64> {
    let mut s = TcpStream::connect(http)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    raw.lines()
        .find_map(|l| l.strip_prefix("dropsync_paths "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| "no dropsync_paths in /metrics".into())
}

fn http_addr(server: &Proc) -> R<String> {
    let line = server.listening.as_deref().unwrap_or("");
    let addr =
        line.split_whitespace().find_map(|kv| kv.strip_prefix("http=")).ok_or("the server printed no http= address")?;
    Ok(addr.trim_start_matches("http://").trim_end_matches('/').to_owned())
}

/// B8's runs: with `cfg.b8_files` files; when an initial sync does not
/// finish (stalls, or takes more than [`SYNC_WITHIN`]), says so and makes
/// this and the later runs with `cfg.b8_fallback` files instead, the rows
/// relabelled.
pub(crate) fn run_all(cfg: &Cfg, res: &mut Results) {
    let mut n = cfg.b8_files;
    let mut i = 0;
    while i < cfg.b8_runs {
        match run(cfg, res, i, n) {
            Ok(()) => i += 1,
            Err(e) if e.to_string().starts_with(NOT_SYNCED) && cfg.b8_fallback > 0 && cfg.b8_fallback < n => {
                let why = format!(
                    "B8 with {n} files: {e}; measured with {} files instead (BENCH_B8_FALLBACK)",
                    cfg.b8_fallback
                );
                eprintln!("bench: {why}");
                res.notes.push(why);
                n = cfg.b8_fallback;
                if let Some(r) = res.rows.iter_mut().find(|r| r.key == "b8_sync_s") {
                    r.figure = sync_label(n);
                }
            }
            Err(e) => {
                note_err(res, format!("B8 run {}: {e}", i + 1));
                i += 1;
            }
        }
    }
}

fn sync_label(n: usize) -> String {
    format!("{n} files of ~40 B in {} folders: initial sync (client start → its status says in sync), s", folders(n))
}

/// One B8 run with `n` files.
fn run(cfg: &Cfg, res: &mut Results, i: usize, n: usize) -> R<()> {
    let phase = format!("B8 run {}", i + 1);
    let dir = run_dir(cfg, "b8", i)?;
    let folder = dir.join("A");
    // The client and the server live as long as the phase needs.
    let bcfg = Cfg { limit: PROC_LIMIT, ..cfg.clone() };
    let out = (|| -> R<[f64; 8]> {
        let t = Instant::now();
        make_tree(&folder, n)?;
        eprintln!("{phase}: {n} files made in {:.1} s", t.elapsed().as_secs_f64());
        let (mut server, s, r) = start_server(&bcfg, &dir, &["--http", "127.0.0.1:0"])?;
        let http = http_addr(&server)?;
        let t0 = Instant::now();
        let mut ca = start_client(&bcfg, &dir, "client-a", (s, r), &folder, false)?;
        if !wait_log(&ca.log, "reconciled", SYNC_WITHIN) {
            return Err(format!("the client logged no \"reconciled\" within {} s", SYNC_WITHIN.as_secs()).into());
        }
        let reconciled = t0.elapsed();
        wait_in_sync(&folder, None, SYNC_WITHIN.saturating_sub(t0.elapsed()))?;
        let synced = t0.elapsed();
        let rss = ca.status().map_or(0, |s| s.vm_hwm_kib);
        let server_rss = server.status().map_or(0, |s| s.vm_hwm_kib);
        let paths = server_paths(&http)?;
        if paths < n as u64 {
            return Err(format!("the client says in sync but the server holds {paths} of {n} paths").into());
        }
        eprintln!(
            "{phase}: reconciled at {:.1} s, in sync at {:.1} s (server: {paths} paths); client RSS {:.0} MiB, server {:.0} MiB",
            reconciled.as_secs_f64(),
            synced.as_secs_f64(),
            kib_to_mib(rss),
            kib_to_mib(server_rss)
        );

        // Idle.
        std::thread::sleep(SETTLE);
        let hz: f64 = sh("getconf", &["CLK_TCK"]).parse().unwrap_or(100.0);
        let (cp, sp) = (ca.pid(), server.pid());
        let before = (cpu_ticks(cp).ok_or("client gone")?, cpu_ticks(sp).ok_or("server gone")?);
        let ti = Instant::now();
        std::thread::sleep(cfg.b8_idle);
        let after = (cpu_ticks(cp).ok_or("client gone")?, cpu_ticks(sp).ok_or("server gone")?);
        let secs = ti.elapsed().as_secs_f64();
        let idle = 100.0 * (after.0 - before.0) as f64 / hz / secs;
        let idle_server = 100.0 * (after.1 - before.1) as f64 / hz / secs;
        eprintln!("{phase}: idle over {secs:.1} s: client {idle:.2} % of a core, server {idle_server:.2} %");

        // Restart with nothing changed.
        ca.stop();
        let t1 = Instant::now();
        let ca2 = start_client(&bcfg, &dir, "client-a2", (s, r), &folder, false)?;
        if !wait_log(&ca2.log, "reconciled", PROC_LIMIT / 4) {
            return Err("the restarted client logged no \"reconciled\"".into());
        }
        let again = t1.elapsed();
        let pid2 = ca2.pid();
        wait_in_sync(&folder, (pid2 != 0).then_some(pid2), SYNC_WITHIN)?;
        let again_sync = t1.elapsed();
        if proc_status(pid2).is_none() {
            return Err("the restarted client exited".into());
        }
        eprintln!(
            "{phase}: restart: reconciled after {:.2} s, in sync after {:.2} s",
            again.as_secs_f64(),
            again_sync.as_secs_f64()
        );
        drop(ca2);
        server.stop();
        Ok([
            synced.as_secs_f64(),
            reconciled.as_secs_f64(),
            kib_to_mib(rss),
            kib_to_mib(server_rss),
            idle,
            idle_server,
            again.as_secs_f64(),
            again_sync.as_secs_f64(),
        ])
    })();
    let t = Instant::now();
    finish_run(res, &phase, &dir);
    eprintln!("{phase}: folders removed in {:.1} s", t.elapsed().as_secs_f64());
    let v = out?;
    let keys = [
        "b8_sync_s",
        "b8_reconciled_s",
        "b8_rss",
        "b8_server_rss",
        "b8_idle_cpu",
        "b8_idle_cpu_server",
        "b8_reconnect_s",
        "b8_reconnect_sync_s",
    ];
    for (key, x) in keys.iter().zip(v) {
        res.push(key, x);
    }
    Ok(())
}
