//! The simulator in `make test`: the first thousand seeds, the seeds that
//! found each bug fixed so far, and bit-for-bit replay.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use dropsync_sim::{replay_command, run};

/// Seeds that found a bug, kept as regressions (the commit that fixed each
/// names it): 48 an older delivery overtaking the client's own change; 14 a
/// delivery refused while the client's change was being sent; 222 and 2609
/// an upload whose reply was lost; 66 a delivery of the base over a local
/// delete; 1007 a given-up DELETE; 2793 a REQUEST refused while the path
/// was written; 4951 a retry spinning the control loop; 15335 a path judged
/// against its old base while its REQUEST was to be asked again; 46324 a
/// delivery aborted for idleness never asked again; 60 a torn journal line
/// that kept the server from starting; 1904 and 3805 the simulator's own
/// model.
const REGRESSIONS: [u64; 13] = [14, 48, 60, 66, 222, 1007, 1904, 2609, 2793, 3805, 4951, 15335, 46324];

fn failures(seeds: impl Iterator<Item = u64> + Send) -> Vec<String> {
    let seeds: Vec<u64> = seeds.collect();
    let next = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else { return };
                if let Err(f) = run(seed) {
                    failed.lock().unwrap().push(format!("{f}"));
                }
            });
        }
    });
    failed.into_inner().unwrap()
}

#[test]
fn the_first_thousand_seeds_pass() {
    let failed = failures(0..1000);
    assert!(failed.is_empty(), "{} seed(s) failed:\n{}", failed.len(), failed.join("\n"));
}

#[test]
fn every_seed_that_found_a_bug_passes() {
    let failed = failures(REGRESSIONS.into_iter());
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

#[test]
fn a_seed_replays_bit_for_bit() {
    for seed in [48, 2609, 13395] {
        let first = run(seed).map(|o| o.log).unwrap_or_else(|f| f.log);
        let again = run(seed).map(|o| o.log).unwrap_or_else(|f| f.log);
        assert!(first.len() > 10, "seed {seed}: a real run");
        assert_eq!(first, again, "seed {seed} did not replay the same: {}", replay_command(seed, 1));
    }
}
