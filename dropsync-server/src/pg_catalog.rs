//! The catalog on PostgreSQL (issue 18; docs/SCALING.md): the META-DATA,
//! the version counter, an append-only change log and the history, in
//! tables that several server instances can share.
//!
//! The rules (reads from memory, a commit as one transaction with a
//! compare-and-set on the path's row and the version from one counter row,
//! the catch-up from the change log) are core's `shared_catalog`, which the
//! simulator runs too; this module gives them their statements in SQL
//! ([`Sql`]) and holds the instance's view:
//! - the path's row is locked and compared with the version this instance
//!   knows (`SELECT ... FOR UPDATE`): a change another instance committed
//!   first makes this one fail, after catching up, rather than overwrite
//!   unseen;
//! - the next version comes from one counter row, whose lock is held until
//!   the commit, so versions are handed out in commit order across
//!   instances, strictly increasing;
//! - the replaced line goes to the history, the new one to the table and
//!   to the change log, and a NOTIFY wakes the other instances;
//! - only once the transaction is committed is the change applied in
//!   memory and acknowledged (section 6: persist before 0x0001).
//!
//! The follower (`follower.rs`, through `follow`) catches up with what
//! other instances committed as they come, and a commit that finds its row
//! changed does it first; the lines that commit caught up on wait for the
//! follower (`SharedView`'s pending lines), which queues them for this
//! instance's clients as it does the lines it reads itself.

use std::sync::{Mutex, MutexGuard, PoisonError};

use dropsync_core::history::{self, Kept};
use dropsync_core::meta_server::{Catalog, Change, ServerMeta};
use dropsync_core::path_rules::PathConflict;
use dropsync_core::shared_catalog::{CommitTx, SharedDb, SharedView};
use dropsync_core::CoreError;
use dropsync_proto::metadata::{Entry, EntryState, Strong};
use postgres::{Client, NoTls, Row, Transaction};

/// The schema, one statement list per version; applied at start, each in
/// its own transaction, from the version the database is at.
const MIGRATIONS: &[&str] = &[
    // 1: the table, the counter, the change log, the history.
    "CREATE TABLE dropsync_counter (id int PRIMARY KEY CHECK (id = 1), last_version bigint NOT NULL);
     INSERT INTO dropsync_counter VALUES (1, 0);
     CREATE TABLE dropsync_entries (
         path text PRIMARY KEY, version bigint NOT NULL, md5 bytea NOT NULL, size bigint NOT NULL,
         mtime_ns bigint NOT NULL, deleted boolean NOT NULL, strong bytea);
     CREATE TABLE dropsync_changes (version bigint PRIMARY KEY, path text NOT NULL);
     CREATE TABLE dropsync_history (
         id bigserial PRIMARY KEY, path text NOT NULL, version bigint NOT NULL, md5 bytea NOT NULL,
         size bigint NOT NULL, mtime_ns bigint NOT NULL, deleted boolean NOT NULL, strong bytea,
         replaced_ns bigint NOT NULL);
     CREATE INDEX dropsync_history_replaced ON dropsync_history (replaced_ns);",
    // 2: garbage collection across instances (`pg_gc`): candidates, and
    // the lookups by content its collector makes.
    "CREATE TABLE dropsync_gc (strong bytea PRIMARY KEY, since_ns bigint NOT NULL);
     CREATE INDEX dropsync_entries_strong ON dropsync_entries (strong);
     CREATE INDEX dropsync_history_strong ON dropsync_history (strong);",
];

/// Longest a connection attempt may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Longest any one statement may take, waits for another instance's row
/// lock included: a database that hangs fails the commit (the client tries
/// again) instead of holding this instance up.
const STATEMENT_TIMEOUT: &str = "10s";

/// Connects to `url` with a deadline on the connection and on every
/// statement, and TCP keep-alives, whatever the URL says: every
/// connection of ours to PostgreSQL is made here.
pub fn connect(url: &str) -> Result<Client, postgres::Error> {
    let mut config: postgres::Config = url.parse()?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    config.keepalives(true);
    let mut client = config.connect(NoTls)?;
    client.batch_execute(&format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'"))?;
    Ok(client)
}

/// The channel NOTIFY wakes other instances on.
pub const CHANNEL: &str = "dropsync_changes";

/// The catalog on PostgreSQL: the connection and this instance's view.
pub struct PgCatalog {
    url: String,
    db: Mutex<Client>,
    view: Mutex<SharedView>,
}

fn db_err(e: postgres::Error) -> CoreError {
    CoreError::Io(std::io::Error::other(format!("PostgreSQL: {e}")))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn entry_of(row: &Row, at: usize) -> Result<Entry, CoreError> {
    let bad = |what: &str| CoreError::Io(std::io::Error::other(format!("PostgreSQL: bad {what} in a row")));
    let md5: Vec<u8> = row.get(at + 2);
    let strong: Option<Vec<u8>> = row.get(at + 6);
    Ok(Entry {
        path: row.get(at),
        version: u64::try_from(row.get::<_, i64>(at + 1)).map_err(|_| bad("version"))?,
        md5: md5.try_into().map_err(|_| bad("md5"))?,
        size: u64::try_from(row.get::<_, i64>(at + 3)).map_err(|_| bad("size"))?,
        mtime_ns: row.get(at + 4),
        state: if row.get::<_, bool>(at + 5) { EntryState::Deleted } else { EntryState::File },
        strong: match strong {
            Some(s) => Some(Strong::try_from(s.as_slice()).map_err(|_| bad("strong digest"))?),
            None => None,
        },
    })
}

const ENTRY_COLUMNS: &str = "path, version, md5, size, mtime_ns, deleted, strong";

impl PgCatalog {
    /// Connects to `url` (`postgres://user@host:port/db`), applies the
    /// schema's migrations and loads the table and the history.
    pub fn open(url: &str) -> Result<Self, CoreError> {
        let mut db = connect(url).map_err(db_err)?;
        migrate(&mut db)?;
        let view = SharedView::open(&mut Sql(&mut db))?;
        Ok(Self { url: url.to_owned(), db: Mutex::new(db), view: Mutex::new(view) })
    }

    /// The connection, made again first if it broke (the database
    /// restarted): a commit in between fails, and its client tries again.
    fn connection(&self) -> Result<MutexGuard<'_, Client>, CoreError> {
        let mut db = lock(&self.db);
        if db.is_closed() {
            *db = connect(&self.url).map_err(db_err)?;
            log::info!("PostgreSQL: connected again");
        }
        Ok(db)
    }
}

fn migrate(db: &mut Client) -> Result<(), CoreError> {
    db.batch_execute("CREATE TABLE IF NOT EXISTS dropsync_schema (version int NOT NULL)").map_err(db_err)?;
    let mut tx = db.transaction().map_err(db_err)?;
    // One instance migrates at a time; the others wait here, then see it done.
    tx.batch_execute("LOCK TABLE dropsync_schema IN EXCLUSIVE MODE").map_err(db_err)?;
    let at: i64 = tx.query_one("SELECT count(*) FROM dropsync_schema", &[]).map_err(db_err)?.get(0);
    for (i, step) in MIGRATIONS.iter().enumerate().skip(usize::try_from(at).unwrap_or(0)) {
        tx.batch_execute(step).map_err(db_err)?;
        tx.execute("INSERT INTO dropsync_schema VALUES ($1)", &[&(i as i32 + 1)]).map_err(db_err)?;
        log::info!("PostgreSQL: schema version {} applied", i + 1);
    }
    tx.commit().map_err(db_err)
}

/// The shared catalog's statements (core's `shared_catalog::SharedDb`) in
/// SQL, on one connection.
struct Sql<'c>(&'c mut Client);

/// A commit's transaction in SQL.
struct SqlTx<'c>(Transaction<'c>);

impl SharedDb for Sql<'_> {
    type Tx<'a>
        = SqlTx<'a>
    where
        Self: 'a;

    fn begin(&mut self) -> Result<SqlTx<'_>, CoreError> {
        self.0.transaction().map(SqlTx).map_err(db_err)
    }

    fn load(&mut self) -> Result<(u64, Vec<Entry>), CoreError> {
        let last: i64 = self.0.query_one("SELECT last_version FROM dropsync_counter", &[]).map_err(db_err)?.get(0);
        let rows = self.0.query(&format!("SELECT {ENTRY_COLUMNS} FROM dropsync_entries"), &[]).map_err(db_err)?;
        let entries = rows.iter().map(|r| entry_of(r, 0)).collect::<Result<Vec<_>, _>>()?;
        Ok((u64::try_from(last).unwrap_or(0), entries))
    }

    fn changes_since(&mut self, cursor: u64) -> Result<Vec<(u64, Entry)>, CoreError> {
        let rows = self
            .0
            .query(
                &format!(
                    "SELECT c.version, e.{} FROM dropsync_changes c JOIN dropsync_entries e ON e.path = c.path \
                     WHERE c.version > $1 ORDER BY c.version",
                    ENTRY_COLUMNS.replace(", ", ", e.")
                ),
                &[&to_i64(cursor)],
            )
            .map_err(db_err)?;
        let row = |r: &Row| Ok((u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), entry_of(r, 1)?));
        rows.iter().map(row).collect()
    }

    fn history_since(&mut self, id: i64) -> Result<Vec<(i64, Kept)>, CoreError> {
        let rows = self
            .0
            .query(
                &format!("SELECT id, replaced_ns, {ENTRY_COLUMNS} FROM dropsync_history WHERE id > $1 ORDER BY id"),
                &[&id],
            )
            .map_err(db_err)?;
        let row = |r: &Row| Ok((r.get(0), Kept { entry: entry_of(r, 2)?, replaced_ns: r.get(1) }));
        rows.iter().map(row).collect()
    }
}

impl CommitTx for SqlTx<'_> {
    fn lock_row(&mut self, path: &str) -> Result<Option<u64>, CoreError> {
        let row = self
            .0
            .query_opt("SELECT version FROM dropsync_entries WHERE path = $1 FOR UPDATE", &[&path])
            .map_err(db_err)?;
        Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    fn next_version(&mut self) -> Result<u64, CoreError> {
        let version: i64 = self
            .0
            .query_one(
                "UPDATE dropsync_counter SET last_version = last_version + 1 WHERE id = 1 RETURNING last_version",
                &[],
            )
            .map_err(db_err)?
            .get(0);
        Ok(u64::try_from(version).unwrap_or(0))
    }

    fn write(&mut self, replaced: Option<&Kept>, entry: &Entry) -> Result<(), CoreError> {
        if let Some(k) = replaced {
            insert_line(&mut self.0, "dropsync_history", &k.entry, Some(k.replaced_ns))?;
        }
        insert_line(&mut self.0, "dropsync_entries", entry, None)?;
        let version = to_i64(entry.version);
        self.0
            .execute("INSERT INTO dropsync_changes (version, path) VALUES ($1, $2)", &[&version, &entry.path])
            .map_err(db_err)?;
        self.0.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &version.to_string()]).map_err(db_err)?;
        Ok(())
    }

    fn commit(self) -> Result<(), CoreError> {
        self.0.commit().map_err(db_err)
    }
}

fn insert_line(tx: &mut Transaction<'_>, table: &str, e: &Entry, replaced_ns: Option<i64>) -> Result<(), CoreError> {
    let strong = e.strong.map(|s| s.to_vec());
    let deleted = e.state != EntryState::File;
    let (version, size) = (to_i64(e.version), to_i64(e.size));
    let md5 = e.md5.to_vec();
    match replaced_ns {
        Some(at) => tx.execute(
            &format!("INSERT INTO {table} ({ENTRY_COLUMNS}, replaced_ns) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"),
            &[&e.path, &version, &md5, &size, &e.mtime_ns, &deleted, &strong, &at],
        ),
        None => tx.execute(
            &format!(
                "INSERT INTO {table} ({ENTRY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (path) DO UPDATE \
                 SET version = $2, md5 = $3, size = $4, mtime_ns = $5, deleted = $6, strong = $7"
            ),
            &[&e.path, &version, &md5, &size, &e.mtime_ns, &deleted, &strong],
        ),
    }
    .map(drop)
    .map_err(db_err)
}

impl Catalog for PgCatalog {
    fn get(&self, path: &str) -> Option<Entry> {
        lock(&self.view).get(path)
    }

    fn commit(&self, path: &str, change: Change) -> Result<Entry, CoreError> {
        let mut db = self.connection()?;
        lock(&self.view).commit(&mut Sql(&mut db), path, change)
    }

    fn snapshot_skipping(&self, since: Option<u64>, skip: &dyn Fn(&Entry) -> bool) -> (String, u64) {
        lock(&self.view).snapshot(since, skip)
    }

    fn history(&self, path: &str) -> Vec<Kept> {
        lock(&self.view).history(path)
    }

    fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry> {
        lock(&self.view).live_at(prefix, t_ns)
    }

    fn expire(&self, cutoff_ns: i64) -> Result<Vec<Kept>, CoreError> {
        let mut db = self.connection()?;
        let mut view = lock(&self.view);
        db.execute("DELETE FROM dropsync_history WHERE replaced_ns < $1", &[&cutoff_ns]).map_err(db_err)?;
        Ok(view.expire(cutoff_ns))
    }

    fn contents(&self) -> Vec<Strong> {
        lock(&self.view).contents()
    }

    fn history_size(&self) -> history::Size {
        lock(&self.view).history_size()
    }

    fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        lock(&self.view).path_conflict(path, case_twins)
    }

    fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        lock(&self.view).budget_cutoff(budget)
    }

    fn len(&self) -> usize {
        lock(&self.view).table().len()
    }

    fn walk_table(&self, f: &mut dyn FnMut(&ServerMeta)) {
        f(lock(&self.view).table())
    }

    fn follow(&self) -> Result<Vec<Entry>, CoreError> {
        let mut db = self.connection()?;
        lock(&self.view).follow(&mut Sql(&mut db))
    }

    fn shared(&self) -> bool {
        true
    }
}

/// A connection that LISTENs for other instances' commits: a wake-up only;
/// what changed is read from the change log by `follow`, so a notification
/// lost (or a connection down) costs latency, never a change.
pub struct Listener {
    url: String,
    conn: Option<Client>,
}

impl Listener {
    /// A listener for the database at `url` (connected on first use).
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), conn: None }
    }

    /// Waits at most `limit` for a notification (the whole of it when the
    /// connection cannot be made: the caller catches up anyway).
    pub fn wait(&mut self, limit: std::time::Duration) {
        if self.conn.as_ref().is_none_or(Client::is_closed) {
            self.conn = connect(&self.url)
                .and_then(|mut c| c.batch_execute(&format!("LISTEN {CHANNEL}")).map(|()| c))
                .map_err(|e| log::debug!("PostgreSQL: cannot listen ({e}); polling"))
                .ok();
        }
        let failed = match &mut self.conn {
            Some(c) => {
                let mut n = c.notifications();
                let mut it = n.timeout_iter(limit);
                postgres::fallible_iterator::FallibleIterator::next(&mut it).err()
            }
            None => {
                std::thread::sleep(limit);
                None
            }
        };
        if let Some(e) = failed {
            log::debug!("PostgreSQL: listening failed ({e})");
            self.conn = None;
        }
    }
}
