//! The client's state shared between its threads, and its META-DATA file
//! `<folder>/.dropsync/metadata` (PROTOCOL.md section 5; the states it uses
//! are documented in `dropsync_core::meta_client`).
//!
//! Crash safety of the base: the whole file is rewritten atomically, at
//! most every second (coalesced; a large table only once its journal is a
//! third of it, see `MetaFile::snapshot_wanted`), but every change of a *base* (a
//! file received or deleted on the server's behalf, an accepted upload or
//! delete, a base recorded at reconciliation) is also appended at once to a
//! journal beside it, `metadata.journal.<generation>`. A `kill -9` between
//! two saves therefore loses no base. A lost base is not harmless: after a
//! restart, a local delete of a file whose receipt was not yet saved looked
//! like "the server has a file we never had" and the file was downloaded
//! again, and a local edit of it became a conflict copy while the older
//! version came back (found by dropsync-soak, seeds 104 and 125). Each
//! snapshot names its generation; a snapshot of generation G already holds
//! every journal below G, so loading replays only journals ≥ G, in order.
//! Local-file observations (stat and digest) are not journaled: after a
//! crash they are simply recomputed from the file.
//!
//! One mutex guards everything the control thread and the receive thread
//! both touch: the per-path records, and the paths each of them has a
//! transfer open for. It is only ever held for bookkeeping and renames,
//! never while a socket is read or written, nor while a file is hashed.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use dropsync_core::meta_client::{render_record, ClientMeta, ClientRecord, LocalSeen};
use dropsync_core::reconcile::Content;
use dropsync_io::dir_storage::{replace_file, Replacement};
use dropsync_proto::ClientId;

use crate::ignores::Ignores;
use crate::paths::STATE_DIR;

/// File name of the client's META-DATA inside the state folder.
pub const METADATA_FILE: &str = "metadata";

/// Folder (inside the state folder) for incoming files being received.
pub const TMP_DIR: &str = "tmp";

/// Name prefix of the journal files, `metadata.journal.<generation>`.
pub const JOURNAL_PREFIX: &str = "metadata.journal.";

/// The comment line that names a snapshot's generation.
const GENERATION_PREFIX: &str = "# generation ";

/// What the threads share, behind [`Shared::lock`].
#[derive(Debug)]
pub struct State {
    /// The client's id and per-path records.
    pub meta: ClientMeta,
    /// True when `meta` changed since it was last saved.
    pub unsaved: bool,
    /// How many times a record changed: what is worked out from every
    /// record (`client status`'s count of conflict copies) is worked out
    /// again only when this moved, not at every look (at 1,000,000 paths a
    /// walk of them four times a second was most of an idle client's CPU).
    pub changes: u64,
    /// Paths with an upload or DELETE of ours under way, from its first
    /// message to the reply that ends it. An incoming transfer or DELETE of
    /// one of these is refused with 0x0080 (PROTOCOL.md section 7).
    pub outgoing: HashSet<String>,
    /// Paths with an incoming transfer open on the receive connection.
    pub incoming: HashSet<String>,
    /// Paths the user asked to have back from the server (`client
    /// restore-deletes`): their delivery is installed even though it is the
    /// base (`sync_policy::brings_nothing_new`).
    pub restoring: HashSet<String>,
    /// Generation of the last snapshot rendered (see the module doc).
    generation: u64,
    /// The journal of that generation, appended under this lock (so in the
    /// order the changes were made); `None` before the client opens it.
    journal: Option<File>,
    /// Records appended to that journal.
    journal_records: usize,
}

impl State {
    /// The record of `name` (an empty one if there is none).
    pub fn record(&self, name: &str) -> ClientRecord {
        self.meta.records.get(name).copied().unwrap_or_default()
    }

    /// Records that `name` now holds `content`, in common with the server
    /// (after an accepted upload or a received file), as seen at `mtime_ns`.
    pub fn set_synced(&mut self, name: &str, content: Content, mtime_ns: i64) {
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        rec.base = Some(content);
        rec.base_version = 0;
        rec.local = Some(LocalSeen { mtime_ns, content });
        self.unsaved = true;
        self.changes += 1;
        self.journal(name);
    }

    /// Records that `name` is gone on both sides (an accepted or received
    /// delete).
    pub fn set_deleted(&mut self, name: &str) {
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        *rec = ClientRecord { base: None, base_version: rec.base_version, local: None };
        self.unsaved = true;
        self.changes += 1;
        self.journal(name);
    }

    /// Records what the local file of `name` is now, leaving its base. A
    /// path never seen before and absent now gets no record (editors' short
    /// lived temp files would otherwise pile up as tombstones).
    pub fn set_local(&mut self, name: &str, local: Option<LocalSeen>) {
        if local.is_none() && !self.meta.records.contains_key(name) {
            return;
        }
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        if rec.local != local {
            rec.local = local;
            self.unsaved = true;
            self.changes += 1;
        }
    }

    /// Sets the base of `name` (reconciliation's "record it").
    pub fn set_base(&mut self, name: &str, base: Option<Content>, version: u64) {
        if self.meta.records.get(name).is_some_and(|r| r.base == base && r.base_version == version) {
            // Every path in sync is recorded again at each reconnection:
            // nothing to save or journal.
            return;
        }
        let rec = self.meta.records.entry(name.to_owned()).or_default();
        rec.base = base;
        rec.base_version = version;
        self.unsaved = true;
        self.changes += 1;
        self.journal(name);
    }

    /// Appends the record of `name` to the journal: one small write (no
    /// fsync: it is there for a killed process, whose writes the kernel
    /// keeps). A failing journal is dropped; the snapshots go on.
    fn journal(&mut self, name: &str) {
        let mut lines = String::with_capacity(128);
        render_record(name, &self.meta.records.get(name).copied().unwrap_or_default(), &mut lines);
        self.journal_text(&lines);
    }

    /// Appends `lines` (whole records) to the journal.
    fn journal_text(&mut self, lines: &str) {
        if lines.is_empty() {
            return;
        }
        let Some(file) = self.journal.as_mut() else { return };
        self.journal_records += 1;
        if let Err(e) = file.write_all(lines.as_bytes()) {
            log::error!("cannot append to the META-DATA journal: {e}; relying on snapshots");
            self.journal = None;
        }
    }
}

/// The shared state.
#[derive(Debug)]
pub struct Shared {
    inner: Mutex<State>,
}

impl Shared {
    /// Wraps a loaded META-DATA.
    pub fn new(meta: ClientMeta) -> Self {
        Shared {
            inner: Mutex::new(State {
                meta,
                unsaved: false,
                changes: 0,
                outgoing: HashSet::new(),
                incoming: HashSet::new(),
                restoring: HashSet::new(),
                generation: 0,
                journal: None,
                journal_records: 0,
            }),
        }
    }

    /// Locks the state. A thread that panicked while holding it left
    /// consistent data (every update is a single assignment), so a poisoned
    /// lock is used as is.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every thread of the client needs to know, fixed for its lifetime.
#[derive(Debug)]
pub struct Ctx {
    /// The synced folder (canonical).
    pub root: PathBuf,
    /// Where incoming files are written before they are renamed into place.
    pub tmp_dir: PathBuf,
    /// This client's label (HELLO, conflict-copy names).
    pub label: String,
    /// Keep conflict copies (section 7 [ext]); false: plain overwrite.
    pub conflict_copies: bool,
    /// The shared state.
    pub shared: Shared,
    /// What is never synced (`ignores.rs`).
    pub ignores: Ignores,
}

/// The META-DATA file on disk.
#[derive(Debug)]
pub struct MetaFile {
    path: PathBuf,
    dir: PathBuf,
    /// How long the last snapshot took to write, ns (see [`MetaFile::pause`]).
    last_took_ns: AtomicU64,
}

/// A snapshot is written to its file in pieces of this many bytes.
const SNAPSHOT_PIECE: usize = 1 << 20;

/// Snapshots are at least this many times their own cost apart: at a
/// million paths one takes about a second, under the state's lock.
const SNAPSHOT_SPACING: u32 = 20;

/// Least time between two tries of a snapshot after one failed.
const FAILED_SNAPSHOT_PAUSE: Duration = Duration::from_secs(30);

/// A table of at least this many records is written again only once its
/// journal holds a third as many records as it: a snapshot costs the
/// whole table, the journal one line per change, and loading replays it.
/// Smaller ones are written again after any change.
const LARGE_TABLE: usize = 30_000;

/// The generation a snapshot names (0 for none: an older file).
fn generation_of(text: &str) -> u64 {
    text.lines().rev().find_map(|l| l.strip_prefix(GENERATION_PREFIX)).and_then(|g| g.trim().parse().ok()).unwrap_or(0)
}

impl MetaFile {
    /// The META-DATA file of the folder `root`, creating its state folder
    /// and emptying the temp folder (files left by a crash mid-transfer).
    pub fn prepare(root: &Path) -> io::Result<(Self, PathBuf)> {
        let state_dir = root.join(STATE_DIR);
        let tmp_dir = state_dir.join(TMP_DIR);
        fs::create_dir_all(&tmp_dir)?;
        for entry in fs::read_dir(&tmp_dir)?.flatten() {
            let _ = fs::remove_file(entry.path());
        }
        Ok((MetaFile { path: state_dir.join(METADATA_FILE), dir: state_dir, last_took_ns: AtomicU64::new(0) }, tmp_dir))
    }

    fn journal_path(&self, generation: u64) -> PathBuf {
        self.dir.join(format!("{JOURNAL_PREFIX}{generation}"))
    }

    /// The journal files and their generations, oldest first.
    fn journals(&self) -> Vec<(u64, PathBuf)> {
        let mut out: Vec<(u64, PathBuf)> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let name = e.file_name();
                        let generation = name.to_str()?.strip_prefix(JOURNAL_PREFIX)?.parse().ok()?;
                        Some((generation, e.path()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// The snapshot `text` with the journals it does not hold yet appended
    /// (later lines of a path replace earlier ones). A journal's last line
    /// may be torn by a crash mid-append; it is dropped.
    fn with_journals<'t>(&self, text: &'t str) -> std::borrow::Cow<'t, str> {
        let generation = generation_of(text);
        if generation > 0 && self.nothing_to_replay(generation) {
            // No copy of a snapshot of a million records.
            return std::borrow::Cow::Borrowed(text);
        }
        let mut all = text.to_owned();
        for (_, path) in self.journals().into_iter().filter(|(g, _)| *g >= generation) {
            let Ok(bytes) = fs::read(&path) else { continue };
            let journal = String::from_utf8_lossy(&bytes);
            if !all.ends_with('\n') {
                all.push('\n');
            }
            all.push_str(journal.rfind('\n').map_or("", |i| &journal[..=i]));
        }
        std::borrow::Cow::Owned(all)
    }

    /// Whether no journal of `generation` or later holds a byte: the
    /// snapshot of `generation` is then the whole state.
    fn nothing_to_replay(&self, generation: u64) -> bool {
        self.journals().iter().filter(|(g, _)| *g >= generation).all(|(_, p)| fs::metadata(p).is_ok_and(|m| m.len() == 0))
    }

    /// Loads the META-DATA, or starts a new one with a fresh client id on
    /// the first run. A file that cannot be parsed is moved aside (its name
    /// is logged) and a new one started: reconciliation then compares
    /// contents without a base, which at worst keeps extra conflict copies.
    /// Returns it with the generation of the snapshot read (journals
    /// included; see the module doc).
    pub fn load(&self) -> io::Result<(ClientMeta, u64)> {
        match fs::read(&self.path) {
            Ok(bytes) => {
                let parsed = String::from_utf8(bytes).map_err(|e| e.to_string()).and_then(|text| {
                    let generation = generation_of(&text);
                    match ClientMeta::parse(&self.with_journals(&text)) {
                        Ok(meta) => Ok((meta, generation)),
                        Err(e) => {
                            log::error!("META-DATA journal unreadable ({e}); using the snapshot alone");
                            ClientMeta::parse(&text).map(|m| (m, generation)).map_err(|e| e.to_string())
                        }
                    }
                });
                match parsed {
                    Ok(loaded) => return Ok(loaded),
                    Err(e) => {
                        let stamp = SystemTime::now()
                            .duration_since(SystemTime::UNIX_EPOCH)
                            .map_or(0, |d| d.as_secs());
                        let aside = self.path.with_extension(format!("corrupt-{stamp}"));
                        log::error!(
                            "{}: {e}; moved to {} and starting afresh with a new client id",
                            self.path.display(),
                            aside.display()
                        );
                        fs::rename(&self.path, &aside)?;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let meta = ClientMeta::new(new_client_id()?);
        self.save(&meta.render())?;
        Ok((meta, 0))
    }

    /// Starts journaling `shared` (loaded at `generation`): saves a new
    /// snapshot, which folds in the journals just replayed, and opens the
    /// journal that follows it.
    ///
    /// With nothing to fold in (a restart after a clean stop, or with no
    /// change since the last snapshot), the snapshot on disk is the state:
    /// its generation's journal is opened for appends instead, and no
    /// snapshot is written (a million records: 100 MB and a second).
    pub fn open_journal(&self, shared: &Shared, generation: u64) {
        if generation > 0 && self.nothing_to_replay(generation) {
            match File::options().create(true).append(true).open(self.journal_path(generation)) {
                Ok(f) => {
                    let mut st = shared.lock();
                    st.generation = generation;
                    st.journal = Some(f);
                    st.journal_records = 0;
                    return;
                }
                Err(e) => log::warn!("cannot open the META-DATA journal ({e}); writing a snapshot"),
            }
        }
        {
            let mut st = shared.lock();
            st.generation = generation;
            st.unsaved = true;
        }
        self.save_if_changed(shared);
    }

    /// Whether a snapshot is wanted: something changed, and for a large
    /// table ([`LARGE_TABLE`]), its journal has grown to a third of it (a
    /// file edited in a folder of a million is one line in the journal,
    /// not 100 MB written again; a crash loses nothing either way).
    pub fn snapshot_wanted(&self, shared: &Shared) -> bool {
        let st = shared.lock();
        let records = st.meta.records.len();
        st.unsaved && (records < LARGE_TABLE || st.journal.is_none() || st.journal_records * 3 >= records)
    }

    /// How long to wait at least before the next snapshot:
    /// [`SNAPSHOT_SPACING`] times what the last one took (the journal keeps
    /// every change meanwhile; a snapshot only bounds it).
    pub fn pause(&self) -> Duration {
        Duration::from_nanos(self.last_took_ns.load(Ordering::Relaxed)) * SNAPSHOT_SPACING
    }

    /// Replaces the file atomically (temp file, fsync, rename).
    pub fn save(&self, text: &str) -> io::Result<()> {
        replace_file(&self.path, text.as_bytes())
    }

    /// Makes every record change so far durable: the journal synced to the
    /// disk (one fdatasync), or a snapshot where no journal is kept. Before
    /// a saved listing claims that the records reflect it ([ext]
    /// `saved_index`): a power loss must not leave the listing newer than
    /// the bases it speaks for.
    pub fn make_durable(&self, shared: &Shared) {
        let synced = {
            let st = shared.lock();
            st.journal.as_ref().map(|journal| journal.sync_data())
        };
        match synced {
            Some(Ok(())) => {}
            Some(Err(e)) => {
                log::warn!("cannot sync the META-DATA journal ({e}); writing a snapshot");
                shared.lock().unsaved = true;
                self.save_if_changed(shared);
            }
            None => self.save_if_changed(shared),
        }
    }

    /// Saves the shared state if it changed since the last save. Only one
    /// thread (the control thread) saves, so saves never interleave. The
    /// snapshot gets the next generation, and base changes made after it
    /// was rendered go to that generation's journal; once the snapshot is
    /// in place, the older journals are removed.
    ///
    /// The snapshot goes to its temp file in pieces while the lock is held
    /// (never the whole text in memory: 100 MB at a million paths), and is
    /// synced and renamed into place after.
    pub fn save_if_changed(&self, shared: &Shared) {
        if !shared.lock().unsaved {
            return;
        }
        let began = Instant::now();
        let mut new = match Replacement::begin(&self.path) {
            Ok(new) => new,
            Err(e) => {
                log::error!("cannot save {}: {e}", self.path.display());
                self.back_off();
                return;
            }
        };
        let mut written = Ok(());
        let generation = {
            // Still unsaved: only this thread saves.
            let mut st = shared.lock();
            st.unsaved = false;
            st.generation += 1;
            let mut write = |piece: &str| {
                if written.is_ok() {
                    written = new.file().write_all(piece.as_bytes());
                }
            };
            st.meta.render_in_pieces(SNAPSHOT_PIECE, &mut write);
            write(&format!("{GENERATION_PREFIX}{}\n", st.generation));
            let journal = self.journal_path(st.generation);
            st.journal_records = 0;
            st.journal = match File::create(&journal) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::error!("cannot create {}: {e}; relying on snapshots", journal.display());
                    None
                }
            };
            st.generation
        };
        let saved = written.and_then(|()| new.commit());
        let took = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_took_ns.store(took, Ordering::Relaxed);
        match saved {
            Ok(()) => {
                for (_, old) in self.journals().into_iter().filter(|(g, _)| *g < generation) {
                    let _ = fs::remove_file(old);
                }
            }
            Err(e) => {
                // The older journals stay: with the old snapshot they still
                // hold everything.
                log::error!("cannot save {}: {e}", self.path.display());
                shared.lock().unsaved = true;
                self.back_off();
            }
        }
    }

    /// After a failed snapshot (a full disk, say), the next waits
    /// [`FAILED_SNAPSHOT_PAUSE`] at least (see [`MetaFile::pause`]): the
    /// journal still keeps every change, and the log gets one line per try.
    fn back_off(&self) {
        let took = FAILED_SNAPSHOT_PAUSE / SNAPSHOT_SPACING;
        self.last_took_ns.fetch_max(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }
}

/// A fresh random client id (PROTOCOL.md section 1: "made on the client's
/// first run and kept in its META-DATA").
fn new_client_id() -> io::Result<ClientId> {
    let mut id = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_is_made_once_and_kept() {
        let root = std::env::temp_dir().join(format!("dropsync-state-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let (file, tmp) = MetaFile::prepare(&root).unwrap();
        assert!(tmp.is_dir());
        let (first, _) = file.load().unwrap();
        assert_ne!(first.client_id, [0; 16]);
        let shared = Shared::new(first.clone());
        shared.lock().set_synced("a", Content { md5: [1; 16], size: 1 }, 5);
        file.save_if_changed(&shared);
        let (again, _) = file.load().unwrap();
        assert_eq!(again.client_id, first.client_id);
        assert_eq!(again.records["a"].base, Some(Content { md5: [1; 16], size: 1 }));

        fs::write(root.join(".dropsync/metadata"), "garbage").unwrap();
        let (fresh, _) = file.load().unwrap();
        assert_ne!(fresh.client_id, first.client_id);
        assert!(fresh.records.is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    /// An empty folder of its own for a test, and its META-DATA file.
    fn fresh_folder(tag: &str) -> (PathBuf, MetaFile) {
        let root = std::env::temp_dir().join(format!("dropsync-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).unwrap();
        let (file, _) = MetaFile::prepare(&root).unwrap();
        (root, file)
    }

    /// The lines `render` writes for one record.
    fn lines(id: ClientId, name: &str, rec: ClientRecord) -> String {
        let mut one = ClientMeta::new(id);
        one.records.insert(name.to_owned(), rec);
        one.render().splitn(3, '\n').nth(2).unwrap().to_owned()
    }

    #[test]
    fn base_changes_survive_a_kill_between_saves() {
        let (root, file) = fresh_folder("journal");
        let (meta, generation) = file.load().unwrap();
        let id = meta.client_id;
        let shared = Shared::new(meta);
        file.open_journal(&shared, generation);
        let (a, b) = (Content { md5: [1; 16], size: 1 }, Content { md5: [2; 16], size: 2 });
        shared.lock().set_synced("a", a, 5);
        shared.lock().set_synced("b", b, 6);
        shared.lock().set_deleted("b");
        shared.lock().set_base("c", Some(b), 7);
        // Not journaled: a local observation is recomputed after a crash.
        shared.lock().set_local("a", Some(LocalSeen { mtime_ns: 9, content: b }));

        // kill -9 now: no save; the next start loads what is on disk.
        let (after, _) = file.load().unwrap();
        assert_eq!(after.records["a"].base, Some(a));
        assert_eq!(after.records["a"].local, Some(LocalSeen { mtime_ns: 5, content: a }));
        assert_eq!(after.records["b"], ClientRecord { base: None, base_version: 0, local: None });
        assert_eq!((after.records["c"].base, after.records["c"].base_version), (Some(b), 7));

        // A torn last line (killed mid-append) is dropped, the rest kept.
        let (_, journal) = file.journals().pop().unwrap();
        File::options().append(true).open(&journal).unwrap().write_all(b"0\t0000").unwrap();
        assert_eq!(file.load().unwrap().0.records["a"].base, Some(a));

        // A snapshot holds the journals before it, which go; a journal of an
        // older generation left by a crash before that removal is ignored.
        file.save_if_changed(&shared);
        let journals = file.journals();
        assert_eq!(journals.len(), 1, "{journals:?}");
        let stale = ClientRecord { base: Some(b), base_version: 0, local: None };
        fs::write(file.journal_path(journals[0].0 - 1), lines(id, "a", stale)).unwrap();
        assert_eq!(file.load().unwrap().0.records["a"].base, Some(a));
        // One of the current generation is replayed.
        fs::write(&journals[0].1, lines(id, "a", stale)).unwrap();
        assert_eq!(file.load().unwrap().0.records["a"].base, Some(b));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_large_table_is_written_again_only_once_its_journal_is_a_third_of_it() {
        let (root, file) = fresh_folder("journal-large");
        let (mut meta, generation) = file.load().unwrap();
        let c = Content { md5: [1; 16], size: 1 };
        for i in 0..LARGE_TABLE {
            meta.records.insert(format!("f{i}"), ClientRecord { base: Some(c), base_version: 1, local: None });
        }
        let shared = Shared::new(meta);
        file.open_journal(&shared, generation);
        assert!(!file.snapshot_wanted(&shared), "just written");
        shared.lock().set_synced("f0", c, 5);
        assert!(!file.snapshot_wanted(&shared), "one change is one journal line");
        for i in 1..LARGE_TABLE / 3 {
            shared.lock().set_synced(&format!("f{i}"), c, 5);
        }
        assert!(file.snapshot_wanted(&shared), "the journal is a third of the table");
        file.save_if_changed(&shared);
        assert!(!file.snapshot_wanted(&shared));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_restart_with_nothing_to_replay_writes_no_snapshot_and_still_journals() {
        use std::os::unix::fs::MetadataExt;
        let (root, file) = fresh_folder("journal-restart");
        let (meta, generation) = file.load().unwrap();
        let shared = Shared::new(meta);
        file.open_journal(&shared, generation);
        let (a, b) = (Content { md5: [1; 16], size: 1 }, Content { md5: [2; 16], size: 2 });
        shared.lock().set_synced("a", a, 5);
        file.save_if_changed(&shared);
        let snapshot = fs::metadata(&file.path).unwrap().ino();

        // A clean restart: the snapshot is the state, and stays as it is.
        let (meta, generation) = file.load().unwrap();
        assert_eq!(meta.records["a"].base, Some(a));
        let shared = Shared::new(meta);
        file.open_journal(&shared, generation);
        assert_eq!(fs::metadata(&file.path).unwrap().ino(), snapshot, "no snapshot written");
        // A base changed now is journaled: a kill -9 loses nothing.
        shared.lock().set_synced("b", b, 6);
        let (after, _) = file.load().unwrap();
        assert_eq!((after.records["a"].base, after.records["b"].base), (Some(a), Some(b)));
        // With that journal to fold in, the next start writes a snapshot.
        let (meta, generation) = file.load().unwrap();
        file.open_journal(&Shared::new(meta), generation);
        assert_ne!(fs::metadata(&file.path).unwrap().ino(), snapshot, "a snapshot folds the journal in");
        assert_eq!(file.load().unwrap().0.records["b"].base, Some(b));
        fs::remove_dir_all(&root).unwrap();
    }
}
