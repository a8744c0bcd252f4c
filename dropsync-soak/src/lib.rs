//! Randomized convergence testing with fault injection for dropsync
//! (dev-only): a seeded harness that starts the real `server` and 2–5 real
//! `client`s on temp folders over loopback, drives a random workload of
//! file changes and faults (`kill -9` of clients and of the server, SIGSTOP
//! past the dead-peer timeout, restarts with `--once`), lets everything go
//! idle, and checks six invariants: convergence, no lost work, no
//! resurrection, no torn files, no debris, no crash. With
//! `DROPSYNC_SOAK_INSTANCES=N` the server is N instances sharing one
//! PostgreSQL catalog and one S3 bucket (issue 18; `shared.rs`), and the
//! server-side checks read those.
//!
//! [`run`] runs one seed; `tests/convergence.rs` runs a fixed set of seeds
//! (CI), any number of seeds (`make soak SEEDS=N`) or one seed again (the
//! replay command every failure prints). The workload and the checks are
//! documented in `harness.rs` and `model.rs`.
#![allow(clippy::unwrap_used)]

pub mod harness;
pub mod model;
pub mod names;
pub mod procs;
pub mod rng;
pub mod shared;
pub mod views;

pub use harness::{replay_command, run, Failure, Options, Summary, INSTANCE_KINDS, KINDS};
