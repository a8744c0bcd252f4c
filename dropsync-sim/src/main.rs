//! `dropsync-sim`: runs seeds of the deterministic simulation.
//!
//! - `dropsync-sim --seeds 10000 --first 0`: that many seeds, on every
//!   core; prints the rate, and for each failure its one-line replay
//!   command. Exit status 1 if any seed failed.
//! - `dropsync-sim --seed 1234`: replays one seed and prints its event log.
//! - `--instances 3` with either: the same with three server instances
//!   sharing a database and a bucket (the seed's run differs from its run
//!   with one server).

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use dropsync_sim::world::MAX_INSTANCES;
use dropsync_sim::{run_with, Failure};

#[derive(Parser, Debug)]
#[command(
    about = "Deterministic simulation of dropsync: one server (or 2 to 3 instances sharing a database) and 2 to 8 clients in one thread per seed"
)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Replay this one seed and print its event log.
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Stop at the first failure.
    #[arg(long)]
    fail_fast: bool,
    /// With --seed: print the event log even when the seed passes.
    #[arg(long)]
    log: bool,
    /// Server instances: 1, the one server on its own disk; 2 or 3,
    /// instances sharing a database and a bucket, as with `--catalog
    /// postgres://... --blobs s3://...`.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=MAX_INSTANCES as i64))]
    instances: u8,
}

/// How many of the seeds that met a known limit the summary lists.
const KNOWN_SHOWN: usize = 50;

fn main() -> ExitCode {
    let args = Args::parse();
    let instances = usize::from(args.instances);
    if let Some(seed) = args.seed {
        return replay(seed, instances, args.log);
    }
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = AtomicU64::new(args.first);
    let end = args.first.saturating_add(args.seeds);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let events = AtomicU64::new(0);
    // Seeds that met a known limit, with the kinds each met.
    let known: Mutex<Vec<(u64, Vec<String>)>> = Mutex::new(Vec::new());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    return;
                }
                match run_with(seed, instances) {
                    Ok(o) => {
                        events.fetch_add(o.events, Ordering::Relaxed);
                        if !o.known.is_empty() {
                            let kinds = o.known.iter().map(|k| k.split(':').next().unwrap_or(k).to_owned()).collect();
                            known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((seed, kinds));
                        }
                    }
                    Err(f) => {
                        eprintln!("{f}");
                        let mut all = failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        all.push(f);
                        if args.fail_fast {
                            next.store(end, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let failures = failures.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    let ran = next.load(Ordering::Relaxed).min(end) - args.first;
    let with = if instances > 1 { format!(", {instances} instances") } else { String::new() };
    println!(
        "sim: {ran} seeds from {}{with} in {secs:.1} s on {threads} thread(s): {:.0} seeds/s, {:.0} seeds/min, {} events; {} failed",
        args.first,
        ran as f64 / secs,
        ran as f64 * 60.0 / secs,
        events.load(Ordering::Relaxed),
        failures.len()
    );
    let mut known = known.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !known.is_empty() {
        known.sort_unstable();
        let seeds: Vec<u64> = known.iter().map(|(s, _)| *s).collect();
        let shown = &seeds[..seeds.len().min(KNOWN_SHOWN)];
        let more =
            if seeds.len() > shown.len() { format!(" and {} more", seeds.len() - shown.len()) } else { String::new() };
        println!(
            "known limits ({}) met in {} seed(s): {shown:?}{more}",
            dropsync_sim::world::KNOWN_LIMITS,
            seeds.len()
        );
        let mut by_kind: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
        for kinds in known.iter().map(|(_, k)| k) {
            let mut kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
            kinds.dedup();
            kinds.into_iter().for_each(|k| *by_kind.entry(k).or_default() += 1);
        }
        let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} in {n}")).collect();
        println!("  by kind (seeds): {}", counts.join(", "));
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        let mut seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        seeds.sort_unstable();
        println!("failed seeds: {seeds:?}");
        ExitCode::FAILURE
    }
}

fn replay(seed: u64, instances: usize, log: bool) -> ExitCode {
    match run_with(seed, instances) {
        Ok(o) => {
            if log {
                for line in &o.log {
                    println!("{line}");
                }
            }
            for k in &o.known {
                println!("known limit: {k}");
            }
            let with = if instances > 1 { format!(" ({instances} instances)") } else { String::new() };
            println!(
                "seed {seed}{with}: ok: {} steps, {} events, {:.1} s virtual, {} files, {} bytes on the wire",
                o.steps,
                o.events,
                o.virtual_time.as_secs_f64(),
                o.files,
                o.bytes
            );
            ExitCode::SUCCESS
        }
        Err(f) => {
            for line in &f.log {
                println!("{line}");
            }
            println!("{f}");
            ExitCode::FAILURE
        }
    }
}
