//! A client engine of the simulation: core's sync policy, reconciliation,
//! conflict-copy rule and connection machines over an in-memory folder,
//! wired the way `dropsync-client` wires them (a control loop that judges
//! paths once quiet, a send connection that uploads, deletes and requests,
//! a receive connection that installs deliveries), with the simulated
//! network and the virtual clock.
//!
//! What a crash keeps: the folder (every change in it is one atomic step
//! here, as the real client's rename of a synced temp file is) and the
//! bases (the real client journals each one before it counts on it).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use dropsync_core::conflict::pick_conflict_name;
use dropsync_core::decoder::{Decoder, Msg};
use dropsync_core::jobs::Job;
use dropsync_core::liveness::{Liveness, Silence};
use dropsync_core::mux::OpId;
use dropsync_core::receiving::{self, Assembled, Ended as InEnded, Host, Payload, Receiving, Reply};
use dropsync_core::reconcile::{effective_base, reconcile, Action, Content, ServerSide};
use dropsync_core::sender::Outcome;
use dropsync_core::sending::{Cause, Ended, FileDigest, Replied, Sending};
use dropsync_core::sync_policy::{
    admit_incoming, ask_again_after, brings_nothing_new, must_keep_local, Ending, Judgement, Local, Next, SyncPolicy,
};
use dropsync_proto::metadata::{parse_document, EntryState};
use dropsync_proto::name::METADATA_TRANSFER_NAME;
use dropsync_proto::{md5, StatusCode, ZERO_DIGEST};

use crate::net::{ConnId, End, Net};
use crate::wire;
use crate::Settings;

/// A file's bytes as a [`Content`].
pub fn content_of(bytes: &[u8]) -> Content {
    Content { md5: md5(bytes), size: bytes.len() as u64 }
}

/// Something a client did that the run logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A line for the event log.
    Log(String),
    /// A delivery was installed over `local`, whose base was `base`.
    Installed {
        /// The client.
        client: usize,
        /// The path.
        path: String,
        /// What arrived (`None`: a DELETE).
        incoming: Option<Content>,
        /// The file before.
        local: Option<Content>,
        /// Its base before.
        base: Option<Content>,
    },
    /// A delivery brought the version this client already had in common
    /// with the server, unasked: the update queue sent a client its own
    /// upload, or a version it had.
    Echo {
        /// The client.
        client: usize,
        /// The path.
        path: String,
    },
    /// The server answered 0x0001 to an upload of `content` at `path`
    /// (`None`: a DELETE).
    Acked {
        /// The client.
        client: usize,
        /// The path.
        path: String,
        /// What was uploaded.
        content: Option<Content>,
    },
    /// An operation of the send connection ended.
    Sent {
        /// The client.
        client: usize,
        /// The path.
        path: String,
        /// What it was, and how it ended.
        what: String,
    },
}

enum UpOp {
    Upload { data: Vec<u8>, content: Content },
    Delete,
    Request,
}

struct Incoming {
    bytes: Vec<u8>,
    started: Instant,
}

struct Session {
    up_conn: ConnId,
    down_conn: ConnId,
    up: Sending<UpOp>,
    up_link: Liveness,
    replies: Decoder,
    down: Receiving<Incoming>,
    policy: SyncPolicy,
    reconciled: bool,
    /// Paths whose upload or DELETE is under way (section 7's "being sent").
    outgoing: BTreeSet<String>,
    uploads: BTreeMap<String, OpId>,
    /// Deliveries open, with when each started.
    incoming: BTreeMap<String, Instant>,
    /// Paths this session asked for (REQUEST): a REQUEST is always served,
    /// so each may come more than once (a delivery already on its way,
    /// then the one that answers it).
    requested: BTreeSet<String>,
}

/// What the folder and the bases are, shared by the session and the host.
struct Folder<'a> {
    idx: usize,
    fs: &'a mut BTreeMap<String, Vec<u8>>,
    bases: &'a mut BTreeMap<String, Content>,
    seen: &'a mut BTreeMap<String, Content>,
    dirty: &'a mut BTreeMap<String, Instant>,
    wall_secs: i64,
    now: Instant,
    fx: &'a mut Vec<Effect>,
}

impl Folder<'_> {
    /// Section 7 [ext]: the local content the server never accepted is
    /// kept under a conflict-copy name before it is replaced or deleted.
    fn keep_copy(&mut self, name: &str) {
        let Some(bytes) = self.fs.remove(name) else { return };
        let label = format!("c{}", self.idx);
        let copy =
            pick_conflict_name(name, &label, self.wall_secs, |c| self.fs.contains_key(c) || self.bases.contains_key(c));
        self.fx.push(Effect::Log(format!("c{}: kept {name:?} as {copy:?}", self.idx)));
        self.fs.insert(copy.clone(), bytes);
        self.dirty.insert(copy, self.now);
    }
}

/// The receive connection's host: installs deliveries.
struct Deliveries<'a> {
    folder: Folder<'a>,
    policy: &'a mut SyncPolicy,
    outgoing: &'a BTreeSet<String>,
    incoming: &'a mut BTreeMap<String, Instant>,
    reconciled: &'a mut bool,
    requested: &'a mut BTreeSet<String>,
    /// The disk is full: nothing can be written.
    full: bool,
}

impl Deliveries<'_> {
    fn on_metadata(&mut self, bytes: &[u8]) -> StatusCode {
        let Ok(text) = std::str::from_utf8(bytes) else { return StatusCode::BAD_REQUEST };
        let Ok(doc) = parse_document(text) else { return StatusCode::BAD_REQUEST };
        let mut server = HashMap::new();
        let mut named = HashMap::new();
        for e in doc.entries {
            let side = match e.state {
                EntryState::File => ServerSide::File(Content { md5: e.md5, size: e.size }),
                EntryState::Deleted => ServerSide::Tombstone,
                EntryState::Other(_) => continue,
            };
            named.insert(e.path.clone(), Content { md5: e.md5, size: e.size });
            server.insert(e.path, side);
        }
        for (path, seen) in self.folder.seen.iter() {
            let base = self.folder.bases.get(path).copied();
            let b = effective_base(base, Some(*seen), server.get(path).copied(), named.get(path).copied());
            if let Some(b) = b.filter(|b| Some(*b) != base) {
                self.folder.bases.insert(path.clone(), b);
            }
        }
        let base: HashMap<String, Content> = self.folder.bases.iter().map(|(k, v)| (k.clone(), *v)).collect();
        let local: HashMap<String, Content> = self.folder.fs.iter().map(|(k, v)| (k.clone(), content_of(v))).collect();
        for step in reconcile(&server, &base, &local, true) {
            let path = step.path;
            match step.action {
                Action::Record => match server.get(&path) {
                    Some(ServerSide::File(c)) => {
                        self.folder.bases.insert(path, *c);
                    }
                    _ => {
                        self.folder.bases.remove(&path);
                    }
                },
                Action::Request => self.policy.request(path),
                Action::ConflictCopyThenRequest => {
                    self.folder.keep_copy(&path);
                    self.policy.request(path);
                }
                Action::ConflictCopyThenDeleteLocal => {
                    self.folder.keep_copy(&path);
                    self.folder.bases.remove(&path);
                }
                Action::DeleteLocal => {
                    self.folder.fs.remove(&path);
                    self.folder.bases.remove(&path);
                }
                Action::DeleteRemote | Action::Upload => self.policy.sync(path),
            }
        }
        *self.reconciled = true;
        StatusCode::OK
    }

    fn ended(&mut self, name: &str) {
        if let Some(started) = self.incoming.remove(name) {
            self.policy.delivered(name, started);
        }
    }
}

impl Host for Deliveries<'_> {
    type Transfer = Incoming;

    fn open(&mut self, name: &str, _first_len: u32) -> Result<Incoming, StatusCode> {
        if name != METADATA_TRANSFER_NAME {
            if let Err(code) = admit_incoming(self.outgoing.contains(name), !self.full) {
                if self.full {
                    // Section 7: "If F cannot be opened for writing: reply
                    // 0x0080"; asked for again later.
                    let _ = self.policy.incoming_refused(name, self.folder.now);
                } else {
                    self.policy.refused_while_sending(name);
                }
                return Err(code);
            }
            self.incoming.insert(name.to_owned(), self.folder.now);
        }
        Ok(Incoming { bytes: Vec::new(), started: self.folder.now })
    }

    fn append(&mut self, _name: &str, t: &mut Incoming, payload: Payload<'_>) -> Result<(), StatusCode> {
        t.bytes.extend_from_slice(payload.as_slice());
        Ok(())
    }

    fn commit(&mut self, name: &str, t: Incoming, file: Assembled) -> Reply {
        if name == METADATA_TRANSFER_NAME {
            return self.on_metadata(&t.bytes).into();
        }
        let _ = t.started;
        let reply = if admit_incoming(self.outgoing.contains(name), true).is_err() {
            self.policy.refused_while_sending(name);
            StatusCode::IN_USE
        } else {
            let incoming = Content { md5: file.md5, size: file.size };
            let local = self.folder.fs.get(name).map(|b| content_of(b));
            let base = self.folder.bases.get(name).copied();
            if brings_nothing_new(incoming, base, false) {
                if !self.requested.contains(name) {
                    self.folder.fx.push(Effect::Echo { client: self.folder.idx, path: name.to_owned() });
                }
                self.policy.incoming_written(name);
                self.ended(name);
                return StatusCode::OK.into();
            }
            self.folder.fx.push(Effect::Installed {
                client: self.folder.idx,
                path: name.to_owned(),
                incoming: Some(incoming),
                local,
                base,
            });
            if must_keep_local(local, base, Some(incoming)) {
                self.folder.keep_copy(name);
            }
            self.folder.fs.insert(name.to_owned(), t.bytes);
            self.folder.bases.insert(name.to_owned(), incoming);
            self.folder.seen.insert(name.to_owned(), incoming);
            self.policy.incoming_written(name);
            StatusCode::OK
        };
        self.ended(name);
        reply.into()
    }

    /// A delivery refused at its first message ends like any other (the
    /// real client reports it delivered): a REQUEST it answered is over.
    fn refused(&mut self, name: &str, _code: StatusCode) {
        if name != METADATA_TRANSFER_NAME {
            self.policy.delivered(name, self.folder.now);
        }
    }

    fn discard(&mut self, name: &str, _t: Incoming, why: InEnded) {
        if name != METADATA_TRANSFER_NAME {
            if ask_again_after(why) {
                let _ = self.policy.incoming_refused(name, self.folder.now);
            }
            self.ended(name);
        }
    }

    fn delete(&mut self, name: &str) -> Reply {
        if admit_incoming(self.outgoing.contains(name), true).is_err() {
            self.policy.refused_while_sending(name);
            return StatusCode::IN_USE.into();
        }
        let now = self.folder.now;
        self.policy.delivered(name, now);
        let Some(bytes) = self.folder.fs.get(name) else {
            self.folder.bases.remove(name);
            return StatusCode::NO_FILE.into();
        };
        let local = Some(content_of(bytes));
        let base = self.folder.bases.get(name).copied();
        self.folder.fx.push(Effect::Installed {
            client: self.folder.idx,
            path: name.to_owned(),
            incoming: None,
            local,
            base,
        });
        if must_keep_local(local, base, None) {
            self.folder.keep_copy(name);
        } else {
            self.folder.fs.remove(name);
        }
        self.folder.bases.remove(name);
        self.folder.seen.remove(name);
        StatusCode::OK.into()
    }
}

/// An upload's chunks come from the snapshot taken when it was judged.
impl wire::Content for UpOp {
    fn content(&self) -> Option<&[u8]> {
        match self {
            UpOp::Upload { data, .. } => Some(data),
            UpOp::Delete | UpOp::Request => None,
        }
    }
}

/// A client.
pub struct Client {
    idx: usize,
    settings: Settings,
    /// The folder: path → bytes.
    pub fs: BTreeMap<String, Vec<u8>>,
    /// Each path's base: the content last in common with the server.
    bases: BTreeMap<String, Content>,
    /// What each file held when the client last looked at it (the real
    /// client's `L` record).
    seen: BTreeMap<String, Content>,
    /// Paths to look at, and when (the debouncer).
    dirty: BTreeMap<String, Instant>,
    sess: Option<Session>,
    /// When to connect next, while not connected and running.
    reconnect_at: Option<Instant>,
    reconnects: u32,
    next_rescan: Instant,
    /// False between a crash and the restart.
    pub running: bool,
    /// The folder's disk is full until then.
    full_until: Option<Instant>,
    wall_base_secs: i64,
    started: Instant,
}

impl Client {
    /// Client `idx` with an empty folder, started at `now`.
    pub fn new(idx: usize, settings: Settings, now: Instant, wall_base_secs: i64) -> Self {
        Client {
            idx,
            settings,
            fs: BTreeMap::new(),
            bases: BTreeMap::new(),
            seen: BTreeMap::new(),
            dirty: BTreeMap::new(),
            sess: None,
            reconnect_at: Some(now),
            reconnects: 0,
            next_rescan: now + settings.rescan,
            running: true,
            full_until: None,
            wall_base_secs,
            started: now,
        }
    }

    /// Whether a session is up.
    pub fn connected(&self) -> bool {
        self.sess.is_some()
    }

    /// The connections of the session, if any.
    pub fn conns(&self) -> Option<(ConnId, ConnId)> {
        self.sess.as_ref().map(|s| (s.up_conn, s.down_conn))
    }

    /// Whether nothing is left to do: reconciled, nothing queued, sent,
    /// received or waiting to be looked at.
    pub fn is_idle(&self) -> bool {
        let Some(s) = &self.sess else { return false };
        s.reconciled
            && self.dirty.is_empty()
            && s.policy.is_idle()
            && s.up.is_empty()
            && s.incoming.is_empty()
            && s.down.open_transfers() == 0
    }

    /// What is left to do, for a failure report.
    pub fn backlog(&self) -> String {
        match &self.sess {
            None => format!("c{}: not connected (running: {})", self.idx, self.running),
            Some(s) => format!(
                "c{}: reconciled {}, dirty {:?}, policy pending {}, {} ops out, incoming {:?}",
                self.idx,
                s.reconciled,
                self.dirty,
                s.policy.pending(),
                s.up.len(),
                s.incoming
            ),
        }
    }

    fn wall_secs(&self, now: Instant) -> i64 {
        self.wall_base_secs + now.saturating_duration_since(self.started).as_secs() as i64
    }

    /// Time to connect, if it is.
    pub fn wants_connect(&self, now: Instant) -> bool {
        self.running && self.sess.is_none() && self.reconnect_at.is_some_and(|at| at <= now)
    }

    /// A connection attempt failed (server down or unreachable).
    pub fn connect_failed(&mut self, now: Instant) {
        self.reconnects += 1;
        let wait = Duration::from_millis(250 * u64::from(self.reconnects.min(8)));
        self.reconnect_at = Some(now + wait);
    }

    /// The two connections are open and the server paired them.
    pub fn connected_on(&mut self, up: ConnId, down: ConnId, now: Instant) {
        let cfg = receiving::Config {
            max_chunk: self.settings.chunk * 4,
            max_name_len: 4096,
            metadata_name: true,
            limits: self.settings.limits,
            timers: self.settings.timers,
            silence: Silence::Ends,
        };
        self.reconnect_at = None;
        self.sess = Some(Session {
            up_conn: up,
            down_conn: down,
            up: Sending::new(self.settings.parallel),
            up_link: Liveness::new(now, self.settings.timers, Silence::Ends),
            replies: Decoder::new(),
            down: Receiving::new(cfg, now),
            policy: SyncPolicy::new(false),
            reconciled: false,
            outgoing: BTreeSet::new(),
            uploads: BTreeMap::new(),
            incoming: BTreeMap::new(),
            requested: BTreeSet::new(),
        });
    }

    /// The folder's disk is full until `until`: deliveries are refused.
    pub fn disk_full(&mut self, until: Instant) {
        self.full_until = Some(until);
    }

    /// The user wrote `bytes` at `path`.
    pub fn write(&mut self, path: &str, bytes: Vec<u8>, now: Instant) {
        self.fs.insert(path.to_owned(), bytes);
        self.touched(path, now);
    }

    /// The user deleted `path`.
    pub fn remove(&mut self, path: &str, now: Instant) {
        if self.fs.remove(path).is_some() {
            self.touched(path, now);
        }
    }

    /// The watcher saw `path` change: looked at once quiet; an upload of
    /// it under way is aborted (sent again once quiet).
    fn touched(&mut self, path: &str, now: Instant) {
        self.dirty.insert(path.to_owned(), now + self.settings.debounce);
        if let Some(s) = &mut self.sess {
            if let Some(&id) = s.uploads.get(path) {
                s.up.abort(id);
            }
        }
    }

    /// kill -9: the session and everything in memory are gone.
    pub fn crash(&mut self, net: &mut Net) {
        if let Some(s) = self.sess.take() {
            net.close(s.up_conn);
            net.close(s.down_conn);
        }
        self.dirty.clear();
        self.running = false;
        self.reconnect_at = None;
    }

    /// Started again: every path is looked at (the startup scan), and it
    /// connects.
    pub fn restart(&mut self, now: Instant) {
        self.running = true;
        self.reconnects = 0;
        self.reconnect_at = Some(now);
        self.rescan(now);
    }

    /// The periodic rescan: a path whose file differs from its base is
    /// looked at.
    fn rescan(&mut self, now: Instant) {
        let paths: BTreeSet<String> = self.fs.keys().chain(self.bases.keys()).cloned().collect();
        for p in paths {
            let local = self.fs.get(&p).map(|b| content_of(b));
            if local != self.bases.get(&p).copied() && !self.dirty.contains_key(&p) {
                self.dirty.insert(p, now);
            }
        }
        self.next_rescan = now + self.settings.rescan;
    }

    /// The session ended (a connection closed, a peer gone, a protocol
    /// error): partial deliveries are discarded, and it connects again.
    fn drop_session(&mut self, why: &str, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        if self.with_down(now, fx, |down, host| down.close(host)).is_none() {
            return;
        }
        let Some(s) = self.sess.take() else { return };
        net.close(s.up_conn);
        net.close(s.down_conn);
        fx.push(Effect::Log(format!("c{}: session ended: {why}", self.idx)));
        if self.running {
            self.connect_failed(now);
        }
    }

    /// `conn` closed.
    pub fn on_closed(&mut self, conn: ConnId, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        if self.conns().is_some_and(|(u, d)| u == conn || d == conn) {
            self.drop_session("connection closed", now, net, fx);
        }
    }

    /// Bytes arrived on `conn`.
    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        let Some(s) = &mut self.sess else { return };
        if conn == s.down_conn {
            s.down.handle_input(now, bytes);
            if let Err(e) = self.drive_down(now, net, fx) {
                return self.drop_session(&e, now, net, fx);
            }
        } else if conn == s.up_conn {
            s.replies.handle_input(bytes);
            s.up_link.on_received(now);
            loop {
                let Some(s) = &mut self.sess else { return };
                let code = match s.replies.poll_msg() {
                    Ok(Some(Msg::Status(code))) => code,
                    Ok(None) => break,
                    Ok(Some(_)) => return self.drop_session("not a STATUS on the send connection", now, net, fx),
                    Err(e) => return self.drop_session(&format!("unreadable: {e}"), now, net, fx),
                };
                match s.up.handle_reply(code) {
                    Ok(Replied::Ended(e)) => self.settle(e, now, fx),
                    Ok(_) => {}
                    Err(e) => return self.drop_session(&format!("reply out of step: {e}"), now, net, fx),
                }
            }
        }
        self.pump(now, net, fx);
    }

    fn drive_down(&mut self, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) -> Result<(), String> {
        let result = self.with_down(now, fx, |down, host| down.process(now, host));
        self.flush_down(now, net);
        match result {
            Some(Err(e)) => Err(format!("receive connection: {e}")),
            _ => Ok(()),
        }
    }

    /// Runs `f` on the receive connection's machine with its host (the
    /// folder, the bases and the session's policy); `None` without a
    /// session.
    fn with_down<R>(
        &mut self,
        now: Instant,
        fx: &mut Vec<Effect>,
        f: impl FnOnce(&mut Receiving<Incoming>, &mut Deliveries<'_>) -> R,
    ) -> Option<R> {
        let wall_secs = self.wall_secs(now);
        let full = self.full_until.is_some_and(|t| t > now);
        let Client { idx, fs, bases, seen, dirty, sess, .. } = self;
        let Session { down, policy, outgoing, incoming, reconciled, requested, .. } = sess.as_mut()?;
        let folder = Folder { idx: *idx, fs, bases, seen, dirty, wall_secs, now, fx };
        let mut host = Deliveries { folder, policy, outgoing, incoming, reconciled, requested, full };
        Some(f(down, &mut host))
    }

    /// Sends the receive connection's replies.
    fn flush_down(&mut self, now: Instant, net: &mut Net) {
        let Some(s) = &mut self.sess else { return };
        let mut buf = Vec::new();
        if s.down.poll_transmit(now, &mut buf) {
            net.send(now, s.down_conn, End::Server, buf);
        }
    }

    /// An operation of the send connection ended: what it means.
    fn settle(&mut self, e: Ended<UpOp>, now: Instant, fx: &mut Vec<Effect>) {
        let Some(s) = &mut self.sess else { return };
        if !matches!(e.op, UpOp::Request) {
            s.outgoing.remove(&e.name);
        }
        if s.uploads.get(&e.name) == Some(&e.id) {
            s.uploads.remove(&e.name);
        }
        let kind = match &e.op {
            UpOp::Upload { .. } => "upload",
            UpOp::Delete => "delete",
            UpOp::Request => "request",
        };
        fx.push(Effect::Sent {
            client: self.idx,
            path: e.name.clone(),
            what: format!("{kind}: {:?} ({:?})", e.outcome, e.cause),
        });
        let ending = match e.op {
            UpOp::Upload { data, content } => {
                if e.outcome == Outcome::Committed {
                    self.bases.insert(e.name.clone(), content);
                    fx.push(Effect::Acked { client: self.idx, path: e.name.clone(), content: Some(content) });
                }
                let unchanged = self.fs.get(&e.name) == Some(&data);
                Ending::Upload { outcome: e.outcome, content: unchanged.then_some(content) }
            }
            UpOp::Delete => {
                if matches!(e.outcome, Outcome::Committed | Outcome::Refused(StatusCode::NO_FILE)) {
                    self.bases.remove(&e.name);
                }
                if e.outcome == Outcome::Committed {
                    fx.push(Effect::Acked { client: self.idx, path: e.name.clone(), content: None });
                }
                Ending::Delete(e.outcome)
            }
            UpOp::Request => Ending::Request(e.outcome),
        };
        if matches!(e.cause, Cause::Unreadable(_)) {
            fx.push(Effect::Log(format!("c{}: {:?} unreadable", self.idx, e.name)));
        }
        match s.policy.ended(&e.name, ending, now) {
            Next::Done => {}
            Next::LookAgain { at, .. } => {
                let at = at.max(now + self.settings.debounce);
                self.dirty.entry(e.name).and_modify(|t| *t = (*t).max(at)).or_insert(at);
            }
            Next::GivenUp(code) => fx.push(Effect::Log(format!("c{}: gave up {:?} ({code})", self.idx, e.name))),
        }
    }

    /// Starts what is due and sends what is ready.
    fn pump(&mut self, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        let Some(s) = &mut self.sess else { return };
        if !s.reconciled {
            return;
        }
        let due: Vec<String> = self.dirty.iter().filter(|(_, &at)| at <= now).map(|(p, _)| p.clone()).collect();
        for p in due {
            self.dirty.remove(&p);
            s.policy.sync(p);
        }
        while s.up.len() < self.settings.parallel {
            let Some(job) = s.policy.next_job(now, true) else { break };
            match job {
                Job::Request(name) => {
                    s.requested.insert(name.clone());
                    let held = self.bases.get(&name).map_or(ZERO_DIGEST, |b| b.md5);
                    s.up.add_request(name, held, UpOp::Request);
                }
                Job::Sync(name) => {
                    let busy = s.outgoing.contains(&name) || s.incoming.contains_key(&name);
                    if !s.policy.may_sync(&name, busy) {
                        continue;
                    }
                    let data = self.fs.get(&name).cloned();
                    let local = data.as_deref().map_or(Local::Absent, |b| Local::File(content_of(b)));
                    match &data {
                        Some(b) => self.seen.insert(name.clone(), content_of(b)),
                        None => self.seen.remove(&name),
                    };
                    let base = self.bases.get(&name).copied();
                    match s.policy.judge(&name, local, base) {
                        Judgement::Upload { .. } => {
                            let data = data.unwrap_or_default();
                            let content = content_of(&data);
                            s.outgoing.insert(name.clone());
                            let size = data.len() as u64;
                            let op = UpOp::Upload { data, content };
                            let id =
                                s.up.add_upload(name.clone(), size, self.settings.chunk, FileDigest::FromChunks, op);
                            s.uploads.insert(name, id);
                        }
                        Judgement::Delete => {
                            let held = base.map_or(ZERO_DIGEST, |b| b.md5);
                            s.outgoing.insert(name.clone());
                            s.up.add_delete(name, held, UpOp::Delete);
                        }
                        Judgement::Nothing => {}
                    }
                }
            }
        }
        let out = wire::drain(&mut s.up);
        if !out.is_empty() {
            net.send(now, s.up_conn, End::Server, out);
            s.up_link.on_sent(now);
        }
        let mut ended = Vec::new();
        while let Some(e) = s.up.poll_ended() {
            ended.push(e);
        }
        if !ended.is_empty() {
            for e in ended {
                self.settle(e, now, fx);
            }
            self.pump(now, net, fx);
        }
    }

    /// When [`on_timeout`](Self::on_timeout) next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        if !self.running {
            return None;
        }
        let Some(s) = &self.sess else { return self.reconnect_at };
        let mut at = s.up_link.poll_timeout().min(s.down.poll_timeout()).min(self.next_rescan);
        if s.reconciled {
            if let Some(d) = self.dirty.values().min() {
                at = at.min(*d);
            }
            if let Some(r) = s.policy.next_retry().filter(|_| s.up.len() < self.settings.parallel) {
                at = at.min(r);
            }
        }
        Some(at)
    }

    /// Time passed.
    pub fn on_timeout(&mut self, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        if !self.running {
            return;
        }
        if self.next_rescan <= now {
            self.rescan(now);
        }
        let Some(s) = &mut self.sess else { return };
        if let Err(g) = wire::keep_alive(&mut s.up_link, now, net, s.up_conn, End::Server) {
            return self.drop_session(&format!("send connection: {g}"), now, net, fx);
        }
        if let Some(Err(e)) = self.with_down(now, fx, |down, host| down.handle_timeout(now, host)) {
            return self.drop_session(&format!("receive connection: {e}"), now, net, fx);
        }
        self.flush_down(now, net);
        self.pump(now, net, fx);
    }
}
