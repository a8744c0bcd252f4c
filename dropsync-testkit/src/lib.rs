//! Test support shared by every integration test of dropsync: the real
//! binaries started on 127.0.0.1 with ephemeral ports and temp folders,
//! killed when dropped; polling with a deadline instead of sleeps; a raw
//! protocol peer built on `dropsync-proto`.
#![allow(clippy::unwrap_used)]

mod folders;
mod http;
mod peer;
mod postgres;
mod procs;
mod proxy;
mod s3;
mod tempdir;
mod wait;

pub use folders::{files, tree, write_file};
pub use http::http_get;
pub use peer::RawPeer;
pub use postgres::PgProc;
pub use procs::{bin_path, ClientProc, ServerProc};
pub use proxy::LatencyProxy;
pub use s3::S3Proc;
pub use tempdir::TempDir;
pub use wait::{wait_for, wait_until, DEFAULT_DEADLINE};
