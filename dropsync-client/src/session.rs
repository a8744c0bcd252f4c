//! One session with the server, from HELLO to disconnection, driven by the
//! control thread.
//!
//! Threads of a session: the receive thread ([`Incoming`]) owns the receive
//! connection; the send thread (`send_thread.rs`) owns the send
//! connection's writing half and everything sent on it; the reply thread
//! (`replies.rs`) reads that connection's replies and hands them to the
//! send thread; the control thread (this file) looks at files and starts
//! every operation, deciding through core's [`SyncPolicy`]. They talk
//! through channels and share only the per-path records
//! (`state::Shared`). The control loop is: start due work → wait for the
//! next event or deadline (debounce, rescan, META-DATA save) → handle it.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use dropsync_io::conn::Conn;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use dropsync_core::liveness::Liveness;
use dropsync_core::meta_client::LocalSeen;
use dropsync_core::reconcile::Content;
use dropsync_core::jobs::Job;
use dropsync_core::sender::Outcome;
use dropsync_core::sync_policy::{Again, Ending, Judgement, Local as LocalState, Next, SyncPolicy};
use dropsync_proto::index::{ack_name, more_name, Listing, INDEX_NAME};
use dropsync_proto::metadata::{Document, Entry};
use dropsync_proto::name::COPY_OFFER_NAME;
use dropsync_proto::{Digest, StatusCode, ZERO_DIGEST};

use crate::client::{Core, Seen};
use crate::connect::{Connected, Timing};
use crate::events::{Event, SessionEvent};
use crate::held::{self, Answer};
use crate::copy_source;
use crate::paths::name_for;
use crate::status::Status;
use crate::incoming::Incoming;
use crate::initial_sync;
use crate::saved_index;
use crate::outgoing::{Done, Outgoing};
use crate::send_thread::{self, SendHandle};
use crate::replies;
use crate::names;
use crate::paths::{self, checked_path, local_path};
use crate::scan::{open_unhashed, probe, read_local, FileStat, Local, Probe};

/// How long a stopping client waits for the replies to its ABORTs (and to
/// DELETEs and REQUESTs already sent) before it closes the connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// META-DATA saves are coalesced: at most one per this interval. Base
/// changes are journaled as they happen (`state.rs`), so a snapshot only
/// bounds the journal and keeps local stats (lost ones are hashed again):
/// rendering the whole table more often only costs time, which a first
/// upload of many files spent at every 200 ms it used to save.
const SAVE_DELAY: Duration = Duration::from_secs(1);

/// The periodic rescan waits while more paths than this are queued to be
/// synced (a watcher that lost events still has one at once).
const RESCAN_WHEN_BUSY: usize = 1_000;

/// Deletes wait until none has come for this long, then go out (or are
/// held) together: see `Session::send_deletes`.
const DELETE_QUIET: Duration = Duration::from_millis(300);

/// How often the status for `client status` is worked out.
const STATUS_EVERY: Duration = Duration::from_millis(250);

/// How often the control loop looks for the user's answer to held deletes
/// (`held.rs`).
const ANSWER_CHECK: Duration = Duration::from_millis(500);

/// Most events the control loop handles in one turn (see `Session::drive`).
const EVENT_BATCH: usize = 256;

/// Longest the control loop sleeps without looking at the clock.
const MAX_WAIT: Duration = Duration::from_secs(1);


/// Section 1: "a client that has no META-DATA within 5 s of pairing goes on
/// without it".
const METADATA_WAIT: Duration = Duration::from_secs(5);

/// [ext] Least time between two listings of what changed since the last
/// one (`Session::ask_for_more`): each costs the server a pass over its
/// table (0.6 s of a core at a million paths, B8).
const MORE_SPACING: Duration = Duration::from_secs(30);





/// How a session ended.
#[derive(Debug)]
pub enum End {
    /// `--once`: everything pending in both directions is done. Without
    /// the server's META-DATA (`server_state_known: false`) that means only
    /// that local changes were pushed.
    Done {
        /// False when the server never sent its META-DATA.
        server_state_known: bool,
    },
    /// SIGINT or SIGTERM: transfers aborted, ready to exit.
    Stopped,
    /// The connection was lost or broken; the reason, for the log.
    Lost(String),
    /// [ext] The session ends to begin again at once, `--once` too: the
    /// server sent a delta this client cannot read, and is to send every
    /// path to the next session.
    Again(String),
    /// The client cannot go on (its folder disappeared); the reason.
    Failed(String),
}

/// One session's state, owned by the control thread.
pub struct Session<'a> {
    core: &'a mut Core,
    number: u64,
    out: SendHandle,
    send_sock: Conn,
    recv_sock: Conn,
    /// The reply and receive threads.
    threads: Vec<JoinHandle<()>>,
    /// The send thread, stopped last (see `teardown`).
    send_thread: Option<JoinHandle<()>>,
    /// Lets the receive thread go on once META-DATA is reconciled.
    go: Option<mpsc::Sender<()>>,
    /// True once the server's META-DATA has been reconciled, or the session
    /// went on without it.
    reconciled: bool,
    /// When the session goes on without META-DATA if none has come.
    metadata_deadline: Instant,
    /// False while the session runs without the server's META-DATA.
    server_state_known: bool,
    /// What to send next and what each reply means (section 7), in core.
    policy: SyncPolicy,
    /// DELETEs waiting to be judged together by the delete guard, with the
    /// MD5 of the version each path held, and when the last one came.
    pending_deletes: Vec<(String, Digest)>,
    last_delete: Instant,
    /// The name renamed away whose judgement is being made for the COPY
    /// of its new name, and the delete that judgement gave (see
    /// `delete_renamed_away`).
    renamed_away: Option<(String, Option<Digest>)>,
    /// When the user's answer to held deletes was last looked for.
    answer_checked: Instant,
    /// When the status for `client status` was last worked out.
    status_checked: Instant,
    /// A loop turn came before [`STATUS_EVERY`] was over: the status is
    /// worked out again once it is (a folder that became in sync says so
    /// then, not at the next event or after [`MAX_WAIT`]).
    status_due: bool,
    stop_deadline: Option<Instant>,
    last_save: Instant,
    /// COPY [ext]: the offer went out (once reconciled).
    copy_offered: bool,
    /// COPY [ext]: the server took this session's offer.
    copy_ok: bool,
    /// Paths whose COPY the server refused (0x0020): uploaded from then on.
    no_copy: HashSet<String>,
    /// [ext] The server sent the changes since a listing this client cannot
    /// read them against; it was asked for every path next time, and the
    /// session ends at its answer (`saved_index`).
    awaiting_everything: bool,
    /// [ext] The listing this session acknowledged, the lines where the
    /// server then differed, and the count of state changes at that moment.
    acked: Option<(Listing, Vec<Entry>, u64)>,
    /// [ext] When the next listing of what changed since may be asked for,
    /// once the folder is in sync; `None` while one is asked for.
    next_more: Option<Instant>,
    /// [ext] The count of state changes last seen, and since when it is.
    quiet_since: (u64, Instant),
}

impl<'a> Session<'a> {
    /// Runs a session on freshly opened connections until it ends; the
    /// second value is true when it got as far as reconciling.
    pub fn run(core: &'a mut Core, conn: Connected, number: u64, timing: Timing) -> (End, bool) {
        let Connected { send, send_rx, recv, recv_rx, .. } = conn;
        let (go_tx, go_rx) = mpsc::channel();
        let clones = send.try_clone().and_then(|s| Ok((s, recv.try_clone()?)));
        let (send_sock, recv_sock) = match clones {
            Ok(c) => c,
            Err(e) => return (End::Lost(format!("socket: {e}")), false),
        };
        let link = Liveness::new(Instant::now(), timing.timers(), timing.silence());
        let outgoing = Outgoing::new(send, core.cfg.in_flight, core.cfg.chunk_size, link);
        let mut threads = Vec::new();
        let mut sender = None;
        let ctx = &core.ctx;
        let spawned = send_thread::spawn(outgoing, Arc::clone(ctx), core.tx.clone(), number)
            .and_then(|(out, t)| {
                sender = Some(t);
                let replies = replies::spawn(send_rx, out.commands(), core.tx.clone(), number)?;
                threads.push(replies);
                let incoming = Incoming::spawn(Arc::clone(ctx), recv_rx, recv, core.tx.clone(), number, timing, go_rx)?;
                threads.push(incoming);
                Ok(out)
            });
        let out = match spawned {
            Ok(out) => out,
            Err(e) => {
                Connected::shutdown(&send_sock, &recv_sock);
                return (End::Lost(format!("cannot start a thread: {e}")), false);
            }
        };
        core.scan_early();
        let once = core.cfg.once;
        let offer_copy = core.cfg.copy;
        let mut s = Session {
            core,
            number,
            out,
            send_sock,
            recv_sock,
            threads,
            send_thread: sender,
            go: Some(go_tx),
            reconciled: false,
            copy_offered: !offer_copy,
            copy_ok: false,
            no_copy: HashSet::new(),
            awaiting_everything: false,
            acked: None,
            next_more: Some(Instant::now()),
            quiet_since: (0, Instant::now()),
            metadata_deadline: Instant::now() + METADATA_WAIT,
            server_state_known: true,
            policy: SyncPolicy::new(once),
            pending_deletes: Vec::new(),
            last_delete: Instant::now(),
            renamed_away: None,
            answer_checked: Instant::now(),
            status_checked: Instant::now(),
            status_due: true,
            stop_deadline: None,
            last_save: Instant::now(),
        };
        let end = s.drive();
        s.teardown();
        (end, s.reconciled)
    }

    fn drive(&mut self) -> End {
        loop {
            if self.core.stopping() && self.stop_deadline.is_none() {
                self.begin_stop();
            }
            if let Some(why) = self.core.folder_gone() {
                // Never turn a vanished (or unmounted) folder into deletes.
                return End::Failed(why);
            }
            if !self.reconciled
                && !self.awaiting_everything
                && self.stop_deadline.is_none()
                && Instant::now() >= self.metadata_deadline
            {
                self.go_on_without_metadata();
            }
            if self.reconciled && self.stop_deadline.is_none() && Instant::now() >= self.answer_checked + ANSWER_CHECK {
                self.answer_checked = Instant::now();
                self.answer_held_deletes();
            }
            self.make_progress();
            self.report_status();
            let now = Instant::now();
            if let Some(deadline) = self.stop_deadline {
                if self.out.is_empty() || now >= deadline {
                    return End::Stopped;
                }
            }
            if self.core.cfg.once && self.all_done() {
                return End::Done { server_state_known: self.server_state_known };
            }
            if now >= self.next_save() && self.core.meta_file.snapshot_wanted(&self.core.ctx.shared) {
                self.core.meta_file.save_if_changed(&self.core.ctx.shared);
                self.last_save = now;
            }
            if self.reconciled && self.core.next_rescan.is_some_and(|at| now >= at) {
                let queued = self.policy.pending();
                if queued > RESCAN_WHEN_BUSY {
                    // What it would find is mostly queued already: an
                    // initial sync of a million files held a second table
                    // of them in the debouncer, and the state's lock for
                    // the walk's compare.
                    self.core.postpone_rescan(queued);
                } else {
                    self.core.rescan();
                }
            }
            let wait = self.next_wakeup().saturating_duration_since(Instant::now());
            match self.core.events.recv_timeout(wait) {
                Ok(ev) => {
                    if let Some(end) = self.on_event(ev) {
                        return end;
                    }
                    // Every event already waiting is handled before the
                    // work above runs again: the uploads that a burst of
                    // replies ended are followed by new ones together (one
                    // gathered write), not one loop turn and one write each.
                    for ev in self.core.events.try_iter().take(EVENT_BATCH).collect::<Vec<_>>() {
                        if let Some(end) = self.on_event(ev) {
                            return end;
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return End::Lost("event channel closed".into()),
            }
        }
    }

    /// The earliest time the loop has something to do without an event.
    fn next_wakeup(&self) -> Instant {
        let now = Instant::now();
        let mut at = now + MAX_WAIT;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = at.min(t);
            }
        };
        if self.reconciled && self.stop_deadline.is_none() {
            consider(self.core.debouncer.next_due());
            consider(self.core.next_rescan);
        }
        if !self.reconciled {
            consider(Some(self.metadata_deadline));
        }
        if !self.pending_deletes.is_empty() {
            consider(Some(self.last_delete + DELETE_QUIET));
        }
        // A retry waits for room on the connection, as jobs do.
        if self.reconciled && self.out.len() < self.core.cfg.in_flight {
            consider(self.policy.next_retry());
        }
        consider(self.stop_deadline);
        if self.status_due {
            consider(Some(self.status_checked + STATUS_EVERY));
        }
        if self.core.meta_file.snapshot_wanted(&self.core.ctx.shared) {
            consider(Some(self.next_save()));
        }
        at.max(now)
    }

    /// Starts due work (the send thread sends it).
    fn make_progress(&mut self) {
        if self.reconciled {
            self.ask_for_more();
        }
        if self.reconciled && !self.copy_offered && self.stop_deadline.is_none() {
            // [ext] A REQUEST of a reserved name, to a server whose META-DATA
            // listed `copy`: one that knows no COPY would answer 0x0100.
            self.copy_offered = true;
            self.out.add_request(COPY_OFFER_NAME.to_owned(), ZERO_DIGEST);
        }
        if self.reconciled && self.stop_deadline.is_none() {
            self.start_jobs();
            self.send_deletes();
        }
    }

    /// [ext] Saves that the state here reflects `listing`, with the server's
    /// lines where it differs from the bases (`differing`), then tells the
    /// server, which sends the next session only what changed since. With
    /// too many differing paths to be worth keeping, nothing is saved and
    /// the next session is sent every path.
    fn acknowledge(&mut self, listing: &Listing, differing: &[Entry]) {
        let root = &self.core.ctx.root;
        let saved = if differing.len() > saved_index::MAX_DIFFERING {
            log::debug!("{} paths differ from the server's listing: not saved", differing.len());
            Ok(false)
        } else {
            // The records first: the listing speaks for them.
            self.core.meta_file.make_durable(&self.core.ctx.shared);
            saved_index::save(root, listing, differing).map(|()| true)
        };
        match saved {
            Ok(true) => {
                self.out.add_request(ack_name(listing), ZERO_DIGEST);
                let changes = self.core.ctx.shared.lock().changes;
                self.acked = Some((listing.full(), differing.to_vec(), changes));
            }
            Ok(false) | Err(_) => {
                if let Err(e) = saved {
                    log::warn!("cannot save the server's listing ({e}); it will send every path next time");
                }
                // The server forgets an older acknowledgement too: a delta
                // since it could not be read against nothing.
                saved_index::remove(root);
                self.out.add_request(INDEX_NAME.to_owned(), ZERO_DIGEST);
            }
        }
    }

    /// [ext] Asks for what changed since the acknowledged listing, when the
    /// folder has been in sync, nothing changing, for `--checkpoint-secs`,
    /// and its state changed since that listing (uploads, deliveries): the
    /// next session is then sent only what changed after this moment.
    fn ask_for_more(&mut self) {
        let (Some((listing, _, acked_changes)), Some(quiet)) = (&self.acked, self.core.cfg.checkpoint) else { return };
        let now = Instant::now();
        let changes = self.core.ctx.shared.lock().changes;
        if changes != self.quiet_since.0 {
            self.quiet_since = (changes, now);
        }
        let due = self.next_more.is_some_and(|at| now >= at) && now >= self.quiet_since.1 + quiet;
        if !due || self.stop_deadline.is_some() || *acked_changes == changes || !self.all_done() {
            return;
        }
        self.next_more = None;
        self.out.add_request(more_name(listing), ZERO_DIGEST);
    }

    /// [ext] The listing asked for by [`ask_for_more`](Self::ask_for_more):
    /// what changed since the acknowledged one, but for what this session
    /// received. Where the server now differs from the bases is saved, and
    /// the listing acknowledged; no walk of the folder is needed, for the
    /// session has kept up with it.
    fn on_more(&mut self, doc: Document) {
        self.next_more = Some(Instant::now() + MORE_SPACING);
        let (Some((acked, differing, _)), Some(listing)) = (self.acked.take(), doc.listing) else {
            return;
        };
        if listing.store != acked.store || listing.since != Some(acked.upto) {
            log::warn!("the server sent a listing since {:?}, not since {}; ignored", listing.since, acked.upto);
            self.acked = Some((acked, differing, 0));
            return;
        }
        let mut entries = differing;
        entries.extend(doc.entries);
        let merged = Document { entries, ..doc };
        let differing = initial_sync::differing(&self.core.ctx, &initial_sync::server_side(&merged));
        self.acknowledge(&listing, &differing);
    }

    /// [ext] The server sent the changes since a listing that is not the one
    /// saved here (a copy of this folder, or one restored from a backup,
    /// with the same client id): asks it for every path next time, and ends
    /// the session at its answer.
    fn ask_for_everything(&mut self) {
        log::warn!("the server sent only what changed since a listing this client does not have; reconnecting for all of it");
        saved_index::remove(&self.core.ctx.root);
        self.awaiting_everything = true;
        self.out.add_request(INDEX_NAME.to_owned(), ZERO_DIGEST);
    }

    /// `--once`: nothing queued, in flight, awaited or being received.
    fn all_done(&self) -> bool {
        let sending = !self.out.is_empty();
        self.reconciled
            && !sending
            && self.policy.is_idle()
            && self.pending_deletes.is_empty()
            && self.core.debouncer.is_empty()
            && self.core.ctx.shared.lock().incoming.is_empty()
    }

    fn on_event(&mut self, ev: Event) -> Option<End> {
        match ev {
            Event::Moved { from, to } => {
                if let (Ok(from), Ok(to)) = (name_for(&self.core.ctx.root, &from), name_for(&self.core.ctx.root, &to)) {
                    let st = self.core.ctx.shared.lock();
                    self.core.moves.note(&st.meta, &from, &to, Instant::now());
                }
            }
            Event::Changed(paths) => self.core.note_changed(paths, Seen::Changed),
            Event::Written(paths) => self.core.note_changed(paths, Seen::Written),
            Event::Closed(paths) => self.core.note_changed(paths, Seen::Closed),
            Event::RescanNeeded => {
                if self.reconciled {
                    self.core.rescan();
                } else {
                    self.core.forget_early_scan();
                }
            }
            Event::Signal => {}
            Event::Session { session, what } if session == self.number => return self.on_session_event(what),
            Event::Session { .. } => {}
        }
        None
    }

    fn on_session_event(&mut self, what: SessionEvent) -> Option<End> {
        match what {
            // [ext] The listing asked for by `ask_for_more` (a delta that
            // comes late, after the session went on without META-DATA, is
            // reconciled with below, as any late META-DATA).
            SessionEvent::ServerMeta(doc)
                if self.reconciled && self.next_more.is_none() && doc.listing.is_some_and(|l| l.since.is_some()) =>
            {
                self.on_more(doc);
                if let Some(go) = &self.go {
                    let _ = go.send(());
                }
            }
            SessionEvent::ServerMeta(doc) => {
                // [ext] The changes since a listing are read against the one
                // saved here; if they cannot be, every path is asked for.
                let doc = if doc.listing.is_some_and(|l| l.since.is_some()) {
                    match saved_index::with_saved(&self.core.ctx.root, doc) {
                        Some(doc) => doc,
                        None => {
                            self.ask_for_everything();
                            return None;
                        }
                    }
                } else {
                    doc
                };
                // [ext] COPY is offered only to a server that lists it.
                if !doc.extensions.iter().any(|e| e == "copy") {
                    self.copy_offered = true;
                }
                let scan = self.core.scan();
                let plan = initial_sync::run(&self.core.ctx, &mut self.core.notes, &mut self.core.debouncer, &doc, scan);
                for name in plan.requests {
                    self.policy.request(name);
                }
                for name in plan.syncs {
                    self.policy.sync(name);
                }
                if let Some(listing) = doc.listing {
                    self.acknowledge(&listing, &plan.differing);
                }
                // The debounced changes are covered by the scan just made,
                // or wait in the debouncer for their quiet time.
                if !self.server_state_known {
                    log::info!("the server's META-DATA came late; reconciled with it now");
                }
                self.reconciled = true;
                self.server_state_known = true;
                self.core.schedule_rescan();
                if let Some(go) = &self.go {
                    let _ = go.send(());
                }
            }
            SessionEvent::Done(done) => {
                self.out.ended(&done);
                if self.awaiting_everything && matches!(&done, Done::Request { name, .. } if name == INDEX_NAME) {
                    return Some(End::Again("reconnecting to be sent the server's whole META-DATA".into()));
                }
                self.on_done(done);
            }
            SessionEvent::Delivered { name, started } => {
                // The server's version (or its delete) settles a held delete.
                self.core.delete_guard.settled(&name);
                self.policy.delivered(&name, started);
            }
            SessionEvent::ConflictCopy(name) => self.policy.sync(name),
            SessionEvent::Written(name) => self.policy.incoming_written(&name),
            SessionEvent::RefusedWhileSending(name) => {
                // Asked for once our change has its reply; if it has had it
                // already (its end is on its way here), at once.
                if self.core.ctx.shared.lock().outgoing.contains(&name) {
                    self.policy.refused_while_sending(&name);
                } else {
                    self.policy.request(name);
                }
            }
            SessionEvent::Unwritable(name) => match self.policy.incoming_refused(&name, Instant::now()) {
                Some(at) => log::info!(
                    "could not write {name} here; asking the server for it again in {:?}",
                    at.saturating_duration_since(Instant::now())
                ),
                None => log::warn!("could not write {name} here; giving up on it for this run"),
            },
            SessionEvent::Closed { reason } => return Some(End::Lost(reason)),
        }
        None
    }

    /// Section 1: no META-DATA within [`METADATA_WAIT`] of pairing (a server
    /// written from the assignment alone may never send it). The server's
    /// state is unknown, so nothing is requested and nothing deleted here:
    /// what changed since the base, and what the base never had, is sent.
    /// Should the META-DATA still come, the session reconciles with it then.
    fn go_on_without_metadata(&mut self) {
        log::warn!(
            "no META-DATA from the server within {METADATA_WAIT:?}: its state is unknown; \
             sending what changed here since the last sync, requesting nothing"
        );
        // No `# ext` line to go by: no COPY offer.
        self.copy_offered = true;
        let scan = self.core.scan();
        let plan = initial_sync::run_without_server(&self.core.ctx, &mut self.core.notes, &mut self.core.debouncer, scan);
        for name in plan.syncs {
            self.policy.sync(name);
        }
        self.reconciled = true;
        self.server_state_known = false;
        self.core.schedule_rescan();
    }

    /// Moves due debounced paths to the job queue, and starts jobs while
    /// the connection has room.
    fn start_jobs(&mut self) {
        let now = Instant::now();
        for (name, open) in self.core.debouncer.take_due_marked(now) {
            // Quiet, but never closed: sent once a second look finds it
            // unchanged (its writer may be inside one long write).
            if !open {
                self.core.write_watch.forget(&name);
            } else if self.core.write_watch.still_written(&name, &local_path(&self.core.ctx.root, &name), now) {
                self.core.debouncer.touch_open(name, now, crate::write_watch::RECHECK);
                continue;
            }
            self.policy.sync(name);
        }
        let in_flight = self.core.cfg.in_flight;
        while self.out.len() < in_flight {
            let large_slot_free = self.large_slot_free();
            match self.policy.next_job(now, large_slot_free) {
                Some(Job::Request(name)) => {
                    let held = self.core.ctx.shared.lock().record(&name).local.map_or(ZERO_DIGEST, |l| l.content.md5);
                    log::debug!("requesting {name}");
                    self.out.add_request(name, held);
                }
                Some(Job::Sync(name)) => self.sync_path(name),
                None => break,
            }
        }
    }

    /// Once no delete has come for [`DELETE_QUIET`], the delete guard
    /// judges the deletes waiting together: they go out, or, when many
    /// files went at once, they are held (issue 17). Waiting gathers an
    /// `rm -rf` of many files, which the watcher reports over a while, into
    /// one burst. A path whose file came back meanwhile is looked at again
    /// (a folder there now does not bring the file back: it replaced it).
    fn send_deletes(&mut self) {
        if self.pending_deletes.is_empty() || Instant::now() < self.last_delete + DELETE_QUIET {
            return;
        }
        // A path judged twice while waiting (a rescan, say) is one delete.
        let pending: BTreeMap<String, Digest> = std::mem::take(&mut self.pending_deletes).into_iter().collect();
        let (gone, back): (BTreeMap<_, _>, BTreeMap<_, _>) = pending
            .into_iter()
            .partition(|(name, _)| !matches!(probe(&local_path(&self.core.ctx.root, name)), Ok(Probe::File(_))));
        for (name, _) in back {
            self.policy.sync(name);
        }
        if gone.is_empty() {
            return;
        }
        let files = self.core.ctx.shared.lock().meta.records.values().filter(|r| r.base.is_some()).count();
        let names: Vec<String> = gone.keys().cloned().collect();
        let burst = self.core.delete_guard.judge(names, files, Instant::now());
        for name in burst.send {
            let held = gone.get(&name).copied().unwrap_or(ZERO_DIGEST);
            self.send_delete(name, held);
        }
        if burst.tripped {
            let folder = self.core.cfg.folder.display();
            log::warn!(
                "holding {} deletes: that many of the {files} files in sync here went at once, so they are not deleted on \
                 the server. To delete them everywhere: `client confirm-deletes {folder}`. To bring them back from the \
                 server: `client restore-deletes {folder}`.",
                burst.held.len()
            );
        } else if !burst.held.is_empty() {
            log::warn!("holding {} more deletes ({} held in all)", burst.held.len(), self.core.delete_guard.held().len());
        }
    }

    /// When the next snapshot of the META-DATA file may be written (once
    /// wanted: `MetaFile::snapshot_wanted`).
    fn next_save(&self) -> Instant {
        self.last_save + SAVE_DELAY.max(self.core.meta_file.pause())
    }

    /// Sends the DELETE of `name`, whose last version in common held MD5
    /// `held`.
    fn send_delete(&mut self, name: String, held: Digest) {
        self.core.ctx.shared.lock().outgoing.insert(name.clone());
        log::debug!("deleting {name} on the server");
        self.out.add_delete(name, held);
    }

    /// The DELETE of `from`, which the watcher saw renamed to a name about
    /// to go out as a COPY of it, when `from` is gone: judged now (or taken
    /// from those waiting for the delete guard). It is the other half of a
    /// rename, no content lost, so it skips the guard and its quiet time
    /// and goes out in the same write as the COPY: the server commits both
    /// together and sends them together, and a receiver renames its file
    /// instead of copying it (issue 19's B7). `None`: `from` is not gone,
    /// or not judged deleted; it then goes its usual way.
    fn delete_renamed_away(&mut self, from: &str) -> Option<Digest> {
        if let Some(i) = self.pending_deletes.iter().position(|(n, _)| n == from) {
            if matches!(probe(&local_path(&self.core.ctx.root, from)), Ok(Probe::File(_))) {
                // A file there again: `send_deletes` looks at it anew.
                return None;
            }
            let (name, held) = self.pending_deletes.swap_remove(i);
            self.core.ctx.shared.lock().outgoing.insert(name);
            return Some(held);
        }
        if self.renamed_away.is_some() {
            // One rename at a time: a chain of them goes the usual way.
            return None;
        }
        self.renamed_away = Some((from.to_owned(), None));
        self.sync_path(from.to_owned());
        self.renamed_away.take().and_then(|(_, held)| held)
    }

    /// Works out the folder's status for `client status` (at most every
    /// [`STATUS_EVERY`]); the file is written only when it changes.
    fn report_status(&mut self) {
        let now = Instant::now();
        if now < self.status_checked + STATUS_EVERY {
            self.status_due = true;
            return;
        }
        self.status_checked = now;
        self.status_due = false;
        let (downloads, conflicts) = {
            let st = self.core.ctx.shared.lock();
            // Counted again only when a record changed (`State::changes`).
            let conflicts = match self.core.conflicts_counted {
                Some((at, n)) if at == st.changes => n,
                _ => {
                    let n = st
                        .meta
                        .records
                        .iter()
                        .filter(|(n, r)| r.local.is_some() && n.contains("(conflicted copy "))
                        .count();
                    self.core.conflicts_counted = Some((st.changes, n));
                    n
                }
            };
            (st.incoming.len(), conflicts)
        };
        let status = Status {
            connected: self.reconciled,
            uploads: self.out.len() + self.pending_deletes.len() + self.core.debouncer.len() + self.policy.pending(),
            downloads,
            held_deletes: self.core.delete_guard.held().len(),
            conflicts,
            ..Status::default()
        };
        self.core.report_status(status);
    }

    /// Carries out the user's answer to held deletes, if one was left.
    fn answer_held_deletes(&mut self) {
        let answer = match held::take(&self.core.ctx.root) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("cannot read the answer to held deletes: {e}");
                return;
            }
        };
        match answer {
            Some(Answer::Confirm) => {
                let names = self.core.delete_guard.confirm();
                log::warn!("confirmed: deleting {} held files on the server", names.len());
                for name in names {
                    self.policy.sync(name);
                }
            }
            Some(Answer::Restore) => {
                let names = self.core.delete_guard.restore();
                log::warn!("restoring {} held files from the server", names.len());
                self.core.ctx.shared.lock().restoring.extend(names.iter().cloned());
                for name in names {
                    self.policy.request(name);
                }
            }
            None => {}
        }
    }

    /// True when fewer than `--parallel` uploads of files larger than one
    /// chunk are under way.
    fn large_slot_free(&self) -> bool {
        self.out.multi_chunk_uploads() < self.core.cfg.parallel
    }

    /// Brings one path in line with the server: looks at the local file
    /// and uploads it, DELETEs it on the server, or does nothing if it
    /// equals the base (section 7).
    fn sync_path(&mut self, name: String) {
        let ctx = Arc::clone(&self.core.ctx);
        if ctx.ignores.is_ignored(&name) {
            // Not synced in either direction (`ignores.rs`).
            return;
        }
        let busy = {
            let st = ctx.shared.lock();
            st.outgoing.contains(&name) || st.incoming.contains(&name)
        };
        if !self.policy.may_sync(&name, busy) {
            // Another operation on the path is under way; looked at after.
            return;
        }
        let (path, parent_is_file) = match checked_path(&ctx.root, &name, false) {
            Ok(path) => (path, false),
            // A folder above it was replaced by a file: the path is gone.
            Err(_) if paths::parent_is_file(&ctx.root, &name) => (local_path(&ctx.root, &name), true),
            Err(_) => {
                self.core.notes.once(&local_path(&ctx.root, &name), "inside a symlinked folder");
                return;
            }
        };
        let record = ctx.shared.lock().record(&name);
        // A path with no base has nothing in common with the server, so it
        // is sent whatever its content (unless that content was given up):
        // it is not hashed first, the upload hashes it as it reads. A new
        // 1 GiB file starts going out at once instead of after a pass of
        // seconds over it.
        let found = if parent_is_file {
            Ok(Local::NotAFile(Probe::Absent))
        } else if self.policy.may_send_unhashed(&name, record.base.is_some()) {
            open_unhashed(&path)
        } else {
            read_local(&path, record.local, SystemTime::now())
        };
        let mut local = match found {
            Ok(Local::File { seen, file }) => Some((FileStat::of_seen(&seen), Some(seen.content), file)),
            Ok(Local::Unhashed { stat, file }) => Some((stat, None, Some(file))),
            Ok(Local::NotAFile(Probe::Absent)) => None,
            Ok(Local::NotAFile(Probe::Dir)) => {
                // A folder appeared (created, or moved in): its files.
                self.core.queue_tree(&path);
                None
            }
            Ok(Local::NotAFile(_)) => {
                self.core.notes.once(&path, "symlinks and special files are not synced");
                return;
            }
            Ok(Local::Unstable) => {
                self.core.debouncer.touch(name, Instant::now());
                return;
            }
            Err(e) => {
                self.core.notes.unreadable(&name, &e);
                return;
            }
        };
        self.core.notes.readable(&name);
        // [ext] A file renamed from, or with the same bytes as, one in sync
        // goes out as a COPY of it: its content is then known unhashed.
        let copy = match &mut local {
            Some((stat, content, _)) if self.copy_ok && !self.no_copy.contains(&name) => {
                let found = self.copy_source(&name, &path, *stat);
                if let Some((_, c, _)) = &found {
                    *content = Some(*c);
                }
                found
            }
            _ => None,
        };
        if copy.is_none()
            && local.as_ref().is_some_and(|(stat, _, _)| self.out.spans_chunks(stat.size))
            && !self.large_slot_free()
        {
            // Looked at again when a large upload ends.
            self.policy.wait_for_large_slot(name);
            return;
        }
        if local.is_none() {
            // A folder removed or moved away takes its files with it.
            self.core.queue_records_under(&name);
        }
        let mut st = ctx.shared.lock();
        // The file was read without the lock: if an incoming transfer
        // replaced it meanwhile (or one is now open), what was read is stale
        // and must not be sent over the version just received.
        let now = local.as_ref().map(|(stat, _, _)| *stat);
        let still = match probe(&path) {
            Ok(Probe::File(stat)) => Some(stat),
            _ => None,
        };
        if st.incoming.contains(&name) || still != now {
            drop(st);
            self.core.debouncer.touch(name, Instant::now());
            return;
        }
        let base = st.record(&name).base;
        let state = match &local {
            Some((_, Some(content), _)) => LocalState::File(*content),
            Some((stat, None, _)) => {
                // Sent unhashed: what it holds is known once the upload ends.
                log::trace!("{name}: {} bytes, not hashed before the upload", stat.size);
                LocalState::Unhashed
            }
            None => LocalState::Absent,
        };
        if state != LocalState::Unhashed {
            let seen = local.as_ref().and_then(|(stat, content, _)| {
                content.map(|content| LocalSeen { mtime_ns: stat.mtime_ns, content })
            });
            st.set_local(&name, seen);
        }
        let judgement = self.policy.judge(&name, state, base);
        if let (Judgement::Upload { .. }, Some((from, content, renamed)), Some((stat, _, _))) =
            (&judgement, &copy, &local)
        {
            st.outgoing.insert(name.clone());
            drop(st);
            log::debug!("sending {name} as a copy of {from} ({} bytes)", stat.size);
            self.core.delete_guard.settled(&name);
            let then_delete = if *renamed { self.delete_renamed_away(from) } else { None };
            if then_delete.is_some() {
                log::debug!("deleting {from} on the server: renamed to {name}");
            }
            self.out.add_copy(name, from.clone(), *stat, *content, then_delete);
            return;
        }
        match (judgement, local) {
            (Judgement::Upload { trusted }, Some((stat, _, file))) => {
                let file = match file.map_or_else(|| File::open(&path), Ok) {
                    Ok(f) => f,
                    Err(e) => {
                        log::warn!("cannot open {name}: {e}");
                        return;
                    }
                };
                st.outgoing.insert(name.clone());
                drop(st);
                log::debug!("uploading {name} ({} bytes)", stat.size);
                self.core.delete_guard.settled(&name);
                self.out.add_upload(name, file, path, stat, trusted);
                return;
            }
            (Judgement::Delete, _) => {
                drop(st);
                let held = base.map_or(ZERO_DIGEST, |b| b.md5);
                if let Some((from, then_delete)) = &mut self.renamed_away {
                    if *from == name {
                        // Sent with the COPY of its new name.
                        ctx.shared.lock().outgoing.insert(name);
                        *then_delete = Some(held);
                        return;
                    }
                }
                // Judged with the deletes around it (see `send_deletes`).
                self.pending_deletes.push((name, held));
                self.last_delete = Instant::now();
                return;
            }
            _ => {}
        }
        self.core.delete_guard.settled(&name);
    }

    /// [ext] The path a COPY of `name` (whose file at `path` has `stat`)
    /// may name, the content, and whether `name` was renamed from it: the
    /// file it was renamed from, or one in sync with the same bytes (only
    /// for a large file at a new path: a comparison reads both, and looking
    /// for a candidate walks every record).
    fn copy_source(&mut self, name: &str, path: &std::path::Path, stat: FileStat) -> Option<(String, Content, bool)> {
        let now = SystemTime::now();
        if let Some((from, content)) = self.core.moves.take(name, stat, now) {
            return Some((from, content, true));
        }
        // Only a new path is compared: a copy makes one, and a large file
        // edited in place (a disk image) must not be read against every
        // file of its size at each change.
        if stat.size < copy_source::COMPARE_MIN || self.core.ctx.shared.lock().record(name).base.is_some() {
            return None;
        }
        let candidates = copy_source::candidates(&self.core.ctx.shared.lock().meta, name, stat.size);
        copy_source::same_bytes(&self.core.ctx.root, path, stat, candidates, now).map(|(from, c)| (from, c, false))
    }

    /// An operation on the send connection ended (already recorded in the
    /// shared state by `outgoing::settle`): what it means for this session.
    fn on_done(&mut self, done: Done) {
        let was_upload = matches!(done, Done::Upload { .. });
        let (name, ending) = match done {
            Done::Upload { name, stat, content, outcome } => {
                if outcome == Outcome::Committed {
                    log::info!("uploaded {name} ({} bytes)", stat.size);
                }
                let content = match outcome {
                    Outcome::Refused(_) => content.or_else(|| self.hash_unchanged(&name, stat)),
                    _ => content,
                };
                (name, Ending::Upload { outcome, content })
            }
            Done::Delete { name, outcome } => {
                if outcome == Outcome::Committed {
                    log::info!("deleted {name} on the server");
                }
                (name, Ending::Delete(outcome))
            }
            Done::Request { name, outcome } if name.starts_with(INDEX_NAME) => {
                log::debug!("{name}: {outcome:?}");
                if outcome != Outcome::Committed && self.next_more.is_none() {
                    self.next_more = Some(Instant::now() + MORE_SPACING);
                }
                return;
            }
            Done::Request { name, outcome } if name == COPY_OFFER_NAME => {
                self.copy_ok = outcome == Outcome::Committed;
                log::debug!("COPY offer: {outcome:?}");
                return;
            }
            Done::Copy { name, from, stat, content, outcome } => {
                if outcome == Outcome::Committed {
                    log::info!("uploaded {name} as a copy of {from} ({} bytes not sent)", stat.size);
                }
                let outcome = if outcome == Outcome::Refused(StatusCode::NO_FILE) {
                    // The server's `from` is not that content (any more):
                    // the file itself goes out, at once.
                    log::debug!("server refused {name} as a copy of {from}; uploading it");
                    self.no_copy.insert(name.clone());
                    Outcome::Aborted
                } else {
                    outcome
                };
                (name, Ending::Upload { outcome, content: Some(content) })
            }
            Done::Request { name, outcome } => {
                if let Outcome::Refused(code) = outcome {
                    log::info!("server refused REQUEST of {name}: {code}");
                }
                (name, Ending::Request(outcome))
            }
        };
        match self.policy.ended(&name, ending, Instant::now()) {
            Next::Done => {}
            Next::LookAgain { at, why } => {
                match why {
                    Again::Changed => {}
                    // The upload holding the lock normally brings its
                    // version here, and that keeps our change as a conflict
                    // copy (section 7); if it never does, ours still goes out.
                    Again::Locked { tries: 1, after } => {
                        log::warn!("server refused {name} (file locked, or this client is read-only); looking at it again in {after:?}")
                    }
                    Again::Locked { tries, after } => {
                        log::debug!("server refused {name} again ({tries} times; file locked or read-only); next look in {after:?}")
                    }
                    Again::InUse { tries: 1 } => log::warn!("server cannot take {name} now (0x0080); trying again later"),
                    Again::InUse { tries } => log::debug!("server cannot take {name} now (0x0080, {tries} times); trying again later"),
                    Again::Damaged => log::warn!("server refused {name} (damaged on the way); trying again"),
                }
                if why == Again::Changed {
                    // Its writer is still at it: wait for its close.
                    self.core.debouncer.touch_open(name, at, crate::client::OPEN_QUIET);
                } else {
                    self.core.debouncer.touch(name, at);
                }
            }
            Next::GivenUp(code) if code == dropsync_proto::StatusCode::BAD_REQUEST && was_upload => self.refused_name(&name),
            Next::GivenUp(code) => log::warn!("server refused {name} ({code}); giving up this change"),
        }
    }

    /// An upload refused as a bad name (0x0100): when this client knows a
    /// live file that differs from it in letter case alone, the server
    /// refused a case twin (`path_rules`), so the local file is kept under
    /// a conflict-copy name, which syncs; otherwise the name is bad as
    /// such and the change is given up.
    fn refused_name(&mut self, name: &str) {
        let ctx = &self.core.ctx;
        let mut st = ctx.shared.lock();
        let twin = names::case_twin(st.meta.records.iter().filter(|(_, r)| r.base.is_some()).map(|(n, _)| n.as_str()), name);
        match twin.filter(|t| names::exists_exactly(&ctx.root, t)) {
            Some(twin) => match names::keep_case_twin(&ctx.root, name) {
                Ok(copy) => {
                    st.set_local(name, None);
                    log::warn!("{name} differs from {twin} in letter case alone, which case-insensitive file systems cannot hold: kept it as {copy}");
                }
                Err(e) => log::warn!("server refused {name}, a case twin of {twin}, and it cannot be renamed: {e}"),
            },
            None => log::warn!("server refused {name} (0x0100, a name it does not take); giving up this change"),
        }
    }

    /// The content of `name` if the file still has the `stat` an upload
    /// refused before it was ever hashed whole started from; recorded as
    /// its local state (section 7 records a refused change anyway).
    fn hash_unchanged(&self, name: &str, stat: FileStat) -> Option<Content> {
        let path = local_path(&self.core.ctx.root, name);
        match read_local(&path, None, SystemTime::now()) {
            Ok(Local::File { seen, .. }) if FileStat::of_seen(&seen) == stat => {
                self.core.ctx.shared.lock().set_local(name, Some(seen));
                Some(seen.content)
            }
            _ => None,
        }
    }

    /// Section 9: stop taking work, ABORT the uploads in progress (their
    /// ABORTs go out as the mux allows), then wait briefly for replies.
    fn begin_stop(&mut self) {
        log::info!("stopping: aborting transfers in progress");
        self.policy.stop();
        // Not sent: found again at the next start.
        self.pending_deletes.clear();
        // What ends at once comes back as events, like every other end.
        self.out.abort_all();
        self.stop_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
    }

    /// Closes both connections (shutdown(2)), waits for the session's
    /// threads, and forgets its transfers.
    fn teardown(&mut self) {
        Connected::shutdown(&self.send_sock, &self.recv_sock);
        self.core.forget_early_scan();
        self.go = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Only once the reply thread has handed over every reply it read
        // (a commit's 0x0001 above all: it makes the upload the base) is
        // the send thread stopped; it takes in what is queued first.
        self.out.stop();
        if let Some(t) = self.send_thread.take() {
            let _ = t.join();
        }
        let mut st = self.core.ctx.shared.lock();
        st.outgoing.clear();
        st.incoming.clear();
    }
}
