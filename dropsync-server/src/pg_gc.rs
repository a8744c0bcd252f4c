//! Garbage collection of the bucket across instances (issue 18;
//! docs/SCALING.md). An instance's count of references covers only the
//! lines it has seen, so a content it no longer refers to only becomes a
//! *candidate*, a row of `dropsync_gc`; and an upload may have put a
//! content in the bucket that no committed line names yet. The protocol:
//!
//! - an instance that no longer refers to a content records it as a
//!   candidate ([`PgGc::candidate`]);
//! - an instance about to rely on a content (an upload's install, stored
//!   or already there) first removes its candidate row ([`PgGc::claim`]),
//!   which waits while a collector holds that row, and then checks that the
//!   object is there (putting it if not);
//! - the collector ([`PgGc::collect`]) takes candidates older than the
//!   grace, each row locked (`FOR UPDATE SKIP LOCKED`), and deletes the
//!   object, while holding the row, only when no line of the table or the
//!   history names the content; then the row goes.
//!
//! So an object is deleted only while no instance can be relying on it: one
//! that claims it afterwards finds it gone and puts it again.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dropsync_proto::metadata::Strong;
use postgres::Client;

use crate::s3::Remote;

/// The shared ledger of candidates.
pub struct PgGc {
    url: String,
    conn: Mutex<Option<Client>>,
    /// How long a candidate waits before it may be collected.
    pub grace: Duration,
}

impl std::fmt::Debug for PgGc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgGc(grace {:?})", self.grace)
    }
}

fn db_err(e: postgres::Error) -> std::io::Error {
    std::io::Error::other(format!("PostgreSQL: {e}"))
}

impl PgGc {
    /// The ledger in the database at `url` (the table comes with the
    /// catalog's schema).
    pub fn new(url: &str, grace: Duration) -> Self {
        Self { url: url.to_owned(), conn: Mutex::new(None), grace }
    }

    fn db(&self) -> std::io::Result<MutexGuard<'_, Option<Client>>> {
        let mut conn = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if conn.as_ref().is_none_or(Client::is_closed) {
            *conn = Some(crate::pg_catalog::connect(&self.url).map_err(db_err)?);
        }
        Ok(conn)
    }

    /// Records that this instance no longer refers to `key`.
    pub fn candidate(&self, key: &Strong, now_ns: i64) -> std::io::Result<()> {
        let mut conn = self.db()?;
        let db = conn.as_mut().ok_or_else(|| std::io::Error::other("no connection"))?;
        db.execute(
            "INSERT INTO dropsync_gc (strong, since_ns) VALUES ($1, $2) ON CONFLICT (strong) DO UPDATE SET since_ns = $2",
            &[&key.to_vec(), &now_ns],
        )
        .map(drop)
        .map_err(db_err)
    }

    /// Takes `key` off the candidates before this instance relies on its
    /// object (waits while a collector holds it).
    pub fn claim(&self, key: &Strong) -> std::io::Result<()> {
        let mut conn = self.db()?;
        let db = conn.as_mut().ok_or_else(|| std::io::Error::other("no connection"))?;
        db.execute("DELETE FROM dropsync_gc WHERE strong = $1", &[&key.to_vec()]).map(drop).map_err(db_err)
    }

    /// Collects candidates older than the grace that nothing names, at most
    /// `batch` of them; returns how many objects went.
    pub fn collect(&self, remote: &Remote, now_ns: i64, batch: i64) -> std::io::Result<usize> {
        let mut conn = self.db()?;
        let db = conn.as_mut().ok_or_else(|| std::io::Error::other("no connection"))?;
        let cutoff = now_ns.saturating_sub(i64::try_from(self.grace.as_nanos()).unwrap_or(i64::MAX));
        let mut tx = db.transaction().map_err(db_err)?;
        let rows = tx
            .query(
                "SELECT strong FROM dropsync_gc WHERE since_ns <= $1 ORDER BY since_ns LIMIT $2 FOR UPDATE SKIP LOCKED",
                &[&cutoff, &batch],
            )
            .map_err(db_err)?;
        let mut gone = 0;
        for row in rows {
            let raw: Vec<u8> = row.get(0);
            let named: bool = tx
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM dropsync_entries WHERE strong = $1 AND NOT deleted) \
                     OR EXISTS (SELECT 1 FROM dropsync_history WHERE strong = $1 AND NOT deleted)",
                    &[&raw],
                )
                .map_err(db_err)?
                .get(0);
            if !named {
                if let Ok(key) = Strong::try_from(raw.as_slice()) {
                    // Deleted while the row is held: a claim waits for it.
                    remote.delete(&key)?;
                    gone += 1;
                }
            }
            tx.execute("DELETE FROM dropsync_gc WHERE strong = $1", &[&raw]).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(gone)
    }
}
