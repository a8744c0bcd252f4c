//! The dropsync sync engine, without sockets, files, threads of its own or
//! clock reads: time comes in as arguments, like quinn-proto's.
//!
//! Every rule of PROTOCOL.md sections 3 to 9 lives here as deterministic
//! logic (the README's "Where each rule lives" maps them):
//! - the connection machines: [`receiving`] (the receiving side of a
//!   connection, with a [`receiving::Host`] for what touches the disk) and
//!   [`sending`] (the sending side, with a [`sending::Source`] for chunk
//!   bytes), built on the one-transfer machines [`receiver`] and [`sender`],
//!   the multiplexer [`mux`], [`open_transfers`], [`liveness`] and the
//!   message [`decoder`];
//! - the server's rules: [`library`] (commits over the [`meta_server::Catalog`]
//!   and [`library::BlobStore`] traits; [`shared_catalog`]: the rules of a
//!   catalog several instances share), [`history`] (what commits replace,
//!   kept for restores and undeletes), [`delivery`] (the update queue),
//!   [`stale`], [`locks`], [`pairing`], [`path_rules`], [`access`] (who may connect and
//!   change what);
//! - the client's: [`sync_policy`], [`reconcile`], [`delete_guard`],
//!   [`debounce`], [`conflict`], [`meta_client`].
//!
//! Inputs come in as bytes, parsed frames, results of the caller's I/O and
//! times; outputs come back as bytes to send, decisions and deadlines. The
//! binaries (`dropsync-server`, `dropsync-client`) only move bytes between
//! these machines and sockets, threads and the disk, which is what lets
//! every rule be tested in memory.
//!
//! What blocks or touches the outside and is shared by both binaries (frames
//! over a socket, the crash-safe folder behind [`storage::Storage`], the
//! queues threads wait on) is in `dropsync-io`. `clippy.toml` here forbids
//! reading the clock, and the sources use no socket, file, thread or
//! condition variable.

pub mod access;
pub mod backoff;
pub mod conflict;
pub mod copies;
pub mod debounce;
pub mod delete_guard;
pub mod delta_index;
pub mod decoder;
pub mod delivery;
pub mod error;
pub mod liveness;
pub mod history;
pub mod jobs;
pub mod library;
pub mod locks;
pub mod meta_client;
pub mod meta_server;
pub mod mux;
pub mod open_transfers;
pub mod pairing;
pub mod path_rules;
pub mod receiver;
pub mod receiving;
pub mod reconcile;
pub mod sender;
pub mod sending;
pub mod shared_catalog;
pub mod stale;
pub mod storage;
pub mod sync_policy;
pub mod utc;
pub mod store;

pub use error::CoreError;
