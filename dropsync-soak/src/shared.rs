//! The multi-instance mode's shared services (issue 18, docs/SCALING.md):
//! one throwaway PostgreSQL cluster holding the catalog and one S3 server
//! (moto) holding the contents, which every server instance of a run
//! shares; and what the checks read from them, since there the server's
//! view is no longer `<root>/meta` and `<root>/blobs` (the latter is only
//! an instance's cache):
//! - the catalog's live files (`dropsync_entries`), with their contents'
//!   SHA-256;
//! - every content a line names (the table's files and the history's);
//! - the advisory locks held (one per file being written, `pg_locks.rs`);
//! - the bucket's objects and their bytes.
//!
//! The harness's own connection to PostgreSQL is made again when it broke
//! (the database is restarted as a fault).

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use dropsync_proto::digest::push_hex;
use dropsync_proto::metadata::Strong;
use dropsync_testkit::{PgProc, S3Proc};
use postgres::{Client, NoTls, Row};

use crate::model::{Tree, Version};

/// The bucket every instance of a run shares.
pub const BUCKET: &str = "soak";

/// The prefix of the contents' objects in [`BUCKET`].
pub const PREFIX: &str = "c";

/// The harness's own connection attempts and statements are bounded, like
/// every other wait of the harness.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A live file of the shared catalog: its content and that content's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line {
    /// MD5 and size, as the clients see them.
    pub version: Version,
    /// The SHA-256 naming its object (`None`: a line without one, which the
    /// server never writes).
    pub strong: Option<Strong>,
}

/// The database and the bucket of one run.
pub struct Shared {
    /// The PostgreSQL cluster (restartable).
    pub pg: PgProc,
    /// The S3 server.
    pub s3: S3Proc,
    db: Option<Client>,
}

/// The lower-case hex of a content key (its object's name).
pub fn hex(key: &Strong) -> String {
    let mut s = String::with_capacity(64);
    push_hex(key, &mut s);
    s
}

fn strong_of(raw: Option<Vec<u8>>) -> Option<Strong> {
    raw.and_then(|r| Strong::try_from(r.as_slice()).ok())
}

impl Shared {
    /// Makes a cluster under `dir` and starts moto with [`BUCKET`]. Panics,
    /// saying what to install, when PostgreSQL or moto is missing, as every
    /// other test of these (testkit's `PgProc` and `S3Proc`) does.
    pub fn start(dir: &Path) -> Self {
        let pg = PgProc::start(dir);
        let s3 = S3Proc::start(BUCKET);
        Shared { pg, s3, db: None }
    }

    /// The flags that put an instance on this catalog and bucket.
    pub fn server_args(&self) -> Vec<String> {
        ["--catalog", &self.pg.url, "--blobs", &format!("s3://{BUCKET}/{PREFIX}"), "--s3-endpoint", &self.s3.endpoint]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Runs `sql`, connecting first (again, if the connection broke: the
    /// database may have been restarted); one retry on a fresh connection.
    fn query(&mut self, sql: &str) -> Result<Vec<Row>, String> {
        let mut last = String::new();
        for _ in 0..2 {
            if self.db.as_ref().is_none_or(Client::is_closed) {
                let mut config: postgres::Config = self.pg.url.parse().map_err(|e| format!("PostgreSQL: {e}"))?;
                config.connect_timeout(CONNECT_TIMEOUT);
                let mut db = config.connect(NoTls).map_err(|e| format!("PostgreSQL: {e}"))?;
                db.batch_execute(&format!("SET statement_timeout = '{}s'", STATEMENT_TIMEOUT.as_secs()))
                    .map_err(|e| format!("PostgreSQL: {e}"))?;
                self.db = Some(db);
            }
            let Some(db) = self.db.as_mut() else { continue };
            match db.query(sql, &[]) {
                Ok(rows) => return Ok(rows),
                Err(e) => {
                    last = format!("PostgreSQL: {e}");
                    self.db = None;
                }
            }
        }
        Err(last)
    }

    /// The catalog's live files (the newest line of every path that is not
    /// a tombstone).
    pub fn lines(&mut self) -> Result<BTreeMap<String, Line>, String> {
        let rows = self.query("SELECT path, md5, size, strong FROM dropsync_entries WHERE NOT deleted")?;
        let mut out = BTreeMap::new();
        for row in rows {
            let path: String = row.get(0);
            let md5: Vec<u8> = row.get(1);
            let size: i64 = row.get(2);
            let md5 = md5.try_into().map_err(|_| format!("catalog: {path:?} has a bad md5"))?;
            let size = u64::try_from(size).map_err(|_| format!("catalog: {path:?} has a bad size"))?;
            out.insert(path, Line { version: Version { md5, size }, strong: strong_of(row.get(3)) });
        }
        Ok(out)
    }

    /// The catalog's files as a tree: the server's view in this mode.
    pub fn tree(&mut self) -> Result<Tree, String> {
        Ok(self.lines()?.into_iter().map(|(p, l)| (p, l.version)).collect())
    }

    /// Every content a line of the table or of the history names (what an
    /// instance may keep in its cache after a start, and what the bucket
    /// must keep).
    pub fn named(&mut self) -> Result<HashSet<Strong>, String> {
        let rows = self.query(
            "SELECT strong FROM dropsync_entries WHERE NOT deleted AND strong IS NOT NULL \
             UNION SELECT strong FROM dropsync_history WHERE NOT deleted AND strong IS NOT NULL",
        )?;
        Ok(rows.into_iter().filter_map(|r| strong_of(r.get(0))).collect())
    }

    /// How many advisory locks are held (every instance's per-file locks).
    pub fn advisory_locks(&mut self) -> Result<i64, String> {
        let rows = self.query("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// Rows of the garbage collector's ledger (`pg_gc.rs`): contents some
    /// instance no longer refers to, not yet collected.
    pub fn candidates(&mut self) -> Result<i64, String> {
        let rows = self.query("SELECT count(*) FROM dropsync_gc")?;
        Ok(rows.first().map_or(0, |r| r.get(0)))
    }

    /// The object of content `key`, `None` when the bucket lacks it.
    pub fn object(&self, key: &Strong) -> Result<Option<Vec<u8>>, String> {
        self.s3.get(BUCKET, &format!("{PREFIX}/{}", hex(key))).map_err(|e| format!("S3: {e}"))
    }

    /// The names of the bucket's objects (hex SHA-256, prefix taken off).
    pub fn objects(&self) -> Vec<String> {
        let prefix = format!("{PREFIX}/");
        self.s3.keys(BUCKET).into_iter().filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)).collect()
    }
}
