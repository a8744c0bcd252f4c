//! The lock table under real threads: guards that move between threads,
//! contention on one path, independence of distinct paths. Kept out of the
//! crate's own sources, which start no thread (the core is free of I/O).
#![allow(clippy::unwrap_used)]
// Threads are what this file tests; the library itself starts none.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use dropsync_core::locks::{try_lock_owned, LockTable, MemLockTable, SessionId};

#[test]
fn owned_guard_moves_to_another_thread() {
    let table: Arc<dyn LockTable> = Arc::new(MemLockTable::new());
    let guard = try_lock_owned(&table, "a", 1).expect("free");
    std::thread::scope(|s| {
        s.spawn(move || {
            assert_eq!(guard.path(), "a");
            drop(guard);
        });
    });
    assert_eq!(table.holder("a"), None);
}

#[test]
fn contended_path_has_one_holder_at_a_time() {
    const THREADS: usize = 8;
    const ATTEMPTS: usize = 20_000;
    let table = MemLockTable::new();
    let inside = AtomicUsize::new(0);
    let wins = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for owner in 0..THREADS as SessionId {
            let (table, inside, wins) = (&table, &inside, &wins);
            s.spawn(move || {
                for _ in 0..ATTEMPTS {
                    if table.try_lock("hot", owner) {
                        assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                        assert_eq!(table.holder("hot"), Some(owner));
                        inside.fetch_sub(1, Ordering::SeqCst);
                        wins.fetch_add(1, Ordering::Relaxed);
                        assert!(table.release("hot", owner));
                    }
                }
            });
        }
    });
    assert!(wins.load(Ordering::Relaxed) > 0);
    assert_eq!(table.holder("hot"), None);
}

#[test]
fn every_round_has_exactly_one_winner() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 200;
    let table = MemLockTable::new();
    let barrier = Barrier::new(THREADS);
    let winners: Vec<AtomicUsize> = (0..ROUNDS).map(|_| AtomicUsize::new(0)).collect();
    std::thread::scope(|s| {
        for owner in 0..THREADS as SessionId {
            let (table, barrier, winners) = (&table, &barrier, &winners);
            s.spawn(move || {
                for round in winners {
                    barrier.wait();
                    let won = table.try_lock("hot", owner);
                    if won {
                        round.fetch_add(1, Ordering::SeqCst);
                    }
                    barrier.wait(); // everyone has tried
                    if won {
                        assert!(table.release("hot", owner));
                    }
                }
            });
        }
    });
    for (i, round) in winners.iter().enumerate() {
        assert_eq!(round.load(Ordering::SeqCst), 1, "round {i}");
    }
}

#[test]
fn distinct_paths_never_block_each_other() {
    const THREADS: usize = 8;
    let table = MemLockTable::new();
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for owner in 0..THREADS as SessionId {
            let (table, barrier) = (&table, &barrier);
            s.spawn(move || {
                for i in 0..200 {
                    let path = format!("{owner}/{i}");
                    assert!(table.try_lock(&path, owner), "{path}");
                    barrier.wait(); // all hold a lock at once
                    assert!(table.release(&path, owner));
                }
            });
        }
    });
}

#[test]
fn mixed_operations_from_many_threads_terminate() {
    const THREADS: u64 = 4;
    let table = MemLockTable::new();
    std::thread::scope(|s| {
        for owner in 0..THREADS {
            let table = &table;
            s.spawn(move || {
                for i in 0..5_000u64 {
                    let path = format!("p{}", (i * 7 + owner) % 13);
                    match i % 5 {
                        0..=2 => {
                            table.try_lock(&path, owner);
                        }
                        3 => {
                            table.release(&path, owner);
                        }
                        _ => {
                            table.release_all(owner);
                        }
                    }
                }
                table.release_all(owner);
            });
        }
    });
    for i in 0..13 {
        assert_eq!(table.holder(&format!("p{i}")), None);
    }
}
