//! The dropsync sync engine, without sockets, threads of its own, clocks or
//! (outside [`storage`]) the file system.
//!
//! Every rule of PROTOCOL.md sections 4 to 7 lives here as deterministic
//! logic: the META-DATA tables, the per-file lock table, the receiver and
//! sender state machines of one transfer and the multiplexer that interleaves
//! them, the transfers open on one connection with their limits
//! ([`open_transfers`]), reconciliation, update queues, session pairing and the stale-change
//! rule, and each connection's keep-alive and dead-peer clocks
//! ([`liveness`]). Inputs come in as parsed frames, byte slices and times passed as
//! arguments; outputs come back as the STATUS to send and actions for the
//! caller. The binaries (`dropsync-server`, `dropsync-client`) only move
//! bytes between these machines and sockets, threads and the disk, which is
//! what lets every rule be tested in memory.
//!
//! Two parts touch the outside on purpose and are kept small: [`queue`] and
//! [`scheduler`] block on a `Condvar` (they are the synchronisation the
//! binaries share between threads), and [`storage`] has the one `std::fs`
//! implementation of the durable-storage trait that both binaries use.

pub mod conflict;
pub mod error;
pub mod liveness;
pub mod locks;
pub mod meta_client;
pub mod meta_server;
pub mod mux;
pub mod open_transfers;
pub mod pairing;
pub mod queue;
pub mod receiver;
pub mod reconcile;
pub mod scheduler;
pub mod sender;
pub mod stale;
pub mod storage;
pub mod store;
pub mod wire;

pub use error::CoreError;
