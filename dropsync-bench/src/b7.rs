//! B7 (issue 19): a rename, and a copy (`cp`), of a 1 GiB file in A's
//! folder: how long until B's folder shows the result complete, and how
//! many bytes crossed the wire for it. Both clients talk to the server
//! through counting proxies (`proxy.rs`), so every byte of their four
//! connections is counted, whatever the protocol does with it.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::proxy::ProxyPair;
use crate::{data, finish_run, run_dir, run_timed, start_client, start_server, wait_ready, Cfg, Results, Row, MIB, R};

/// How old every copy of the file is made before it is renamed or copied:
/// a client takes a file whose mtime is within 2 s of now for possibly
/// changed under a stat that looks the same (`RACY_WINDOW`, the client's
/// scan.rs), so a file that has just arrived on B would be sent whole
/// whatever the protocol can do. The case measured is a file in sync for
/// a while, as a user's rename or copy usually is.
const AGE: Duration = Duration::from_secs(3);
/// Quiet time on every connection that counts as "done" before and after
/// an operation, and the longest wait for it.
const QUIET: Duration = Duration::from_millis(500);
const QUIET_WITHIN: Duration = Duration::from_secs(30);

/// B7's rows.
pub(crate) fn rows(cfg: &Cfg) -> Vec<Row> {
    let big = format!("{} MiB", cfg.big / MIB);
    vec![
        Row::new(
            "B7",
            "b7_rename_ms",
            format!(
                "rename of a {big} file in A's folder: until B has it under the new name, complete (old name gone), ms"
            ),
            "ms",
        )
        .target("< 200 ms", |v| v < 200.0),
        Row::new("B7", "b7_rename_mib", "… bytes on the wire, A's and B's connections both ways, MiB", "MiB")
            .target("< 1 MiB", |v| v < 1.0),
        Row::new("B7", "b7_rename_mib_a", "… of which between A and the server, MiB", "MiB"),
        Row::new(
            "B7",
            "b7_copy_ms",
            format!("cp of a {big} file in A's folder: from cp's exit until B has the copy complete, ms"),
            "ms",
        )
        .target("< 200 ms", |v| v < 200.0),
        Row::new("B7", "b7_copy_mib", "… bytes on the wire, A's and B's connections both ways, MiB", "MiB")
            .target("< 1 MiB", |v| v < 1.0),
        Row::new("B7", "b7_copy_mib_a", "… of which between A and the server, MiB", "MiB"),
        Row::new("B7", "b7_cp_ms", "… cp itself (before the time above), ms", "ms"),
    ]
}

/// Waits until `done`, polling every millisecond; the time it took, or an
/// error after `within`.
fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) -> R<Duration> {
    let t0 = Instant::now();
    loop {
        if done() {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            return Err(format!("{what}: not done after {} s", within.as_secs()).into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until no byte has crossed either proxy for [`QUIET`] (at most
/// [`QUIET_WITHIN`]); the byte counts then: (A's, B's).
fn settle(a: &ProxyPair, b: &ProxyPair) -> (u64, u64) {
    let t0 = Instant::now();
    let mut last = (a.total(), b.total());
    let mut since = Instant::now();
    while since.elapsed() < QUIET && t0.elapsed() < QUIET_WITHIN {
        std::thread::sleep(Duration::from_millis(20));
        let now = (a.total(), b.total());
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
    last
}

fn has_full(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.len() == size)
}

fn mib(b: u64) -> f64 {
    b as f64 / MIB as f64
}

/// One B7 run: A and B synced with the file, then the rename, then the copy.
pub(crate) fn run(cfg: &Cfg, res: &mut Results, big: &Path, i: usize) -> R<()> {
    let phase = format!("B7 run {}", i + 1);
    let dir = run_dir(cfg, "b7", i)?;
    let (fa, fb, stage) = (dir.join("A"), dir.join("B"), dir.join("stage"));
    for d in [&fa, &fb, &stage] {
        fs::create_dir_all(d)?;
    }
    fs::hard_link(big, stage.join("big.bin")).or_else(|_| fs::copy(big, stage.join("big.bin")).map(|_| ()))?;
    let out = (|| -> R<[f64; 7]> {
        let (mut server, s, r) = start_server(cfg, &dir, &[])?;
        let (pa, pb) = (ProxyPair::start((s, r))?, ProxyPair::start((s, r))?);
        let mut cb = start_client(cfg, &dir, "client-b", pb.ports(), &fb, false)?;
        let mut ca = start_client(cfg, &dir, "client-a", pa.ports(), &fa, false)?;
        wait_ready(res, &phase, &cb);
        wait_ready(res, &phase, &ca);
        fs::rename(stage.join("big.bin"), fa.join("big.bin"))?;
        let first = wait_for("the first sync of the file", cfg.limit, || has_full(&fb.join("big.bin"), cfg.big))?;
        settle(&pa, &pb);
        std::thread::sleep(AGE);

        // The rename.
        let c0 = (pa.total(), pb.total());
        fs::rename(fa.join("big.bin"), fa.join("renamed.bin"))?;
        let renamed = wait_for("the rename", cfg.limit, || {
            has_full(&fb.join("renamed.bin"), cfg.big) && !fb.join("big.bin").exists()
        })?;
        let r1 = settle(&pa, &pb);
        if !data::same_content(&fb.join("renamed.bin"), big)? {
            return Err("B's renamed file differs from the original".into());
        }
        std::thread::sleep(AGE);
        let c1 = settle(&pa, &pb);

        // The copy, timed from cp's exit (the file is whole in A's folder).
        let cp_log = dir.join("cp.out");
        let args = [fa.join("renamed.bin"), fa.join("copy.bin")].map(|p| p.display().to_string());
        let cp = run_timed("cp", "cp", &args, cfg.limit, &cp_log)?;
        let copied = wait_for("the copy", cfg.limit, || has_full(&fb.join("copy.bin"), cfg.big))?;
        let c2 = settle(&pa, &pb);
        if !data::same_content(&fb.join("copy.bin"), big)? {
            return Err("B's copy differs from the original".into());
        }
        ca.stop();
        cb.stop();
        server.stop();
        eprintln!(
            "{phase}: first sync {:.2} s; rename {:.0} ms, {:.1} MiB on the wire (A {:.1}, B {:.1}); cp {:.0} ms, then {:.0} ms, {:.1} MiB (A {:.1}, B {:.1})",
            first.as_secs_f64(),
            renamed.as_secs_f64() * 1e3,
            mib(r1.0 - c0.0 + r1.1 - c0.1),
            mib(r1.0 - c0.0),
            mib(r1.1 - c0.1),
            cp.as_secs_f64() * 1e3,
            copied.as_secs_f64() * 1e3,
            mib(c2.0 - c1.0 + c2.1 - c1.1),
            mib(c2.0 - c1.0),
            mib(c2.1 - c1.1),
        );
        Ok([
            renamed.as_secs_f64() * 1e3,
            mib(r1.0 - c0.0 + r1.1 - c0.1),
            mib(r1.0 - c0.0),
            copied.as_secs_f64() * 1e3,
            mib(c2.0 - c1.0 + c2.1 - c1.1),
            mib(c2.0 - c1.0),
            cp.as_secs_f64() * 1e3,
        ])
    })();
    finish_run(res, &phase, &dir);
    let v = out?;
    for (key, x) in
        ["b7_rename_ms", "b7_rename_mib", "b7_rename_mib_a", "b7_copy_ms", "b7_copy_mib", "b7_copy_mib_a", "b7_cp_ms"]
            .iter()
            .zip(v)
    {
        res.push(key, x);
    }
    Ok(())
}
