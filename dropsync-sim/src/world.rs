//! One seed's run: the settings, the workload and the faults drawn from
//! the seed, the event loop that advances the virtual clock from one ready
//! event to the next (several ready at once go in an order the RNG picks),
//! and the checks once everything has settled.
//!
//! The workload: writes (of contents unique by construction), deletes,
//! renames, mass deletes, bursts of several clients writing one path,
//! edits of files while they are being uploaded, edits of a stopped
//! client's folder. The faults: a client or the server killed at any step
//! (kill -9: what was durable survives, the rest is gone) and started
//! again; partitions between a client and the server; connection resets;
//! stalls; a full disk on the server.
//!
//! The invariants, once every partition has healed, every process runs and
//! nothing moves (each a failure with the event log):
//! - every client folder equals the server's live files, byte for byte;
//! - no lost work, no resurrection, no torn file (`dropsync_soak::model`:
//!   what a client wrote and no later change saw is still there, at its
//!   path or in a conflict copy; nothing deleted after it was seen comes
//!   back; every file is a content some client wrote);
//! - no temp file left, no lock held, no content stored that nothing names;
//! - every version ever committed is still known: current, or kept in the
//!   history (nothing acknowledged is lost);
//! - every queue drained (or the run did not settle within its deadline);
//! - at every commit: versions only grow, across server restarts too.
//!
//! With several instances (`run_with(seed, n)`, [`crate::instances`]): the
//! server is 2 or 3 engines over one shared database and bucket, each
//! client reaching one of them (and sometimes another on reconnecting);
//! the faults hit one instance at a time (kill -9 of one, the others go
//! on; its disk full or slow), and a kill in a commit may cut it off
//! before its COMMIT. The invariants are the same, judged against the
//! database (the live files are its table's, with contents from the
//! bucket; versions only grow across instances), and three more
//! (`checks`): every instance's view equals the database once settled, no
//! advisory lock is left, and the bucket holds every content a line names
//! and nothing else the collector will not take.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use dropsync_core::liveness::Timers;
use dropsync_core::open_transfers::Limits;
use dropsync_soak::model::{Change, History, Version};
use dropsync_soak::rng::Rng;

use dropsync_proto::metadata::{EntryState, Strong};

use crate::backing::Backing;
use crate::client::{self, Client};
use crate::db;
use crate::instances::Instances;
use crate::net::{ConnId, End, LinkShape, Net};
use crate::server::{self, Disk, Server};
use crate::Settings;

mod checks;

/// Longest a run may take, in virtual time, to settle after its workload.
const SETTLE_LIMIT: Duration = Duration::from_secs(400);

/// Most events one run may take: a run that needs more is spinning (a
/// deadline that passed and is never moved on), and fails.
const MAX_EVENTS: u64 = 2_000_000;

/// Wall-clock time the virtual clock starts at (2026-01-01), so conflict
/// names do not depend on when the run happens.
const WALL_BASE_SECS: i64 = 1_767_225_600;

/// A run that passed.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Workload steps.
    pub steps: usize,
    /// Events handled by the loop.
    pub events: u64,
    /// Virtual time until everything settled.
    pub virtual_time: Duration,
    /// Files at the end.
    pub files: usize,
    /// Bytes that crossed the network.
    pub bytes: u64,
    /// Resurrections a known limit explains ([`KNOWN_LIMITS`]).
    pub known: Vec<String>,
    /// The event log.
    pub log: Vec<String>,
}

/// A run that broke an invariant.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// Server instances (1: the one server).
    pub instances: usize,
    /// What broke.
    pub what: Vec<String>,
    /// The event log.
    pub log: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.instances {
            0 | 1 => writeln!(f, "seed {} FAILED:", self.seed)?,
            n => writeln!(f, "seed {} ({n} instances) FAILED:", self.seed)?,
        }
        for w in &self.what {
            writeln!(f, "  - {w}")?;
        }
        write!(f, "replay: {}", replay_command(self.seed, self.instances))
    }
}

/// The command that replays `seed` (with `instances` servers) with its
/// event log.
pub fn replay_command(seed: u64, instances: usize) -> String {
    match instances {
        0 | 1 => format!("make sim SEED={seed}"),
        n => format!("make sim SEED={seed} INSTANCES={n}"),
    }
}

enum Item {
    Bytes(ConnId, End, Vec<u8>),
    ServerTimer(usize),
    ServerBack(usize),
    Client(usize),
    ClientBack(usize),
    Action,
    DiskBack(usize),
    /// An instance's follower: a notification woke it, or a second passed.
    Follow(usize),
}

impl Item {
    fn kind(&self) -> String {
        match self {
            Item::Bytes(c, e, b) => format!("{} bytes on {c} to {e:?}", b.len()),
            Item::ServerTimer(k) => format!("server {k} timer"),
            Item::ServerBack(k) => format!("server {k} back"),
            Item::Client(i) => format!("c{i} timer"),
            Item::ClientBack(i) => format!("c{i} back"),
            Item::Action => "workload".into(),
            Item::DiskBack(k) => format!("server {k} disk back"),
            Item::Follow(k) => format!("server {k} follower"),
        }
    }
}

/// A committed change: its client, path and content (`None`: a DELETE).
type Committed = (usize, String, Option<Version>);

pub(crate) struct World {
    seed: u64,
    rng: Rng,
    settings: Settings,
    net: Net,
    /// The only server's disk (one instance).
    disk: Disk,
    /// The server engines: one, or the instances sharing a database.
    servers: Vec<Option<Server>>,
    servers_back: Vec<Option<Instant>>,
    /// With several instances: what they share and their schedules.
    multi: Option<Instances>,
    /// The instance each connection reached.
    conn_home: BTreeMap<ConnId, usize>,
    clients: Vec<Client>,
    clients_back: Vec<Option<Instant>>,
    disk_back: Vec<Option<Instant>>,
    hist: History,
    paths: Vec<&'static str>,
    steps_left: usize,
    step: usize,
    next_action: Option<Instant>,
    t0: Instant,
    now: Instant,
    log: Vec<String>,
    events: u64,
    /// Every version acknowledged so far, the highest: a new one must be
    /// higher, whatever crashed in between.
    top_version: u64,
    broken: Vec<String>,
    written: u64,
    /// Uploads the server committed whose 0x0001 has not reached the
    /// client (yet, or ever: lost with a crash or a reset).
    /// (`None`: a DELETE.)
    unacked: BTreeSet<Committed>,
    /// The last change committed: a crash may tear its journal line while
    /// its 0x0001 has not reached the client.
    /// With when, and the highest version before it. On one instance's own
    /// disk, the changes of a group commit (committed at one instant) share
    /// one journal append: a crash may tear them all, and the highest
    /// version before is the one before the first of them.
    last_commit: Option<(Committed, Instant, u64)>,
    /// How many versions that last append holds.
    last_append_versions: usize,
    /// The group commit of the last change committed.
    last_batch: u64,
    /// The instance and version of that last commit.
    last_commit_at: (usize, u64),
    /// Contents of commits a kill -9 cut off before their COMMIT: put in
    /// the bucket, named by nothing (see [`KNOWN_LIMITS`]).
    cut_off: BTreeSet<Strong>,
    /// Uploads committed again by a client that never heard the first
    /// commit's 0x0001 (see [`KNOWN_LIMITS`]).
    replays: BTreeSet<Committed>,
    /// Paths sent to a client again after its own change overtook a
    /// delivery (see [`KNOWN_LIMITS`]).
    resent: BTreeSet<(usize, String)>,
    /// Every version committed (and not torn by a crash in its commit):
    /// each must still be known at the end, current or in the history.
    versions: Vec<(String, u64)>,
    /// Kill the server at its next commit.
    crash_on_commit: bool,
    /// Resurrections the known limits explain, for the summary.
    known: Vec<String>,
}

/// Two cases where a content a client replaced or deleted comes back to
/// its path, which the checks report as known limits (counted in the
/// summary, each with its seed) rather than failures, because nothing in
/// the protocol can tell them apart from a legitimate change:
/// - a replay: a client's upload was committed, its 0x0001 was lost with a
///   crash or a reset, other clients replaced and deleted it, and the
///   client, which cannot know it was ever accepted (the tombstone names
///   only the last version), uploads it again on reconnecting. Telling
///   needs the server's version history (issue 17);
/// - an overtaken delivery: a delivery of an older version (or a DELETE)
///   was on its way to a client over a link slower than section 6's 1 s
///   bound when the client's own newer change was committed; the older
///   version lands after it, the client's next edit becomes a conflict
///   copy, and the server sends its version again (`resend_after`).
///   Nothing is lost (the no-lost-work check still applies in full).
///
/// With several instances, a third, counted the same way:
/// - a content cut off: an instance was killed in a commit before its
///   COMMIT, after the upload's content was put in the bucket (contents go
///   there before the line that names them). No line names it and no
///   instance made it a candidate of the collector, and the shared bucket
///   has no sweep at start (an instance cannot tell it from an upload
///   another instance is about to commit), so the object stays.
pub const KNOWN_LIMITS: &str = "replayed upload after a lost 0x0001; delivery overtaken beyond the 1 s bound; \
     content put before a COMMIT that a kill -9 cut off, left in the shared bucket";

/// The most instances `--instances` takes.
pub const MAX_INSTANCES: usize = 3;

const PATHS: [&str; 8] = ["a.txt", "b.txt", "c.md", "d/e.txt", "d/f.txt", "g/h/i.bin", "j", "k l.txt"];

/// Runs `seed` with one server. `Ok` when every invariant held.
pub fn run(seed: u64) -> Result<Outcome, Failure> {
    run_with(seed, 1)
}

/// Runs `seed` with `instances` server instances (1: the one server on its
/// own disk; 2 to [`MAX_INSTANCES`]: instances sharing a database and a
/// bucket). `Ok` when every invariant held.
pub fn run_with(seed: u64, instances: usize) -> Result<Outcome, Failure> {
    let instances = instances.clamp(1, MAX_INSTANCES);
    let mut w = World::new(seed, instances);
    let result = w.main_loop();
    match result {
        Ok(o) if w.broken.is_empty() => Ok(o),
        Ok(o) => Err(Failure { seed, instances, what: std::mem::take(&mut w.broken), log: o.log }),
        Err(mut what) => {
            what.append(&mut w.broken);
            Err(Failure { seed, instances, what, log: w.log })
        }
    }
}

impl World {
    fn new(seed: u64, instances: usize) -> Self {
        let mut rng = Rng::new(seed);
        let n_clients = *rng.pick(&[2, 2, 3, 3, 3, 4, 4, 5, 6, 8]);
        let settings = Settings {
            chunk: *rng.pick(&[7, 16, 64, 256]),
            parallel: *rng.pick(&[1, 2, 4, 8]),
            timers: Timers { keepalive: Duration::from_secs(2), dead_peer: Duration::from_secs(6) },
            limits: Limits { max_open: 256, idle: Duration::from_secs(6), remember_expired: 64 },
            debounce: Duration::from_millis(20),
            rescan: Duration::from_secs(5),
        };
        let links = (0..n_clients)
            .map(|_| LinkShape {
                latency: Duration::from_micros(rng.range(50, 20_000)),
                jitter: Duration::from_micros(rng.range(0, 10_000)),
                stall_percent: *rng.pick(&[0, 0, 1, 5]),
            })
            .collect();
        let net = Net::new(rng.fork(), links);
        let t0 = Instant::now();
        let disk = Disk::default();
        let clients = (0..n_clients).map(|i| Client::new(i, settings, t0, WALL_BASE_SECS)).collect();
        let n_paths = rng.range(2, PATHS.len() as u64) as usize;
        let steps = rng.range(10, 60) as usize;
        // Drawn after everything a one-server run draws, so that a seed
        // runs with one server exactly as it did before instances existed.
        let multi = (instances > 1).then(|| Instances::new(instances, n_clients, &mut rng, t0));
        let mut w = World {
            seed,
            rng,
            settings,
            net,
            disk,
            servers: (0..instances).map(|_| None).collect(),
            servers_back: vec![None; instances],
            multi,
            conn_home: BTreeMap::new(),
            clients,
            clients_back: vec![None; n_clients],
            disk_back: vec![None; instances],
            hist: History::default(),
            paths: PATHS[..n_paths].to_vec(),
            steps_left: steps,
            step: 0,
            next_action: Some(t0),
            t0,
            now: t0,
            log: Vec::new(),
            events: 0,
            top_version: 0,
            broken: Vec::new(),
            written: 0,
            unacked: BTreeSet::new(),
            last_commit: None,
            last_append_versions: 0,
            last_batch: 0,
            last_commit_at: (0, 0),
            cut_off: BTreeSet::new(),
            crash_on_commit: false,
            versions: Vec::new(),
            replays: BTreeSet::new(),
            resent: BTreeSet::new(),
            known: Vec::new(),
        };
        for k in 0..instances {
            w.servers[k] = Server::start(&w.backing(k), &w.name(k), settings, t0, WALL_BASE_SECS * 1_000_000_000).ok();
        }
        w.say(format!(
            "seed {seed}: {n_clients} clients, chunk {}, parallel {}, paths {:?}, {steps} steps",
            settings.chunk, settings.parallel, w.paths
        ));
        if let Some(m) = &w.multi {
            let line = format!(
                "{instances} instances sharing a database and a bucket: clients first on {:?}, \
                 notifications lost {}%, collector grace {:?}",
                m.home, m.lost_percent, m.grace
            );
            w.say(line);
        }
        w
    }

    /// What server `k` starts on.
    fn backing(&self, k: usize) -> Backing {
        match &self.multi {
            Some(m) => m.backing(k),
            None => Backing::Local(self.disk.clone()),
        }
    }

    /// Server `k`'s name in the log: "server" when it is the only one.
    fn name(&self, k: usize) -> String {
        match self.multi {
            Some(_) => format!("s{k}"),
            None => "server".into(),
        }
    }

    /// Which servers are up.
    fn up(&self) -> Vec<bool> {
        self.servers.iter().map(Option::is_some).collect()
    }

    fn say(&mut self, line: String) {
        let t = self.now.saturating_duration_since(self.t0).as_secs_f64();
        self.log.push(format!("{t:>9.4} {line}"));
    }

    fn main_loop(&mut self) -> Result<Outcome, Vec<String>> {
        let mut settle_by: Option<Instant> = None;
        loop {
            if self.steps_left == 0 && settle_by.is_none() {
                self.heal();
                settle_by = Some(self.now + SETTLE_LIMIT);
            }
            if let Some(by) = settle_by {
                if self.settled() {
                    let checked = self.check();
                    return checked.map(|()| Outcome {
                        steps: self.step,
                        events: self.events,
                        virtual_time: self.now - self.t0,
                        files: self.live_files().map_or(0, |f| f.len()),
                        bytes: self.net.bytes,
                        known: self.known.clone(),
                        log: std::mem::take(&mut self.log),
                    });
                }
                if self.now > by {
                    return Err(self.unsettled());
                }
            }
            if self.events > MAX_EVENTS {
                let mut out =
                    vec![format!("ran away: over {MAX_EVENTS} events without settling (a timer that never moves on?)")];
                out.extend(self.unsettled().into_iter().skip(1));
                return Err(out);
            }
            let Some(t) = self.next_time() else {
                return Err(vec!["nothing left to happen, yet not settled".into()]);
            };
            self.now = self.now.max(t);
            if let Some(m) = &self.multi {
                m.set_clock(self.wall_ns());
            }
            let mut items = self.ready();
            if self.events + items.len() as u64 > MAX_EVENTS {
                let kinds: Vec<String> = items.iter().map(Item::kind).collect();
                self.say(format!("ready at the limit: {kinds:?}"));
            }
            // Several events ready at once: any order may happen.
            for i in (1..items.len()).rev() {
                let j = self.rng.index(i + 1);
                items.swap(i, j);
            }
            for item in items {
                self.events += 1;
                self.handle(item);
                self.closures();
                self.notifications();
            }
        }
    }

    fn next_time(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        consider(self.net.next_due());
        for s in self.servers.iter().flatten() {
            consider(s.deadline());
        }
        self.servers_back.iter().for_each(|t| consider(*t));
        self.disk_back.iter().for_each(|t| consider(*t));
        consider(self.next_action);
        if let Some(m) = &self.multi {
            (0..m.len()).for_each(|k| consider(m.follow_at(k)));
        }
        for (c, back) in self.clients.iter().zip(&self.clients_back) {
            consider(c.deadline());
            consider(*back);
        }
        at
    }

    fn ready(&mut self) -> Vec<Item> {
        let now = self.now;
        let mut items: Vec<Item> = self.net.take_due(now).into_iter().map(|(c, e, b)| Item::Bytes(c, e, b)).collect();
        for (k, s) in self.servers.iter().enumerate() {
            if s.as_ref().and_then(|s| s.deadline()).is_some_and(|t| t <= now) {
                items.push(Item::ServerTimer(k));
            }
        }
        for (k, back) in self.servers_back.iter().enumerate() {
            if back.is_some_and(|t| t <= now) {
                items.push(Item::ServerBack(k));
            }
        }
        for (k, back) in self.disk_back.iter().enumerate() {
            if back.is_some_and(|t| t <= now) {
                items.push(Item::DiskBack(k));
            }
        }
        if self.next_action.is_some_and(|t| t <= now) {
            items.push(Item::Action);
        }
        for i in 0..self.clients.len() {
            if self.clients[i].deadline().is_some_and(|t| t <= now) {
                items.push(Item::Client(i));
            }
            if self.clients_back[i].is_some_and(|t| t <= now) {
                items.push(Item::ClientBack(i));
            }
        }
        if let Some(m) = &self.multi {
            for k in 0..m.len() {
                if m.follow_at(k).is_some_and(|t| t <= now) {
                    items.push(Item::Follow(k));
                }
            }
        }
        items
    }

    fn handle(&mut self, item: Item) {
        let now = self.now;
        let mut sfx = Vec::new();
        let mut cfx = Vec::new();
        // The server whose effects `sfx` holds.
        let mut from = 0;
        match item {
            Item::Bytes(conn, to, bytes) => {
                if !self.net.is_open(conn) {
                    return;
                }
                match to {
                    End::Server => {
                        from = self.conn_home.get(&conn).copied().unwrap_or(0);
                        if let Some(s) = &mut self.servers[from] {
                            s.on_bytes(conn, &bytes, now, &mut self.net, &mut sfx);
                        }
                    }
                    End::Client => {
                        if let Some(c) =
                            self.clients.iter_mut().find(|c| c.conns().is_some_and(|(u, d)| u == conn || d == conn))
                        {
                            c.on_bytes(conn, &bytes, now, &mut self.net, &mut cfx);
                        }
                    }
                }
            }
            Item::ServerTimer(k) => {
                from = k;
                if let Some(s) = &mut self.servers[k] {
                    s.on_timeout(now, &mut self.net, &mut sfx);
                }
            }
            Item::ServerBack(k) => {
                self.servers_back[k] = None;
                let name = self.name(k);
                match Server::start(&self.backing(k), &name, self.settings, now, self.wall_ns()) {
                    Ok(s) => {
                        self.servers[k] = Some(s);
                        if let Some(m) = &mut self.multi {
                            m.set_up(k, Some(now));
                        }
                        self.say(format!("{name}: started again"));
                    }
                    Err(e) => self.broken.push(format!("{name} cannot start again: {e}")),
                }
            }
            Item::DiskBack(k) => {
                self.disk_back[k] = None;
                match &self.multi {
                    Some(m) => m.set_full(k, false),
                    None => self.disk.blobs.set_full(false),
                }
                let name = self.name(k);
                self.say(format!("{name}: disk has room again"));
            }
            Item::Follow(k) => {
                from = k;
                self.follow(k, &mut sfx);
            }
            Item::ClientBack(i) => {
                self.clients_back[i] = None;
                self.clients[i].restart(now);
                self.say(format!("c{i}: started again"));
            }
            Item::Client(i) => {
                if self.clients[i].wants_connect(now) {
                    from = self.connect(i, &mut sfx);
                } else {
                    self.clients[i].on_timeout(now, &mut self.net, &mut cfx);
                }
            }
            Item::Action => self.action(),
        }
        self.effects(sfx.into_iter().map(|e| (from, e)).collect(), cfx);
    }

    fn wall_ns(&self) -> i64 {
        WALL_BASE_SECS * 1_000_000_000 + self.now.saturating_duration_since(self.t0).as_nanos() as i64
    }

    /// Client `i` connects; returns the server it reached (whose effects
    /// `sfx` gets).
    fn connect(&mut self, i: usize, sfx: &mut Vec<server::Effect>) -> usize {
        let now = self.now;
        let up = self.up();
        let k = match &mut self.multi {
            Some(m) => m.reach(i, &up, &mut self.rng),
            None => 0,
        };
        let up_ok = self.servers[k].is_some() && self.net.reachable(i, now);
        if !up_ok {
            self.clients[i].connect_failed(now);
            return k;
        }
        let up = self.net.open(i);
        let down = self.net.open(i);
        self.conn_home.insert(up, k);
        self.conn_home.insert(down, k);
        self.clients[i].connected_on(up, down, now);
        if let Some(m) = &mut self.multi {
            // The pairing catches up first.
            m.caught_up(k);
        }
        if let Some(s) = &mut self.servers[k] {
            let id = s.accept(i, (up, down), now, &mut self.net, sfx);
            let to = if self.multi.is_some() { format!(" to s{k}") } else { String::new() };
            self.say(format!("c{i}: connected{to}, session {id}"));
        }
        k
    }

    /// Both ends hear of every closed connection.
    fn closures(&mut self) {
        loop {
            let closed = self.net.take_closed();
            if closed.is_empty() {
                return;
            }
            let mut sfx = Vec::new();
            let mut cfx = Vec::new();
            for (conn, client) in closed {
                let k = self.conn_home.get(&conn).copied().unwrap_or(0);
                if let Some(s) = &mut self.servers[k] {
                    let mut fx = Vec::new();
                    s.on_closed(conn, &mut self.net, &mut fx);
                    sfx.extend(fx.into_iter().map(|e| (k, e)));
                }
                self.clients[client].on_closed(conn, self.now, &mut self.net, &mut cfx);
            }
            self.effects(sfx, cfx);
        }
    }

    fn effects(&mut self, sfx: Vec<(usize, server::Effect)>, cfx: Vec<client::Effect>) {
        let mut crash = None;
        for (k, e) in sfx {
            match e {
                server::Effect::Log(l) => self.say(l),
                server::Effect::Resent { client, path } => {
                    let name = self.name(k);
                    self.say(format!("{name}: {path:?} sent to c{client} again: its own change overtook a delivery"));
                    self.resent.insert((client, path));
                }
                server::Effect::Committed { client, path, content, version, batch } => {
                    if version > 0 {
                        let key = (client, path.clone(), content);
                        // With a shared catalog each change of a batch is
                        // its own transaction.
                        let same_append = self.multi.is_none()
                            && self.last_commit.as_ref().is_some_and(|(_, at, _)| *at == self.now)
                            && self.last_commit_at.0 == k
                            && self.last_batch == batch;
                        self.last_batch = batch;
                        let top_before = match (&self.last_commit, same_append) {
                            (Some((_, _, before)), true) => *before,
                            _ => self.top_version,
                        };
                        self.last_append_versions = if same_append { self.last_append_versions + 1 } else { 1 };
                        self.last_commit = Some((key.clone(), self.now, top_before));
                        self.last_commit_at = (k, version);
                        self.versions.push((path.clone(), version));
                        if !self.unacked.insert(key.clone()) && content.is_some() {
                            self.replays.insert(key);
                        }
                        if self.crash_on_commit {
                            // Killed right in this commit, before anything
                            // came of it (once its effects are recorded).
                            self.crash_on_commit = false;
                            crash = Some(k);
                        }
                    }
                    let what = content.map_or("delete".to_owned(), |c| self.hist.describe(Some(c)));
                    let name = self.name(k);
                    self.say(format!("{name}: c{client} {path:?} {what} -> version {version}"));
                    if version > 0 {
                        if version <= self.top_version {
                            self.broken.push(format!(
                                "version {version} of {path:?} acknowledged after version {} was: versions must only grow",
                                self.top_version
                            ));
                        }
                        self.top_version = self.top_version.max(version);
                    }
                }
            }
        }
        for e in cfx {
            match e {
                client::Effect::Log(l) => self.say(l),
                client::Effect::Installed { client, path, incoming, local, base } => {
                    let v = |c: Option<dropsync_core::reconcile::Content>| {
                        self.hist.describe(c.map(|c| Version { md5: c.md5, size: c.size }))
                    };
                    let line = format!(
                        "c{client}: delivery of {path:?}: {} over {} (base {})",
                        v(incoming),
                        v(local),
                        v(base)
                    );
                    self.say(line);
                }
                client::Effect::Sent { client, path, what } => self.say(format!("c{client}: {path:?} {what}")),
                client::Effect::Echo { client, path } => {
                    self.say(format!("c{client}: {path:?} delivered unasked, and it already had that version"));
                    // The server sends a path again after an overtaken
                    // delivery (resend_after): an answer, not an echo.
                    if self.resent.contains(&(client, path.clone())) {
                        continue;
                    }
                    self.broken.push(format!(
                        "c{client} was sent {path:?} in a version it already had, unasked (the update queue skips a client's own changes and what it was delivered)"
                    ));
                }
                client::Effect::Acked { client, path, content } => {
                    self.unacked.remove(&(client, path, content.map(|c| Version { md5: c.md5, size: c.size })));
                }
            }
        }
        if let Some(k) = crash {
            self.crash_server(k);
        }
    }

    /// The next workload step: a change or a fault.
    fn action(&mut self) {
        if self.steps_left == 0 {
            self.next_action = None;
            return;
        }
        self.steps_left -= 1;
        self.step += 1;
        let n = self.clients.len();
        let c = self.rng.index(n);
        // With several instances, one fault more: a lock connection breaks.
        let weights: &[u64] = match self.multi {
            None => &[40, 12, 6, 2, 6, 4, 3, 4, 4, 3, 2, 2, 2],
            Some(_) => &[40, 12, 6, 2, 6, 4, 3, 4, 4, 3, 2, 2, 2, 2],
        };
        match self.rng.weighted(weights) {
            0 => {
                let p = self.pick_path();
                self.write(c, p);
            }
            1 => self.delete_one(c),
            2 => self.rename(c),
            3 => {
                let files: Vec<String> = self.clients[c].fs.keys().cloned().collect();
                self.say(format!("c{c}: mass delete of {} files", files.len()));
                for p in files {
                    self.delete(c, &p);
                }
            }
            4 => {
                // Several clients write one path at nearly the same time.
                let p = self.pick_path();
                let k = 2 + self.rng.index(n - 1);
                for _ in 0..k {
                    let c = self.rng.index(n);
                    self.write(c, p);
                }
            }
            5 => self.crash_client(c),
            6 if self.rng.chance(50) => {
                self.crash_on_commit = true;
                let who = if self.multi.is_some() { "the next instance to commit" } else { "server" };
                self.say(format!("{who}: to be killed at its next commit"));
            }
            6 => {
                let k = self.pick_server();
                self.crash_server(k);
            }
            7 => {
                let until = self.now + Duration::from_millis(self.rng.range(300, 10_000));
                self.net.partition(c, until);
                self.say(format!("c{c}: partitioned from the server for {:?}", until - self.now));
            }
            8 => {
                if let Some((up, _)) = self.clients[c].conns() {
                    self.say(format!("c{c}: connection reset"));
                    self.net.close(up);
                }
            }
            9 => {
                let until = self.now + Duration::from_millis(self.rng.range(200, 5000));
                let k = self.pick_server();
                match &self.multi {
                    Some(m) => m.set_full(k, true),
                    None => self.disk.blobs.set_full(true),
                }
                self.disk_back[k] = Some(self.disk_back[k].map_or(until, |t| t.max(until)));
                let name = self.name(k);
                self.say(format!("{name}: disk full"));
            }
            10 => {
                let until = self.now + Duration::from_millis(self.rng.range(200, 5000));
                let by = Duration::from_millis(self.rng.range(5, 1500));
                let k = self.pick_server();
                if let Some(s) = &mut self.servers[k] {
                    s.slow_disk(until, by);
                    let name = s.name().to_owned();
                    self.say(format!("{name}: disk slow by {by:?} for {:?}", until - self.now));
                }
            }
            11 => {
                let until = self.now + Duration::from_millis(self.rng.range(200, 5000));
                self.clients[c].disk_full(until);
                self.say(format!("c{c}: disk full for {:?}", until - self.now));
            }
            13 => {
                let k = self.pick_server();
                if let Some(s) = &self.servers[k] {
                    if let Some(h) = s.shared() {
                        h.locks.break_connection();
                        let name = s.name().to_owned();
                        self.say(format!("{name}: its lock connection broke (the database dropped its locks)"));
                    }
                }
            }
            _ => {
                // A file edited again and again while it goes out.
                let p = self.pick_path();
                for _ in 0..3 {
                    self.write(c, p);
                }
            }
        }
        let gap = match self.rng.weighted(&[3, 5, 3, 1]) {
            0 => 0,
            1 => self.rng.range(1, 50),
            2 => self.rng.range(50, 800),
            _ => self.rng.range(800, 6000),
        };
        self.next_action = Some(self.now + Duration::from_millis(gap));
    }

    /// The server a fault hits: the only one, or an instance drawn.
    fn pick_server(&mut self) -> usize {
        match &self.multi {
            Some(m) => self.rng.index(m.len()),
            None => 0,
        }
    }

    fn pick_path(&mut self) -> &'static str {
        let i = self.rng.index(self.paths.len());
        self.paths[i]
    }

    fn prior(&self, c: usize, path: &str) -> Option<Version> {
        self.clients[c].fs.get(path).map(|b| Version::of(b))
    }

    fn write(&mut self, c: usize, path: &str) {
        self.written += 1;
        let mut bytes = format!("seed {} write {} by c{c} at {path}\n", self.seed, self.written).into_bytes();
        let filler = self.rng.range(0, u64::from(self.settings.chunk) * 4) as usize;
        bytes.extend((0..filler).map(|_| b'a' + self.rng.below(26) as u8));
        let prior = self.prior(c, path);
        let v = self.hist.write(self.step, c, path, prior, &bytes);
        let what = self.hist.describe(Some(v));
        self.say(format!("c{c}: write {path:?} {what}"));
        self.clients[c].write(path, bytes, self.now);
    }

    fn delete(&mut self, c: usize, path: &str) {
        let Some(prior) = self.prior(c, path) else { return };
        self.hist.delete(self.step, c, path, prior);
        self.say(format!("c{c}: delete {path:?}"));
        self.clients[c].remove(path, self.now);
    }

    fn delete_one(&mut self, c: usize) {
        let files: Vec<String> = self.clients[c].fs.keys().cloned().collect();
        if files.is_empty() {
            return;
        }
        let p = files[self.rng.index(files.len())].clone();
        self.delete(c, &p);
    }

    fn rename(&mut self, c: usize) {
        let files: Vec<String> = self.clients[c].fs.keys().cloned().collect();
        if files.is_empty() {
            return;
        }
        let from = files[self.rng.index(files.len())].clone();
        let to = self.pick_path();
        if from == to {
            return;
        }
        let Some(bytes) = self.clients[c].fs.get(&from).cloned() else { return };
        // A content moved back to a path that held it is the same bytes
        // twice at one path: the checks cannot order such writes (a client
        // that saw the first may replace the second), so it is not done.
        let v = Version::of(&bytes);
        if self.hist.events.iter().any(|e| e.path == to && e.change == Change::Write(v)) {
            return;
        }
        self.delete(c, &from);
        let prior = self.prior(c, to);
        self.hist.write(self.step, c, to, prior, &bytes);
        self.say(format!("c{c}: renamed {from:?} to {to:?}"));
        self.clients[c].write(to, bytes, self.now);
    }

    fn crash_client(&mut self, c: usize) {
        if !self.clients[c].running {
            return;
        }
        self.clients[c].crash(&mut self.net);
        let back = self.now + Duration::from_millis(self.rng.range(50, 5000));
        self.clients_back[c] = Some(back);
        self.say(format!("c{c}: killed (kill -9), back in {:?}", back - self.now));
    }

    /// kill -9 of server `k` (with several instances, the others go on).
    fn crash_server(&mut self, k: usize) {
        let Some(s) = self.servers[k].take() else { return };
        let name = s.name().to_owned();
        let handles = s.shared().cloned();
        let session = handles.as_ref().map(|h| h.session);
        drop(s);
        // Killed in the middle of its last commit's append (or, sharing a
        // database, before its COMMIT): possible only if nothing came of
        // that commit yet (the crash is at the same instant, so its reply
        // and deliveries are still in flight, and are lost with the
        // connections).
        let during = self
            .last_commit
            .as_ref()
            .filter(|(key, at, _)| *at == self.now && self.unacked.contains(key) && self.last_commit_at.0 == k);
        if let Some((_, _, top_before)) = during.cloned() {
            if self.rng.chance(50) {
                let undone = match (&self.multi, session) {
                    (Some(m), Some(session)) => {
                        let line = db::lock(&m.db).roll_back_last(session, self.last_commit_at.1);
                        line.map(|l| self.cut_off.extend(l.strong.filter(|_| l.state == EntryState::File))).is_some()
                    }
                    _ => {
                        let rng = &mut self.rng;
                        self.disk.catalog.tear_last_append(|len| rng.index(len.max(1)))
                    }
                };
                if undone {
                    // Those versions were never seen: they may be handed
                    // out again.
                    self.top_version = top_before;
                    for _ in 0..self.last_append_versions {
                        self.versions.pop();
                    }
                    let what = match self.multi {
                        Some(_) => "its last transaction never committed (killed before its COMMIT)",
                        None => "its last journal append torn by the crash",
                    };
                    self.say(format!("{name}: {what}"));
                }
            }
        }
        if let (Some(m), Some(h)) = (&mut self.multi, handles) {
            // Its connections to the database end: its advisory locks go.
            h.locks.end();
            m.set_up(k, None);
        }
        for conn in self.net.open_conns() {
            if self.conn_home.get(&conn) == Some(&k) {
                self.net.close(conn);
            }
        }
        let back = self.now + Duration::from_millis(self.rng.range(50, 3000));
        self.servers_back[k] = Some(back);
        self.say(format!("{name}: killed (kill -9), back in {:?}", back - self.now));
    }

    /// Instance `k`'s follower: catches up (and queues what it brings for
    /// its clients), and on its collector's turn collects.
    fn follow(&mut self, k: usize, sfx: &mut Vec<server::Effect>) {
        let now = self.now;
        let wall = self.wall_ns();
        let Some(m) = &mut self.multi else { return };
        // Caught up as of now: the follow below applies (and reports)
        // everything the database holds.
        let collect = m.followed(k, now);
        let gone = if collect { m.collect(wall) } else { 0 };
        if let Some(s) = &mut self.servers[k] {
            s.follow(now, &mut self.net, sfx);
            if gone > 0 {
                sfx.push(server::Effect::Log(format!("{}: collected {gone} content(s) no line names", s.name())));
            }
        }
    }

    /// With several instances, each commit notifies every instance that is
    /// up (each follower then catches up, unless the notification is lost).
    fn notifications(&mut self) {
        let up = self.up();
        let Some(m) = &mut self.multi else { return };
        let notices = db::lock(&m.db).take_notices();
        for _ in notices {
            m.notify(self.now, &up, &mut self.rng);
        }
    }

    /// The workload is over: partitions heal, stopped processes start.
    fn heal(&mut self) {
        self.net.heal();
        self.say("workload over: partitions healed; waiting for everything to settle".into());
    }
}
