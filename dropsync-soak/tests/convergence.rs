//! Randomized convergence with fault injection against the real binaries
//! (see the `dropsync-soak` crate doc).
//!
//! - `fixed_seeds_converge_without_losing_work` (CI, part of `make test`):
//!   a fixed, bounded set of seeds, run one after the other;
//! - `fixed_seeds_converge_across_instances` (CI too): a few seeds with
//!   three server instances on one PostgreSQL catalog and one S3 bucket
//!   (testkit's `PgProc` and `S3Proc`; like every test of those, it fails,
//!   saying what to install, when PostgreSQL or moto is missing);
//! - `soak` (ignored; `make soak SEEDS=N [FIRST=s] [STEPS=k]`): N seeds
//!   from FIRST (default: from the clock), for long hunts;
//! - `replay` (ignored; `make soak SEED=s [STEPS=k]`): one seed again, with
//!   its operation log echoed; every failure prints this command.
//!
//! `soak` and `replay` take `DROPSYNC_SOAK_INSTANCES=N` (`make soak
//! INSTANCES=N`) for N instances, and `DROPSYNC_SOAK_SECURE=1` (`make soak
//! SECURE=1`) for secure mode, which the CI tests take too.
//!
//! The binaries must be built first (`cargo build --workspace --bins`;
//! `make test` and `make soak` do it).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dropsync_soak::{run, Options, INSTANCE_KINDS, KINDS};

/// The seeds CI runs, one after the other, in about 75 s on two cores.
/// Together they exercise every kind of action and fault (checked below),
/// and in trials each of them caught a client that skips its conflict copy;
/// most also caught a server whose stale-change rule keeps no copy.
const CI_SEEDS: &[u64] = &[2, 3, 5, 6, 7, 12];

/// Steps per CI seed.
const CI_STEPS: usize = 40;

/// The seeds CI runs with [`CI_INSTANCES`] instances, one after the other,
/// in about 50 s on two cores; together they exercise every kind of action
/// and fault, `kill -9` of an instance and a restart of PostgreSQL among
/// them (checked below), both eager and default garbage collection.
const CI_INSTANCE_SEEDS: &[u64] = &[1, 8];

/// Server instances in the CI test of that mode.
const CI_INSTANCES: usize = 3;

/// One CI test at a time: each starts a dozen processes on a machine that
/// may have two cores, and its timing should not depend on the other.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Steps per seed in `make soak` unless STEPS says otherwise.
const SOAK_STEPS: usize = 60;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    if v.is_empty() {
        return None;
    }
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn echo() -> bool {
    std::env::var("DROPSYNC_SOAK_ECHO").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// `steps` steps, the rest as the environment says: echo, secure mode,
/// and (unless `instances` fixes it) the number of instances.
fn options(steps: usize, instances: Option<usize>) -> Options {
    Options {
        steps,
        echo: echo(),
        secure: std::env::var("DROPSYNC_SOAK_SECURE").is_ok_and(|v| v == "1"),
        instances: instances.unwrap_or_else(|| env_u64("DROPSYNC_SOAK_INSTANCES").map_or(1, |n| n.max(1) as usize)),
    }
}

/// Runs `seeds` one after the other; returns the failing ones and how
/// often each kind of action ran over all of them.
fn run_all(seeds: impl Iterator<Item = u64>, opts: &Options) -> (Vec<u64>, BTreeMap<&'static str, u32>) {
    let mut failed = Vec::new();
    let mut kinds = BTreeMap::new();
    for seed in seeds {
        match run(seed, opts) {
            Ok(summary) => {
                eprintln!("{summary}");
                for (k, n) in &summary.kinds {
                    *kinds.entry(*k).or_insert(0) += n;
                }
            }
            Err(failure) => {
                eprintln!("{failure}");
                failed.push(seed);
            }
        }
    }
    (failed, kinds)
}

#[test]
fn fixed_seeds_converge_without_losing_work() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let t = Instant::now();
    let opts = options(CI_STEPS, Some(1));
    let (failed, kinds) = run_all(CI_SEEDS.iter().copied(), &opts);
    eprintln!("{} seeds in {:.1}s", CI_SEEDS.len(), t.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "seeds {failed:?} failed; each report above has its replay command");
    for k in KINDS {
        assert!(kinds.contains_key(k), "no CI seed exercised {k:?} ({kinds:?}); choose other CI_SEEDS");
    }
}

#[test]
fn fixed_seeds_converge_across_instances() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(PoisonError::into_inner);
    let t = Instant::now();
    let opts = options(CI_STEPS, Some(CI_INSTANCES));
    let (failed, kinds) = run_all(CI_INSTANCE_SEEDS.iter().copied(), &opts);
    eprintln!("{} seeds with {CI_INSTANCES} instances in {:.1}s", CI_INSTANCE_SEEDS.len(), t.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "seeds {failed:?} failed; each report above has its replay command");
    for k in KINDS.iter().chain(INSTANCE_KINDS) {
        assert!(kinds.contains_key(k), "no CI seed exercised {k:?} ({kinds:?}); choose other CI_INSTANCE_SEEDS");
    }
}

#[test]
#[ignore = "long: make soak SEEDS=N"]
fn soak() {
    let seeds = env_u64("DROPSYNC_SOAK_SEEDS").unwrap_or(20);
    let first = env_u64("DROPSYNC_SOAK_FIRST").unwrap_or_else(|| {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() % 1_000_000 * 1000)
    });
    let steps = env_u64("DROPSYNC_SOAK_STEPS").map_or(SOAK_STEPS, |s| s as usize);
    eprintln!("soak: {seeds} seeds from {first}, {steps} steps each");
    let t = Instant::now();
    let opts = options(steps, None);
    if opts.instances > 1 {
        eprintln!("soak: {} instances on one PostgreSQL catalog and one S3 bucket", opts.instances);
    }
    let (failed, kinds) = run_all(first..first + seeds, &opts);
    eprintln!("soak: {} of {seeds} seeds failed in {:.1}s: {failed:?}; actions: {kinds:?}", failed.len(), t.elapsed().as_secs_f64());
    assert!(failed.is_empty(), "seeds {failed:?} failed; each report above has its replay command");
}

#[test]
#[ignore = "replays one seed: DROPSYNC_SOAK_SEED=s"]
fn replay() {
    let seed = env_u64("DROPSYNC_SOAK_SEED").expect("set DROPSYNC_SOAK_SEED to the seed to replay");
    let steps = env_u64("DROPSYNC_SOAK_STEPS").map_or(CI_STEPS, |s| s as usize);
    let opts = Options { echo: true, ..options(steps, None) };
    match run(seed, &opts) {
        Ok(summary) => eprintln!("{summary}"),
        Err(failure) => panic!("{failure}"),
    }
}
