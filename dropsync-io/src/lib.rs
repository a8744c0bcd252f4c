//! The blocking half of dropsync that both programs share, kept out of
//! `dropsync-core` so that the core stays free of I/O (no sockets, files,
//! threads or clock reads there):
//!
//! - [`wire`]: frames read from and written to a byte stream (a socket), a
//!   thin adapter over the codec of `dropsync-proto`;
//! - [`dir_storage`]: the crash-safe folder that implements core's
//!   `Storage` for META-DATA snapshots and journals;
//! - [`queue`]: a client's update queue (the assignment's per-client queue
//!   of pending updates), which a sender thread waits on;
//! - [`scheduler`]: the worker pool's FIFO work queue (extra credit);
//! - [`clock`]: the time, which the drivers read and pass to the core;
//! - [`tcp`]: TCP keep-alive and the closed-peer check, which `std::net`
//!   lacks;
//! - [`conn`]: a session connection, plain or TLS, with a `TcpStream`'s
//!   handle (clones, timeouts, shutdown);
//! - [`tls`]: secure mode's keys, pins and handshakes;
//! - [`sync_many`]: many files' fsyncs side by side (group commit).

pub mod clock;
pub mod conn;
pub mod dir_storage;
pub mod queue;
pub mod scheduler;
pub mod sync_many;
pub mod tcp;
pub mod tls;
pub mod wire;
