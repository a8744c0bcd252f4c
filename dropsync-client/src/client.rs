//! The client's whole life: load its state, start the watcher and signal
//! handling, then connect, run a session, and reconnect with capped
//! exponential backoff when the server goes away, until a signal (or the
//! end of `--once`).

use std::fs;

use crate::copy_source::Moves;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use dropsync_core::backoff::Backoff;
use crate::cli::Config;
use crate::connect::{self, Timing};
use dropsync_core::debounce::Debouncer;
use crate::write_watch::WriteWatch;
use dropsync_core::delete_guard::DeleteGuard;
use crate::events::Event;
use crate::ignores::{Ignores, IGNORE_FILE};
use crate::status::{self, Status};
use crate::paths::{name_for, Unsyncable, STATE_DIR};
use crate::trust::Trust;
use crate::scan::{walk_names, walk_unsorted, FileStat, Notes, Probe, Scan};
use crate::session::{End, Session};
use crate::state::{Ctx, MetaFile, Shared};
use crate::watch;

/// How long a file written to and still open must be quiet before it is
/// sent without its close: its writer may only be pausing (a copy on a
/// busy machine), and half a file sent is sent again.
pub const OPEN_QUIET: Duration = Duration::from_secs(1);

/// What the watcher saw of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A change of any other kind (created, renamed, removed, attributes).
    Changed,
    /// Its data written, by a writer that holds it open.
    Written,
    /// Closed after writing: done.
    Closed,
}

/// What outlives a session: configuration, shared state, the event channel
/// and the debounced local changes.
pub struct Core {
    /// The command line.
    pub cfg: Config,
    /// Shared with the receive thread.
    pub ctx: Arc<Ctx>,
    /// Where META-DATA is saved.
    pub meta_file: MetaFile,
    /// Reports from every other thread.
    pub events: mpsc::Receiver<Event>,
    /// Cloned into each thread that reports.
    pub tx: mpsc::Sender<Event>,
    /// Set by the signal thread.
    stop: Arc<AtomicBool>,
    /// Local changes waiting to be quiet.
    pub debouncer: Debouncer<String>,
    /// Quiet files their writer never closed, looked at before they go.
    pub write_watch: WriteWatch,
    /// Deletes held because many files went at once (issue 17); kept
    /// across sessions.
    pub delete_guard: DeleteGuard,
    /// The status last written for `client status` (`status.rs`).
    pub status: Status,
    /// Unsyncable paths already reported.
    pub notes: Notes,
    /// Renames the watcher saw, for COPY [ext] (`copy_source`).
    pub moves: Moves,
    /// Conflict copies in the folder, as counted at that many record
    /// changes (`State::changes`), for `client status`.
    pub conflicts_counted: Option<(u64, usize)>,
    /// When the next periodic rescan is due.
    pub next_rescan: Option<Instant>,
    /// What the last rescan took (before the first: an estimate from the
    /// number of paths known); the next waits [`RESCAN_DUTY`] times that.
    pub rescan_cost: Duration,
    /// This client's key and the server's pin.
    pub trust: Trust,
    /// The file watcher, maybe still setting up; a reconciliation's scan
    /// waits for it ([`watch::Starting::ready`]).
    pub watcher: watch::Starting,
    /// The walk of the folder for the next reconciliation, started when the
    /// session began ([`Core::scan_early`]).
    pub early_scan: Option<thread::JoinHandle<Scan>>,
}

/// The periodic rescan is a backstop for what the watcher missed (the
/// watcher itself asks for one when it loses events), so it may take at most
/// one part in this many of a core: a folder whose stat walk takes 1 s is
/// rescanned every 100 s at the earliest, whatever `--rescan-secs` says
/// (issue 19: a client with 1,000,000 files idles under 1 % of a core).
pub const RESCAN_DUTY: u32 = 100;

/// The estimated cost of one path in a rescan, before one has been timed
/// (a stat walk of tmpfs or a warm ext4 runs at about 1 µs a path).
const RESCAN_COST_PER_PATH: Duration = Duration::from_micros(1);

/// When the next rescan is due after one that took `cost`: `every`, or
/// longer when that would take more than 1/[`RESCAN_DUTY`] of a core.
fn rescan_period(every: Duration, cost: Duration) -> Duration {
    every.max(cost.saturating_mul(RESCAN_DUTY))
}

/// What a rescan of `paths` paths is reckoned to cost before one was
/// measured.
fn rescan_cost_of(paths: usize) -> Duration {
    RESCAN_COST_PER_PATH.saturating_mul(u32::try_from(paths).unwrap_or(u32::MAX))
}

/// Runs the client until SIGINT/SIGTERM, or until `--once` is done.
/// The error is the one line to print.
pub fn run(cfg: Config) -> Result<(), String> {
    // Signals first: a SIGTERM at any point after this is the graceful stop
    // of section 9 (exit 0), even one sent while the folder is still being
    // prepared. It used to be installed after META-DATA was loaded, and a
    // SIGTERM in between killed the client (found by dropsync-soak, seed 113).
    let (tx, events) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(tx.clone(), Arc::clone(&stop)).map_err(|e| format!("cannot handle signals: {e}"))?;
    fs::create_dir_all(&cfg.folder).map_err(|e| format!("cannot create folder {}: {e}", cfg.folder.display()))?;
    let root = cfg.folder.canonicalize().map_err(|e| format!("folder {}: {e}", cfg.folder.display()))?;
    // The watcher's first walk runs while the state is loaded (both take
    // a second or more at a million files). --once looks at the folder
    // once, at reconciliation; no watcher.
    let watcher = if cfg.once { watch::Starting::Without } else { watch::Starting::spawn(&root, tx.clone()) };
    let (meta_file, tmp_dir) =
        MetaFile::prepare(&root).map_err(|e| format!("cannot prepare {}/.dropsync: {e}", root.display()))?;
    let (meta, generation) = meta_file.load().map_err(|e| format!("cannot load META-DATA: {e}"))?;
    log::info!("syncing {} as {:?} ({} paths known)", root.display(), cfg.label, meta.records.len());
    let known = meta.records.len();
    let ctx = Arc::new(Ctx {
        root: root.clone(),
        tmp_dir,
        label: cfg.label.clone(),
        conflict_copies: cfg.conflict_copies,
        shared: Shared::new(meta),
        ignores: Ignores::load(&root),
    });
    meta_file.open_journal(&ctx.shared, generation);
    let trust = Trust::prepare(&root, cfg.server_fingerprint, cfg.trust_first_use)?;
    let debouncer = Debouncer::new(cfg.debounce);
    let delete_guard = DeleteGuard::new(cfg.delete_guard);
    let mut core =
        Core {
            cfg,
            ctx,
            meta_file,
            events,
            tx,
            stop,
            debouncer,
            write_watch: WriteWatch::default(),
            delete_guard,
            status: Status::default(),
            notes: Notes::default(),
            moves: Moves::default(),
            conflicts_counted: None,
            next_rescan: None,
            rescan_cost: rescan_cost_of(known),
            trust,
            watcher,
            early_scan: None,
        };
    let result = core.run();
    core.meta_file.save_if_changed(&core.ctx.shared);
    result
}

/// SIGINT and SIGTERM set the stop flag and wake the control thread.
fn watch_signals(tx: mpsc::Sender<Event>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            log::info!("signal {sig}: shutting down");
            stop.store(true, Ordering::SeqCst);
            if tx.send(Event::Signal).is_err() {
                return;
            }
        }
    })?;
    Ok(())
}

impl Core {
    /// Writes `status` for `client status` if it says something new; the
    /// time the folder became in sync is kept from one report to the next.
    pub fn report_status(&mut self, mut status: Status) {
        status.server = format!("{}:{}/{}", self.cfg.host, self.cfg.send_port, self.cfg.receive_port);
        status.last_in_sync = self.status.last_in_sync;
        if status.in_sync() && !self.status.in_sync() {
            status.last_in_sync = Some(SystemTime::now());
        }
        if status != self.status {
            if let Err(e) = status::write(&self.ctx.root, &status) {
                log::debug!("cannot write the status file: {e}");
            }
            self.status = status;
        }
    }

    /// True once SIGINT or SIGTERM arrived.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn run(&mut self) -> Result<(), String> {
        let timing = Timing { keepalive: self.cfg.keepalive, dead_peer: self.cfg.dead_peer, silence_ok: false };
        let server = format!("{}:{}/{}", self.cfg.host, self.cfg.send_port, self.cfg.receive_port);
        let mut backoff = Backoff::default();
        let mut number = 0;
        let mut last_refusal = String::new();
        loop {
            if self.stopping() {
                return Ok(());
            }
            number += 1;
            let id = self.ctx.shared.lock().meta.client_id;
            match connect::open(&self.cfg, id, timing, &self.stop, &self.trust) {
                Ok(conn) => {
                    log::info!("connected to {server}{}", if conn.legacy { " (legacy session, no HELLO)" } else { "" });
                    let timing = Timing { silence_ok: conn.legacy, ..timing };
                    let (end, reconciled) = Session::run(self, conn, number, timing);
                    self.meta_file.save_if_changed(&self.ctx.shared);
                    match end {
                        End::Done { server_state_known: true } => {
                            log::info!("everything is in sync; exiting (--once)");
                            return Ok(());
                        }
                        End::Done { server_state_known: false } => {
                            log::warn!(
                                "the server's state was unknown (it sent no META-DATA): local changes were pushed, \
                                 nothing was fetched; exiting (--once)"
                            );
                            return Ok(());
                        }
                        End::Stopped => return Ok(()),
                        End::Failed(why) => return Err(why),
                        // After the usual pause: a server that sent such a
                        // delta again would not be asked in a tight loop.
                        End::Again(reason) => log::info!("{reason}"),
                        End::Lost(reason) if self.cfg.once => {
                            return Err(format!("connection to the server at {server} lost: {reason}"));
                        }
                        End::Lost(reason) => {
                            log::warn!("disconnected: {reason}; reconnecting");
                            self.report_status(Status { connected: false, ..self.status.clone() });
                            if reconciled {
                                backoff.reset();
                            }
                        }
                    }
                }
                Err(_) if self.stopping() => return Ok(()),
                Err(e) if self.cfg.once => return Err(format!("cannot connect to the server at {server}: {e}")),
                // Refused trust (a wrong server key, this key not enrolled)
                // is said whenever it changes: it needs the user.
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied && last_refusal != e.to_string() => {
                    last_refusal = e.to_string();
                    log::error!("{server}: {e}; will keep trying");
                }
                Err(e) if backoff.attempts() == 0 => log::warn!("cannot connect to {server}: {e}; will keep trying"),
                Err(e) => log::debug!("cannot connect to {server}: {e}"),
            }
            let delay = backoff.next_delay();
            self.pause(Instant::now() + delay);
        }
    }

    /// Waits until `until` between connection attempts, still noting local
    /// changes, and returns early on a signal.
    fn pause(&mut self, until: Instant) {
        // A walk made before the first session is not kept for a later one:
        // the events that follow it are not all kept meanwhile.
        self.forget_early_scan();
        while !self.stopping() {
            let Some(wait) = until.checked_duration_since(Instant::now()) else { return };
            match self.events.recv_timeout(wait) {
                Ok(Event::Changed(paths)) => self.note_changed(paths, Seen::Changed),
                Ok(Event::Written(paths)) => self.note_changed(paths, Seen::Written),
                Ok(Event::Closed(paths)) => self.note_changed(paths, Seen::Closed),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }

    /// Why the synced folder can no longer be trusted, if it cannot: its
    /// state folder is gone (the folder was deleted, moved or unmounted).
    /// Checked before any work is started, so that such a folder is never
    /// taken for "every file deleted".
    pub fn folder_gone(&self) -> Option<String> {
        let state = self.ctx.root.join(STATE_DIR);
        (!state.is_dir()).then(|| format!("{} disappeared; stopping", state.display()))
    }

    /// Debounces the paths the watcher reported.
    pub fn note_changed(&mut self, paths: Vec<PathBuf>, seen: Seen) {
        let now = Instant::now();
        for p in paths {
            match name_for(&self.ctx.root, &p) {
                Ok(name) if name == IGNORE_FILE => {
                    self.ctx.ignores.reload(&self.ctx.root);
                    // A folder made while it was ignored was not watched
                    // (its events were dropped below): watched now.
                    let root = self.ctx.root.clone();
                    self.watcher.watch_tree(&root, &root);
                    self.debouncer.touch(name, now);
                }
                Ok(name) if self.ctx.ignores.is_ignored(&name) => {}
                Ok(name) => match seen {
                    // A file closed after writing is done: no quiet time
                    // to wait.
                    Seen::Closed => self.debouncer.due_now(name, now),
                    Seen::Written => self.debouncer.touch_open(name, now, OPEN_QUIET),
                    Seen::Changed => self.debouncer.touch(name, now),
                },
                Err(Unsyncable::BadName(why)) => self.notes.once(&p, &format!("name not allowed: {why}")),
                // Renamed to NFC here; the watcher reports the new name.
                Err(Unsyncable::NotNfc) => {
                    if let Err(e) = crate::names::normalize_on_disk(&self.ctx.root, &p) {
                        self.notes.once(&p, &format!("name not in NFC, and cannot be renamed to it: {e}"));
                    }
                }
                Err(Unsyncable::Reserved | Unsyncable::Outside) => {}
            }
        }
    }

    /// Puts the periodic rescan off while `queued` paths wait to be synced:
    /// its cost is then reckoned from the paths known and queued (at the
    /// start of an initial sync, few have a record yet), so the first one
    /// after the burst is as far off as a measured one would put it.
    pub fn postpone_rescan(&mut self, queued: usize) {
        let known = self.ctx.shared.lock().meta.records.len().saturating_add(queued);
        self.rescan_cost = self.rescan_cost.max(rescan_cost_of(known));
        self.schedule_rescan();
    }

    /// Schedules the next periodic rescan.
    pub fn schedule_rescan(&mut self) {
        self.next_rescan = self.cfg.rescan.map(|every| Instant::now() + rescan_period(every, self.rescan_cost));
    }

    /// Starts the walk of the folder for a session's reconciliation while
    /// the server's META-DATA is on its way (at a million files both take
    /// about a second), unless one is under way already. Only with a
    /// watcher, which reports what changes after the walk saw it; `--once`
    /// walks when it reconciles.
    /// The first session takes the walk that set the watcher up, made while
    /// the state loaded.
    pub fn scan_early(&mut self) {
        self.watcher.ready();
        if self.early_scan.is_some() || self.watcher.has_walk() || !self.watcher.watching() {
            return;
        }
        match Scan::spawn(&self.ctx.root) {
            Ok(walk) => self.early_scan = Some(walk),
            Err(e) => log::debug!("cannot start the walk early ({e}); walking at reconciliation"),
        }
    }

    /// Forgets the walk started early, waiting for it to end (one walk at
    /// most, so that walks do not pile up): at the end of a session (the
    /// next one walks anew, however long the server was away), and when the
    /// watcher lost events before the reconciliation (what changed then may
    /// be after the walk's look at it, and unreported).
    pub fn forget_early_scan(&mut self) {
        self.watcher.ready();
        drop(self.watcher.take_walk());
        if let Some(walk) = self.early_scan.take() {
            let _ = walk.join();
        }
    }

    /// The walk of the folder for a reconciliation: the one started early,
    /// or one made now.
    pub fn scan(&mut self) -> Scan {
        self.watcher.ready();
        if let Some(walked) = self.watcher.take_walk() {
            return walked;
        }
        match self.early_scan.take().map(thread::JoinHandle::join) {
            Some(Ok(scan)) => scan,
            Some(Err(p)) => std::panic::resume_unwind(p),
            None => Scan::now(&self.ctx.root),
        }
    }

    /// Full rescan (periodic, or after the watcher lost events): every file
    /// whose stat differs from the one recorded, and every recorded file
    /// that is gone, is queued to be synced.
    pub fn rescan(&mut self) {
        let began = Instant::now();
        let files = walk_unsorted(&self.ctx.root, &self.ctx.root, &mut self.notes);
        let now = Instant::now();
        let st = self.ctx.shared.lock();
        let mut changed = Vec::new();
        for (name, probe) in &files {
            let recorded = st.meta.records.get(name).and_then(|r| r.local);
            let same = recorded.is_some_and(|l| Probe::File(FileStat::of_seen(&l)) == *probe);
            if !same {
                changed.push(name.clone());
            }
        }
        let present: std::collections::HashSet<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        for (name, rec) in &st.meta.records {
            if rec.local.is_some() && !present.contains(name.as_str()) {
                changed.push(name.clone());
            }
        }
        drop(st);
        self.rescan_cost = began.elapsed();
        self.schedule_rescan();
        if !changed.is_empty() {
            log::debug!("rescan: {} changed paths", changed.len());
        }
        for name in changed {
            self.debouncer.touch_due(name, now);
        }
    }

    /// Queues every file under the folder `dir` (one that appeared).
    pub fn queue_tree(&mut self, dir: &Path) {
        // Watched first, so that what is written there after the listing
        // is seen.
        self.watcher.watch_tree(&self.ctx.root, dir);
        let now = Instant::now();
        for name in walk_names(&self.ctx.root, dir, &mut self.notes) {
            self.debouncer.touch_due(name, now);
        }
    }

    /// Queues every recorded local file under `name/` (a folder that went
    /// away, or was moved out of the synced folder in one rename).
    pub fn queue_records_under(&mut self, name: &str) {
        let prefix = format!("{name}/");
        let now = Instant::now();
        let under: Vec<String> = self
            .ctx
            .shared
            .lock()
            .meta
            .records
            .iter()
            .filter(|(n, r)| r.local.is_some() && n.starts_with(&prefix))
            .map(|(n, _)| n.clone())
            .collect();
        for n in under {
            self.debouncer.touch_due(n, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rescan_takes_at_most_one_percent_of_a_core() {
        let every = Duration::from_secs(5);
        assert_eq!(rescan_period(every, Duration::from_millis(10)), every);
        assert_eq!(rescan_period(every, Duration::from_millis(1500)), Duration::from_secs(150));
    }
}
