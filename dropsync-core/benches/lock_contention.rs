//! Lock-table throughput under contention: try_lock + release per second with
//! 1, 2 and 8 threads, all on one path and each on its own paths. A benchmark,
//! not a test: run with `cargo bench -p dropsync-core --bench lock_contention`.
#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dropsync_core::locks::{LockTable, MemLockTable, SessionId};

/// How long each configuration runs.
const RUN: Duration = Duration::from_secs(1);
/// Operations between two looks at the stop flag.
const BATCH: usize = 256;

/// Runs `threads` threads for [`RUN`]; returns (attempts, acquisitions) per
/// second. An attempt is one try_lock, plus its release when it won.
fn run(threads: usize, same_path: bool) -> (f64, f64) {
    let table = MemLockTable::new();
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let (attempts, wins) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (table, stop) = (&table, &stop);
                s.spawn(move || {
                    let owner = t as SessionId;
                    let paths: Vec<String> = (0..64)
                        .map(|i| {
                            if same_path {
                                "shared/file".to_owned()
                            } else {
                                format!("t{t}/file{i}")
                            }
                        })
                        .collect();
                    let (mut attempts, mut wins) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..BATCH {
                            let path = &paths[i % paths.len()];
                            if table.try_lock(black_box(path), owner) {
                                wins += 1;
                                table.release(path, owner);
                            }
                            attempts += 1;
                        }
                    }
                    (attempts, wins)
                })
            })
            .collect();
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
        workers
            .into_iter()
            .map(|w| w.join().expect("worker panicked"))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let secs = start.elapsed().as_secs_f64();
    (attempts as f64 / secs, wins as f64 / secs)
}

fn main() {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "MemLockTable try_lock+release, {cores} cores, {} s per run",
        RUN.as_secs_f64()
    );
    for same_path in [true, false] {
        for threads in [1, 2, 8] {
            let (ops, wins) = run(threads, same_path);
            println!(
                "{:>14}, {threads} thread(s): {:>6.2} M attempts/s, {:>6.2} M acquisitions/s",
                if same_path {
                    "same path"
                } else {
                    "distinct paths"
                },
                ops / 1e6,
                wins / 1e6
            );
        }
    }
}
