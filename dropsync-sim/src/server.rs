//! The server engine of the simulation: core's library (commit rules over
//! an in-memory catalog and blob store), lock table, update-queue rules and
//! connection machines, wired the way `dropsync-server` wires them, with
//! the simulated network instead of sockets and the virtual clock instead
//! of `Instant::now`. A session is paired as soon as a client opens its two
//! connections (the HELLO exchange is the real server's `pairing`, tested
//! elsewhere).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use dropsync_core::decoder::{Decoder, Msg};
use dropsync_core::delivery::{client_has_it, judge_queued, resend_after, Delivery};
use dropsync_core::library::{Committed, Library, Pending, WallTime};
use dropsync_core::liveness::{Liveness, Silence};
use dropsync_core::locks::{try_lock_owned, OwnedLockGuard, SessionId};
use dropsync_core::meta_server::Catalog;
use dropsync_core::receiving::{self, Assembled, Host, Payload, Receiving, Reply, Step};
use dropsync_core::sending::{FileDigest, Replied, Sending};
use dropsync_core::stale::SeenVersions;
use dropsync_proto::metadata::EntryState;
use dropsync_proto::name::METADATA_TRANSFER_NAME;
use dropsync_proto::{md5, StatusCode, ZERO_DIGEST};
use dropsync_soak::model::Version;

use crate::backing::{self, Backing, Blobs};
use crate::blobs::{MemBlobs, SimStorage, SimTemp};
use crate::net::{ConnId, End, Net};
use crate::shared::Handles;
use crate::wire;
use crate::Settings;

type Lib = Library<Box<dyn Catalog>, Blobs>;

/// What survives a crash of the server: its durable catalog storage and
/// its installed contents.
#[derive(Debug, Clone, Default)]
pub struct Disk {
    /// The catalog's journal and snapshot.
    pub catalog: Arc<SimStorage>,
    /// The contents.
    pub blobs: MemBlobs,
}

/// Something the server did that the invariants judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// An upload from `client` was answered 0x0001 as `version` of `path`.
    Committed {
        /// Who sent it.
        client: usize,
        /// The path.
        path: String,
        /// What it holds.
        content: Option<Version>,
        /// The version it got (0: unchanged).
        version: u64,
        /// Its group commit, numbered per server: the changes of one share
        /// one journal append.
        batch: u64,
    },
    /// A delivery to `client` was overtaken by its own change of `path`,
    /// which is sent to it again (`delivery::resend_after`).
    Resent {
        /// The client.
        client: usize,
        /// The path.
        path: String,
    },
    /// A line for the event log.
    Log(String),
}

struct Upload {
    temp: SimTemp,
    _lock: OwnedLockGuard,
}

enum Out {
    Meta(Arc<Vec<u8>>),
    File { version: u64, bytes: Arc<Vec<u8>> },
    Delete { version: u64 },
}

#[derive(PartialEq, Eq)]
enum Meta {
    Pending,
    Sent,
    Done,
}

struct State {
    client: usize,
    seen: Mutex<SeenVersions>,
    queue: VecDeque<String>,
    queued: BTreeSet<String>,
    requested: BTreeSet<String>,
    meta: Meta,
    settling: Option<(String, Instant)>,
}

struct Session {
    up_conn: ConnId,
    down_conn: ConnId,
    up: Receiving<Upload>,
    down: Sending<Out>,
    down_link: Liveness,
    replies: Decoder,
    st: State,
}

/// The server.
pub struct Server {
    lib: Lib,
    /// "server", or the instance's name ("s1") when there are several.
    name: String,
    /// With a shared catalog: what the run reaches into this instance for.
    shared: Option<Handles>,
    settings: Settings,
    sessions: BTreeMap<SessionId, Session>,
    by_conn: BTreeMap<ConnId, SessionId>,
    next_session: SessionId,
    /// Unix time of the virtual clock's start, for META-DATA and names.
    wall_base_ns: i64,
    /// A slow disk: until then, each reply (a commit's included) leaves
    /// this much later.
    slow: Option<(Instant, std::time::Duration)>,
    /// Group commits so far (each one's number, for the crash model).
    batches: u64,
    started: Instant,
}

/// The uploads host: what the receiving machine of a client's send
/// connection asks of the server.
struct Uploads<'a> {
    lib: &'a Lib,
    /// The server's name, for the log.
    who: &'a str,
    st: &'a mut State,
    down: &'a Sending<Out>,
    id: SessionId,
    wall: WallTime,
    fan: &'a mut Vec<(String, Option<SessionId>)>,
    fx: &'a mut Vec<Effect>,
    /// Paths this session's own change overtook a delivery of, with the
    /// version committed (the real server's `Session::overtaken`).
    overtaken: Vec<(String, u64)>,
    /// Changes answered later: the group commit after this round.
    batch: Vec<(u64, Pending<SimTemp>, OwnedLockGuard, Option<Version>)>,
    /// That group commit's number.
    batch_no: u64,
}

impl Uploads<'_> {
    fn label(&self) -> String {
        format!("c{}", self.st.client)
    }
}

impl Host for Uploads<'_> {
    type Transfer = Upload;

    fn open(&mut self, name: &str, _first_len: u32) -> Result<Upload, StatusCode> {
        let lock = try_lock_owned(self.lib.locks(), name, self.id).ok_or(StatusCode::LOCKED)?;
        let temp = self.lib.temp().map_err(|_| StatusCode::IN_USE)?;
        Ok(Upload { temp, _lock: lock })
    }

    fn append(&mut self, _name: &str, upload: &mut Upload, payload: Payload<'_>) -> Result<(), StatusCode> {
        upload.temp.append(payload.as_slice());
        Ok(())
    }

    /// Answered later: committed with the session's other changes of this
    /// round, as the real server's group commit does.
    fn commit(&mut self, name: &str, upload: Upload, file: Assembled) -> Reply {
        let Upload { temp, _lock } = upload;
        let change = Pending::Upload { path: name.to_owned(), temp, md5: file.md5, size: file.size };
        self.defer(change, _lock, Some(Version { md5: file.md5, size: file.size }))
    }

    fn must_settle(&mut self, name: &str) -> bool {
        self.lib.conflict_copies() && self.down.has(name)
    }

    fn delete(&mut self, name: &str) -> Reply {
        let Some(lock) = try_lock_owned(self.lib.locks(), name, self.id) else {
            return StatusCode::LOCKED.into();
        };
        self.defer(Pending::Delete { path: name.to_owned() }, lock, None)
    }

    fn request(&mut self, name: &str) -> StatusCode {
        let reply = self.lib.request(name);
        if reply == StatusCode::OK {
            self.st.requested.insert(name.to_owned());
            push_queue(self.st, name);
        }
        reply
    }

    fn hello(&mut self) -> StatusCode {
        StatusCode::OK
    }
}

impl Uploads<'_> {
    fn defer(&mut self, change: Pending<SimTemp>, lock: OwnedLockGuard, content: Option<Version>) -> Reply {
        let ticket = self.batch.len() as u64;
        self.batch.push((ticket, change, lock, content));
        Reply::Later(ticket)
    }

    /// The group commit of the changes answered later; their replies.
    fn commit_batch(&mut self) -> Vec<(u64, StatusCode)> {
        if self.batch.is_empty() {
            return Vec::new();
        }
        let mut held = Vec::new();
        let mut changes = Vec::new();
        for (ticket, change, lock, content) in std::mem::take(&mut self.batch) {
            held.push((ticket, change.path().to_owned(), lock, content));
            changes.push(change);
        }
        let label = self.label();
        let outcomes = self.lib.commit_batch(changes, &self.st.seen, &label, self.wall);
        let mut replies = Vec::new();
        for ((ticket, name, lock, content), result) in held.into_iter().zip(outcomes) {
            drop(lock);
            let deleting = content.is_none();
            let code = match result {
                Ok(Committed::New { entry, conflict }) => {
                    let (client, path) = (self.st.client, name.clone());
                    let (version, batch) = (entry.version, self.batch_no);
                    self.fx.push(Effect::Committed { client, path, content, version, batch });
                    self.after_commit(conflict, &name, entry.version);
                    StatusCode::OK
                }
                Ok(_) if deleting => StatusCode::NO_FILE,
                Ok(_) => {
                    let (client, batch) = (self.st.client, self.batch_no);
                    self.fx.push(Effect::Committed { client, path: name, content, version: 0, batch });
                    StatusCode::OK
                }
                Err(e) => {
                    if !deleting {
                        self.fx.push(Effect::Log(format!("{}: cannot commit {name:?}: {e}", self.who)));
                    }
                    StatusCode::IN_USE
                }
            };
            replies.push((ticket, code));
        }
        replies
    }

    /// A committed change goes to every other client, and its conflict copy
    /// (if one was kept) to everyone.
    fn after_commit(&mut self, conflict: Option<String>, name: &str, version: u64) {
        if let Some(c) = conflict {
            self.fx.push(Effect::Log(format!("{}: {name:?} was stale; kept {c:?}", self.who)));
            self.fan.push((c, None));
        }
        self.fan.push((name.to_owned(), Some(self.id)));
        if self.down.has(name) {
            self.overtaken.push((name.to_owned(), version));
        }
    }
}

fn push_queue(st: &mut State, path: &str) {
    if st.queued.insert(path.to_owned()) {
        st.queue.push_back(path.to_owned());
    }
}

/// A delivery's chunks come from the stored content (or the META-DATA).
impl wire::Content for Out {
    fn content(&self) -> Option<&[u8]> {
        match self {
            Out::Meta(b) | Out::File { bytes: b, .. } => Some(b),
            Out::Delete { .. } => None,
        }
    }
}

impl Server {
    /// A server named `name` on `backing` (empty for a first start),
    /// started at `now`.
    pub fn start(
        backing: &Backing,
        name: &str,
        settings: Settings,
        now: Instant,
        wall_base_ns: i64,
    ) -> Result<Self, String> {
        let opened = backing::open(backing)?;
        let lib = Library::new(opened.catalog, opened.blobs, opened.locks, true);
        Ok(Server {
            lib,
            name: name.to_owned(),
            shared: opened.shared,
            settings,
            sessions: BTreeMap::new(),
            by_conn: BTreeMap::new(),
            next_session: 1,
            wall_base_ns,
            slow: None,
            batches: 0,
            started: now,
        })
    }

    /// Its name in the log.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// With a shared catalog: what the run reaches into this instance for.
    pub fn shared(&self) -> Option<&Handles> {
        self.shared.as_ref()
    }

    fn wall(&self, now: Instant) -> WallTime {
        WallTime { unix_ns: self.wall_base_ns + now.saturating_duration_since(self.started).as_nanos() as i64 }
    }

    /// The live files: path → content.
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        self.lib.catalog().walk_table(&mut |t| {
            for e in t.entries().filter(|e| e.state == EntryState::File) {
                let bytes = e.strong.and_then(|k| self.lib.blobs().get(&k));
                out.insert(e.path.clone(), bytes.map(|b| b.to_vec()).unwrap_or_default());
            }
        });
        out
    }

    /// The catalog's version counter.
    pub fn last_version(&self) -> u64 {
        let mut last = 0;
        self.lib.catalog().walk_table(&mut |t| last = t.last_version());
        last
    }

    /// Each path's version.
    pub fn versions(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        self.lib.catalog().walk_table(&mut |t| out.extend(t.entries().map(|e| (e.path.clone(), e.version))));
        out
    }

    /// Whether `version` of `path` is still known: the current line or one
    /// the history keeps.
    pub fn keeps(&self, path: &str, version: u64) -> bool {
        let cat = self.lib.catalog();
        cat.get(path).is_some_and(|e| e.version == version)
            || cat.history(path).iter().any(|k| k.entry.version == version)
    }

    /// Who holds `path`'s lock.
    pub fn lock_holder(&self, path: &str) -> Option<SessionId> {
        self.lib.locks().holder(path)
    }

    /// Whether session `id` is still up.
    pub fn has_session(&self, id: SessionId) -> bool {
        self.sessions.contains_key(&id)
    }

    /// Temps of uploads under way.
    pub fn temps_open(&self) -> usize {
        self.lib.blobs().temps_open()
    }

    /// Whether every session is idle: nothing queued, sent or settling.
    pub fn is_idle(&self) -> bool {
        self.sessions.values().all(|s| {
            s.st.queue.is_empty() && s.down.is_empty() && s.st.settling.is_none() && s.up.open_transfers() == 0
        })
    }

    /// What is left to do, for a failure report.
    pub fn backlog(&self) -> Vec<String> {
        self.sessions
            .iter()
            .filter(|(_, s)| !(s.st.queue.is_empty() && s.down.is_empty() && s.st.settling.is_none()))
            .map(|(id, s)| {
                format!(
                    "session {id} (c{}): queue {:?}, {} deliveries, settling {:?}, {} uploads open",
                    s.st.client,
                    s.st.queue,
                    s.down.len(),
                    s.st.settling,
                    s.up.open_transfers()
                )
            })
            .collect()
    }

    /// Client `client` opened `up` (its send connection) and `down` (its
    /// receive connection): a new session, which is sent the META-DATA
    /// (once this instance has caught up with the others, as
    /// `dropsync-server`'s pairing does).
    pub fn accept(
        &mut self,
        client: usize,
        (up, down): (ConnId, ConnId),
        now: Instant,
        net: &mut Net,
        fx: &mut Vec<Effect>,
    ) -> SessionId {
        self.follow(now, net, fx);
        let id = self.next_session;
        self.next_session += 1;
        let cfg = receiving::Config {
            max_chunk: self.settings.chunk * 4,
            max_name_len: 4096,
            metadata_name: false,
            limits: self.settings.limits,
            timers: self.settings.timers,
            silence: Silence::Ends,
        };
        let session = Session {
            up_conn: up,
            down_conn: down,
            up: Receiving::new(cfg, now),
            down: Sending::new(self.settings.parallel),
            down_link: Liveness::new(now, self.settings.timers, Silence::Ends),
            replies: Decoder::new(),
            st: State {
                client,
                seen: Mutex::new(SeenVersions::new(0)),
                queue: VecDeque::new(),
                queued: BTreeSet::new(),
                requested: BTreeSet::new(),
                meta: Meta::Pending,
                settling: None,
            },
        };
        self.sessions.insert(id, session);
        self.by_conn.insert(up, id);
        self.by_conn.insert(down, id);
        self.pump(id, now, net);
        id
    }

    /// Bytes arrived on `conn`.
    pub fn on_bytes(&mut self, conn: ConnId, bytes: &[u8], now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        let Some(&id) = self.by_conn.get(&conn) else { return };
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if conn == s.up_conn {
            s.up.handle_input(now, bytes);
            self.drive_up(id, now, net, fx);
        } else {
            s.replies.handle_input(bytes);
            s.down_link.on_received(now);
            loop {
                let Some(s) = self.sessions.get_mut(&id) else { return };
                let msg = match s.replies.poll_msg() {
                    Ok(Some(msg)) => msg,
                    Ok(None) => break,
                    Err(e) => return self.end(id, &format!("unreadable reply: {e}"), net, fx),
                };
                let Msg::Status(code) = msg else {
                    return self.end(id, "a message that is not a STATUS on the receive connection", net, fx);
                };
                match s.down.handle_reply(code) {
                    Ok(Replied::Ended(e)) => match e.op {
                        Out::Meta(_) if e.outcome == dropsync_core::sender::Outcome::Committed => {
                            s.st.meta = Meta::Done
                        }
                        Out::Meta(_) => return self.end(id, "the client refused the META-DATA", net, fx),
                        Out::File { version, .. } | Out::Delete { version } => {
                            if client_has_it(e.outcome) {
                                let mut seen = s.st.seen.lock().unwrap_or_else(PoisonError::into_inner);
                                seen.saw(&e.name, version);
                                if resend_after(version, self.lib.catalog().get(&e.name).as_ref(), &seen) {
                                    drop(seen);
                                    fx.push(Effect::Resent { client: s.st.client, path: e.name.clone() });
                                    s.st.requested.insert(e.name.clone());
                                    push_queue(&mut s.st, &e.name);
                                }
                            }
                        }
                    },
                    Ok(_) => {}
                    Err(e) => return self.end(id, &format!("reply out of step: {e}"), net, fx),
                }
            }
            self.resume_settled(id, now, net, fx);
            self.pump(id, now, net);
        }
    }

    /// The connection `conn` closed: its session ends.
    pub fn on_closed(&mut self, conn: ConnId, net: &mut Net, fx: &mut Vec<Effect>) {
        if let Some(&id) = self.by_conn.get(&conn) {
            self.end(id, "connection closed", net, fx);
        }
    }

    /// When [`on_timeout`](Self::on_timeout) next has something to do.
    pub fn deadline(&self) -> Option<Instant> {
        self.sessions
            .values()
            .flat_map(|s| {
                [Some(s.up.poll_timeout()), Some(s.down_link.poll_timeout()), s.st.settling.as_ref().map(|x| x.1)]
            })
            .flatten()
            .min()
    }

    /// Time passed: keep-alives, dead peers, idle transfers, settled waits.
    pub fn on_timeout(&mut self, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        let wall = self.wall(now);
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let Some(s) = self.sessions.get_mut(&id) else { continue };
            if let Err(g) = wire::keep_alive(&mut s.down_link, now, net, s.down_conn, End::Client) {
                self.end(id, &format!("receive connection: {g}"), net, fx);
                continue;
            }
            let mut fan = Vec::new();
            let result = {
                let (up, mut host) = uploads(&self.lib, &self.name, s, id, (wall, 0), &mut fan, fx);
                up.handle_timeout(now, &mut host)
            };
            if let Err(e) = result {
                self.end(id, &format!("send connection: {e}"), net, fx);
                continue;
            }
            self.flush_up(id, now, net);
            self.fan_out(fan, now, net);
            self.resume_settled(id, now, net, fx);
        }
    }

    /// The follower's turn (`dropsync-server`'s `follower.rs`): what other
    /// instances committed since the last one is applied here and queued
    /// for this instance's clients, as a commit made here is.
    pub fn follow(&mut self, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        match self.lib.follow() {
            Ok(lines) => {
                let mut fan = Vec::new();
                for e in lines {
                    fx.push(Effect::Log(format!("{}: followed {:?} version {}", self.name, e.path, e.version)));
                    fan.push((e.path, None));
                }
                self.fan_out(fan, now, net);
            }
            Err(e) => fx.push(Effect::Log(format!("{}: cannot follow: {e}", self.name))),
        }
    }

    fn resume_settled(&mut self, id: SessionId, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let done = match &s.st.settling {
            Some((name, until)) => !s.down.has(name) || *until <= now,
            None => false,
        };
        if done {
            s.st.settling = None;
            self.drive_up(id, now, net, fx);
        }
    }

    /// Runs the send connection's machine over what arrived.
    fn drive_up(&mut self, id: SessionId, now: Instant, net: &mut Net, fx: &mut Vec<Effect>) {
        let wall = self.wall(now);
        let mut fan = Vec::new();
        let Some(s) = self.sessions.get_mut(&id) else { return };
        if s.st.settling.is_some() {
            return;
        }
        self.batches += 1;
        let (result, overtaken) = {
            let (up, mut host) = uploads(&self.lib, &self.name, s, id, (wall, self.batches), &mut fan, fx);
            let result = up.process(now, &mut host);
            for (ticket, code) in host.commit_batch() {
                up.resolve(ticket, code);
            }
            (result, host.overtaken)
        };
        // A delivery of an older version than the client's own change just
        // committed is aborted, as the real server's sender does.
        for (name, committed) in overtaken {
            for op in s.down.ids_named(&name) {
                let older = s.down.op(op).is_some_and(|(_, o)| match o {
                    Out::File { version, .. } | Out::Delete { version } => *version < committed,
                    Out::Meta(_) => false,
                });
                if older {
                    s.down.abort(op);
                }
            }
        }
        match result {
            Ok(Step::Settle { name, until }) => s.st.settling = Some((name, until)),
            Ok(_) => {}
            Err(e) => {
                self.flush_up(id, now, net);
                self.fan_out(fan, now, net);
                return self.end(id, &format!("send connection: {e}"), net, fx);
            }
        }
        self.flush_up(id, now, net);
        self.fan_out(fan, now, net);
        self.pump(id, now, net);
    }

    fn flush_up(&mut self, id: SessionId, now: Instant, net: &mut Net) {
        let delay = self.slow.filter(|(until, _)| *until > now).map_or(std::time::Duration::ZERO, |(_, by)| by);
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let mut buf = Vec::new();
        if s.up.poll_transmit(now, &mut buf) {
            net.send(now + delay, s.up_conn, End::Client, buf);
        }
    }

    /// The disk is slow until `until`: every reply leaves `by` later.
    pub fn slow_disk(&mut self, until: Instant, by: std::time::Duration) {
        self.slow = Some((until, by));
    }

    fn fan_out(&mut self, fan: Vec<(String, Option<SessionId>)>, now: Instant, net: &mut Net) {
        for (path, except) in fan {
            let ids: Vec<SessionId> = self.sessions.keys().copied().filter(|&i| Some(i) != except).collect();
            for i in ids {
                if let Some(s) = self.sessions.get_mut(&i) {
                    push_queue(&mut s.st, &path);
                }
                self.pump(i, now, net);
            }
        }
    }

    /// Starts deliveries while the session has room, and sends what is
    /// ready.
    fn pump(&mut self, id: SessionId, now: Instant, net: &mut Net) {
        let Some(s) = self.sessions.get_mut(&id) else { return };
        let chunk = self.settings.chunk;
        match s.st.meta {
            Meta::Pending => {
                let (text, upto) = self.lib.snapshot(None);
                *s.st.seen.lock().unwrap_or_else(PoisonError::into_inner) = SeenVersions::new(upto);
                let bytes = Arc::new(text.into_bytes());
                let digest = FileDigest::Known(md5(&bytes));
                s.down.add_upload(METADATA_TRANSFER_NAME.into(), bytes.len() as u64, chunk, digest, Out::Meta(bytes));
                s.st.meta = Meta::Sent;
            }
            Meta::Sent => {}
            Meta::Done => {
                let mut busy = Vec::new();
                while s.down.len() < self.settings.parallel {
                    let Some(path) = s.st.queue.pop_front() else { break };
                    if s.down.has(&path) {
                        busy.push(path);
                        continue;
                    }
                    s.st.queued.remove(&path);
                    let requested = s.st.requested.remove(&path);
                    let entry = self.lib.catalog().get(&path);
                    let judged = {
                        let seen = s.st.seen.lock().unwrap_or_else(PoisonError::into_inner);
                        judge_queued(entry.as_ref(), &seen, requested)
                    };
                    match (judged, entry) {
                        (Delivery::File { version }, Some(e)) => match self.lib.open_content(&e) {
                            Ok(bytes) => {
                                let d = FileDigest::Known(e.md5);
                                s.down.add_upload(path, e.size, chunk, d, Out::File { version, bytes });
                            }
                            Err(_) => continue,
                        },
                        (Delivery::Delete { version }, _) => {
                            s.down.add_delete(path, ZERO_DIGEST, Out::Delete { version });
                        }
                        _ => {}
                    }
                }
                for p in busy.into_iter().rev() {
                    s.st.queue.push_front(p);
                }
            }
        }
        let out = wire::drain(&mut s.down);
        if !out.is_empty() {
            net.send(now, s.down_conn, End::Client, out);
            s.down_link.on_sent(now);
        }
    }

    /// Ends session `id`: its transfers are discarded, its locks released,
    /// its connections closed.
    fn end(&mut self, id: SessionId, why: &str, net: &mut Net, fx: &mut Vec<Effect>) {
        let Some(mut s) = self.sessions.remove(&id) else { return };
        let mut fan = Vec::new();
        {
            // Closing only discards: no commit needs the wall clock.
            let (up, mut host) = uploads(&self.lib, &self.name, &mut s, id, (WallTime { unix_ns: 0 }, 0), &mut fan, fx);
            up.close(&mut host);
        }
        s.down.abort_all();
        self.lib.locks().release_all(id);
        self.by_conn.remove(&s.up_conn);
        self.by_conn.remove(&s.down_conn);
        net.close(s.up_conn);
        net.close(s.down_conn);
        fx.push(Effect::Log(format!("{}: session {id} (c{}) ended: {why}", self.name, s.st.client)));
    }
}

/// Session `s`'s send-connection machine, and its host.
fn uploads<'a>(
    lib: &'a Lib,
    who: &'a str,
    s: &'a mut Session,
    id: SessionId,
    (wall, batch_no): (WallTime, u64),
    fan: &'a mut Vec<(String, Option<SessionId>)>,
    fx: &'a mut Vec<Effect>,
) -> (&'a mut Receiving<Upload>, Uploads<'a>) {
    let Session { up, down, st, .. } = s;
    (up, Uploads { lib, who, st, down, id, wall, fan, fx, overtaken: Vec::new(), batch: Vec::new(), batch_no })
}
