//! The dropsync sync engine, without sockets, files, threads of its own or
//! clock reads: time comes in as arguments, like quinn-proto's.
//!
//! Every rule of PROTOCOL.md sections 4 to 7 lives here as deterministic
//! logic: the META-DATA tables, the per-file lock table, the receiver and
//! sender state machines of one transfer and the multiplexer that
//! interleaves them, the transfers open on one connection with their limits
//! ([`open_transfers`]), each connection's keep-alive and dead-peer clocks
//! ([`liveness`]), reconciliation, session pairing and the stale-change
//! rule. Inputs come in as parsed frames, byte slices and times passed as
//! arguments; outputs come back as the STATUS to send and actions for the
//! caller. The binaries (`dropsync-server`, `dropsync-client`) only move
//! bytes between these machines and sockets, threads and the disk, which is
//! what lets every rule be tested in memory.
//!
//! What blocks or touches the outside and is shared by both binaries (frames
//! over a socket, the crash-safe folder behind [`storage::Storage`], the
//! queues threads wait on) is in `dropsync-io`. `clippy.toml` here forbids
//! reading the clock, and the sources use no socket, file, thread or
//! condition variable.

pub mod backoff;
pub mod conflict;
pub mod debounce;
pub mod delete_guard;
pub mod decoder;
pub mod delivery;
pub mod error;
pub mod liveness;
pub mod jobs;
pub mod library;
pub mod locks;
pub mod meta_client;
pub mod meta_server;
pub mod mux;
pub mod open_transfers;
pub mod pairing;
pub mod receiver;
pub mod receiving;
pub mod reconcile;
pub mod sender;
pub mod sending;
pub mod stale;
pub mod storage;
pub mod sync_policy;
pub mod store;

pub use error::CoreError;
