//! The catalog on PostgreSQL (issue 18, first part; docs/SCALING.md): the
//! META-DATA, the version counter, an append-only change log and the
//! history, in tables that several server instances can share.
//!
//! Reads are served from memory, as the embedded catalog's are: the table
//! and the history are core's own structures (`ServerMeta`, `History`),
//! loaded at start and kept up to date. A commit is one transaction:
//! - the path's row is locked and compared with the version this instance
//!   knows (compare-and-set: a change another instance committed first
//!   makes this one fail, after catching up, rather than overwrite unseen);
//! - the next version comes from one counter row, whose lock is held until
//!   the commit, so versions are handed out in commit order across
//!   instances, strictly increasing;
//! - the replaced line goes to the history, the new one to the table and
//!   to the change log, and a NOTIFY wakes the other instances;
//! - only once the transaction is committed is the change applied in
//!   memory and acknowledged (section 6: persist before 0x0001).
//!
//! `catch_up` reads what other instances committed since this one's cursor
//! (the change log and the history, in commit order): the follower
//! (`follower.rs`, through `follow`) does it as they come, and a commit that
//! finds its row changed does it first; the lines that commit caught up on
//! wait for the follower (`State::pending`), which queues them for this
//! instance's clients as it does the lines it reads itself.

use std::sync::{Mutex, MutexGuard, PoisonError};

use dropsync_core::history::{self, History, Kept};
use dropsync_core::meta_server::{Catalog, Change, ServerMeta};
use dropsync_core::path_rules::PathConflict;
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

/// What this instance holds in memory.
struct State {
    table: ServerMeta,
    history: History,
    /// Every change up to this version is applied here.
    cursor: u64,
    /// Every history row up to this id is applied here.
    history_cursor: i64,
    /// Lines a refused commit caught up on (other instances' commits),
    /// applied here but not yet handed to the follower: `follow` reads the
    /// change log from the cursor, which they moved past, so it returns
    /// these first (queued for this instance's clients, their contents
    /// counted, as any followed line).
    pending: Vec<Entry>,
}

/// The catalog on PostgreSQL.
pub struct PgCatalog {
    url: String,
    db: Mutex<Client>,
    state: Mutex<State>,
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
        let mut state = State {
            table: ServerMeta::default(),
            history: History::default(),
            cursor: 0,
            history_cursor: 0,
            pending: Vec::new(),
        };
        let last: i64 = db.query_one("SELECT last_version FROM dropsync_counter", &[]).map_err(db_err)?.get(0);
        for row in db.query(&format!("SELECT {ENTRY_COLUMNS} FROM dropsync_entries"), &[]).map_err(db_err)? {
            state.table.put(entry_of(&row, 0)?);
        }
        state.cursor = u64::try_from(last).unwrap_or(0);
        load_history(&mut db, &mut state)?;
        Ok(Self { url: url.to_owned(), db: Mutex::new(db), state: Mutex::new(state) })
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

fn load_history(db: &mut Client, st: &mut State) -> Result<(), CoreError> {
    let rows = db
        .query(
            &format!("SELECT id, replaced_ns, {ENTRY_COLUMNS} FROM dropsync_history WHERE id > $1 ORDER BY id"),
            &[&st.history_cursor],
        )
        .map_err(db_err)?;
    for row in rows {
        let id: i64 = row.get(0);
        st.history.keep(entry_of(&row, 2)?, row.get(1));
        st.history_cursor = st.history_cursor.max(id);
    }
    Ok(())
}

fn catch_up(db: &mut Client, st: &mut State) -> Result<Vec<Entry>, CoreError> {
    let rows = db
        .query(
            &format!(
                "SELECT c.version, e.{} FROM dropsync_changes c JOIN dropsync_entries e ON e.path = c.path \
                 WHERE c.version > $1 ORDER BY c.version",
                ENTRY_COLUMNS.replace(", ", ", e.")
            ),
            &[&to_i64(st.cursor)],
        )
        .map_err(db_err)?;
    let mut changed = Vec::new();
    for row in rows {
        let v: i64 = row.get(0);
        let entry = entry_of(&row, 1)?;
        if st.table.put(entry.clone()).is_some() {
            changed.push(entry);
        }
        st.cursor = st.cursor.max(u64::try_from(v).unwrap_or(0));
    }
    load_history(db, st)?;
    Ok(changed)
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
        lock(&self.state).table.get(path).cloned()
    }

    fn commit(&self, path: &str, change: Change) -> Result<Entry, CoreError> {
        let mut db = self.connection()?;
        let mut st = lock(&self.state);
        let known = st.table.get(path).map(|e| e.version);
        let mut tx = db.transaction().map_err(db_err)?;
        let row = tx
            .query_opt("SELECT version FROM dropsync_entries WHERE path = $1 FOR UPDATE", &[&path])
            .map_err(db_err)?;
        let in_db = row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0));
        if in_db != known {
            drop(tx);
            // What it brings waits for the follower, which queues it for
            // this instance's clients: the cursor moves past it here.
            let caught = catch_up(&mut db, &mut st)?;
            st.pending.extend(caught);
            return Err(CoreError::Io(std::io::Error::other(format!(
                "{path:?} was changed by another server instance; not committed (the client tries again)"
            ))));
        }
        let version: i64 = tx
            .query_one(
                "UPDATE dropsync_counter SET last_version = last_version + 1 WHERE id = 1 RETURNING last_version",
                &[],
            )
            .map_err(db_err)?
            .get(0);
        let entry = st.table.line_for(path, change, u64::try_from(version).unwrap_or(0));
        let previous = st.table.get(path).cloned();
        if let Some(p) = &previous {
            insert_line(&mut tx, "dropsync_history", p, Some(entry.mtime_ns))?;
        }
        insert_line(&mut tx, "dropsync_entries", &entry, None)?;
        tx.execute("INSERT INTO dropsync_changes (version, path) VALUES ($1, $2)", &[&version, &path])
            .map_err(db_err)?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &version.to_string()]).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        // Durable: now in memory. The history row is read back (with any
        // other instance's since), so that it is held once, by its id.
        st.table.put(entry.clone());
        if st.cursor + 1 == entry.version {
            st.cursor = entry.version;
        }
        if previous.is_some() {
            load_history(&mut db, &mut st)?;
        }
        Ok(entry)
    }

    fn snapshot(&self) -> (String, u64) {
        let st = lock(&self.state);
        (st.table.render(), st.table.last_version())
    }

    fn history(&self, path: &str) -> Vec<Kept> {
        lock(&self.state).history.of(path).to_vec()
    }

    fn live_at(&self, prefix: &str, t_ns: i64) -> Vec<Entry> {
        let st = lock(&self.state);
        history::live_at(st.table.entries(), &st.history, prefix, t_ns)
    }

    fn expire(&self, cutoff_ns: i64) -> Result<Vec<Kept>, CoreError> {
        let mut db = self.connection()?;
        let mut st = lock(&self.state);
        db.execute("DELETE FROM dropsync_history WHERE replaced_ns < $1", &[&cutoff_ns]).map_err(db_err)?;
        Ok(st.history.expire(cutoff_ns))
    }

    fn contents(&self) -> Vec<Strong> {
        let st = lock(&self.state);
        let live = st.table.entries().filter(|e| e.state == EntryState::File);
        let kept = st.history.iter().filter(|k| k.is_file()).map(|k| &k.entry);
        live.chain(kept).filter_map(|e| e.strong).collect()
    }

    fn history_size(&self) -> history::Size {
        lock(&self.state).history.size()
    }

    fn path_conflict(&self, path: &str, case_twins: bool) -> Option<PathConflict> {
        lock(&self.state).table.path_conflict(path, case_twins)
    }

    fn budget_cutoff(&self, budget: u64) -> Option<i64> {
        lock(&self.state).history.budget_cutoff(budget)
    }

    fn len(&self) -> usize {
        lock(&self.state).table.len()
    }

    fn walk_table(&self, f: &mut dyn FnMut(&ServerMeta)) {
        f(&lock(&self.state).table)
    }

    fn follow(&self) -> Result<Vec<Entry>, CoreError> {
        let mut db = self.connection()?;
        let mut st = lock(&self.state);
        let more = catch_up(&mut db, &mut st)?;
        let mut lines = std::mem::take(&mut st.pending);
        lines.extend(more);
        Ok(lines)
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
