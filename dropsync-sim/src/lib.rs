//! Deterministic simulation of dropsync (dev-only), in the manner of
//! FoundationDB's simulator and TigerBeetle's VOPR: one server engine and 2
//! to 8 client engines, each built from `dropsync-core`'s machines and
//! rules, run in one thread on a virtual clock, with every choice (the
//! workload, the faults, latencies, how bytes are split, which of several
//! ready events goes first) drawn from one seeded RNG. A seed is a whole
//! run: the same seed replays it bit for bit, and a run takes milliseconds,
//! so thousands of seeds are explored a minute.
//!
//! - [`net`]: connections that deliver in order with their own latency, in
//!   pieces of any size; stalls, resets, partitions.
//! - [`server`] and [`client`]: the engines, wired as the binaries wire the
//!   same core pieces, over in-memory storage ([`blobs`]).
//! - [`wire`]: what both kinds of engine drive alike (chunk bytes,
//!   keep-alives).
//! - [`world`]: the workload, the faults, the event loop and the checks.
//! - With several server instances (`--instances N`): [`db`] (the shared
//!   database: tables, advisory locks, the collector's ledger), [`shared`]
//!   (an instance's catalog, core's `shared_catalog` over that database, and
//!   its locks), [`bucket`] (the shared contents), [`backing`] (which of
//!   the two an engine stands on), [`instances`] (the followers'
//!   schedules, the collector, which instance a client reaches).
//!
//! What it does not test is the binaries' own driving code (threads,
//! sockets, the file system): the real-process soak (`dropsync-soak`) does.

pub mod backing;
pub mod blobs;
pub mod bucket;
pub mod client;
pub mod db;
pub mod instances;
pub mod net;
pub mod server;
pub mod shared;
pub mod wire;
pub mod world;

use std::time::Duration;

use dropsync_core::liveness::Timers;
use dropsync_core::open_transfers::Limits;

/// The settings of one run, drawn from its seed.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Chunk size of every transfer.
    pub chunk: u32,
    /// Operations in flight per connection.
    pub parallel: usize,
    /// Keep-alive and dead-peer times.
    pub timers: Timers,
    /// Open-transfer limit and idle abort.
    pub limits: Limits,
    /// The client's quiet time before a changed file is looked at.
    pub debounce: Duration,
    /// The client's periodic rescan.
    pub rescan: Duration,
}

pub use world::{replay_command, run, run_with, Failure, Outcome};
