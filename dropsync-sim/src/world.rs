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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use dropsync_core::liveness::Timers;
use dropsync_core::open_transfers::Limits;
use dropsync_soak::model::{Change, History, Tree, Version};
use dropsync_soak::rng::Rng;

use crate::client::{self, Client};
use crate::net::{ConnId, End, LinkShape, Net};
use crate::server::{self, Disk, Server};
use crate::Settings;

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
    /// What broke.
    pub what: Vec<String>,
    /// The event log.
    pub log: Vec<String>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "seed {} FAILED:", self.seed)?;
        for w in &self.what {
            writeln!(f, "  - {w}")?;
        }
        write!(f, "replay: {}", replay_command(self.seed))
    }
}

/// The command that replays `seed` with its event log.
pub fn replay_command(seed: u64) -> String {
    format!("make sim SEED={seed}")
}

enum Item {
    Bytes(ConnId, End, Vec<u8>),
    ServerTimer,
    ServerBack,
    Client(usize),
    ClientBack(usize),
    Action,
    DiskBack,
}

impl Item {
    fn kind(&self) -> String {
        match self {
            Item::Bytes(c, e, b) => format!("{} bytes on {c} to {e:?}", b.len()),
            Item::ServerTimer => "server timer".into(),
            Item::ServerBack => "server back".into(),
            Item::Client(i) => format!("c{i} timer"),
            Item::ClientBack(i) => format!("c{i} back"),
            Item::Action => "workload".into(),
            Item::DiskBack => "disk back".into(),
        }
    }
}

/// A committed change: its client, path and content (`None`: a DELETE).
type Committed = (usize, String, Option<Version>);

struct World {
    seed: u64,
    rng: Rng,
    settings: Settings,
    net: Net,
    disk: Disk,
    server: Option<Server>,
    server_back: Option<Instant>,
    clients: Vec<Client>,
    clients_back: Vec<Option<Instant>>,
    disk_back: Option<Instant>,
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
    /// With when, and the highest version before it.
    last_commit: Option<(Committed, Instant, u64)>,
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
pub const KNOWN_LIMITS: &str = "replayed upload after a lost 0x0001; delivery overtaken beyond the 1 s bound";

const PATHS: [&str; 8] = ["a.txt", "b.txt", "c.md", "d/e.txt", "d/f.txt", "g/h/i.bin", "j", "k l.txt"];

/// Runs `seed`. `Ok` when every invariant held.
pub fn run(seed: u64) -> Result<Outcome, Failure> {
    let mut w = World::new(seed);
    let result = w.main_loop();
    match result {
        Ok(o) if w.broken.is_empty() => Ok(o),
        Ok(o) => Err(Failure { seed, what: std::mem::take(&mut w.broken), log: o.log }),
        Err(mut what) => {
            what.append(&mut w.broken);
            Err(Failure { seed, what, log: w.log })
        }
    }
}

impl World {
    fn new(seed: u64) -> Self {
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
        let server = Server::start(disk.clone(), settings, t0, WALL_BASE_SECS * 1_000_000_000).ok();
        let clients = (0..n_clients).map(|i| Client::new(i, settings, t0, WALL_BASE_SECS)).collect();
        let n_paths = rng.range(2, PATHS.len() as u64) as usize;
        let steps = rng.range(10, 60) as usize;
        let mut w = World {
            seed,
            rng,
            settings,
            net,
            disk,
            server,
            server_back: None,
            clients,
            clients_back: vec![None; n_clients],
            disk_back: None,
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
            crash_on_commit: false,
            versions: Vec::new(),
            replays: BTreeSet::new(),
            resent: BTreeSet::new(),
            known: Vec::new(),
        };
        w.say(format!(
            "seed {seed}: {n_clients} clients, chunk {}, parallel {}, paths {:?}, {steps} steps",
            settings.chunk, settings.parallel, w.paths
        ));
        w
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
                        files: self.server.as_ref().map_or(0, |s| s.files().len()),
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
        consider(self.server.as_ref().and_then(|s| s.deadline()));
        consider(self.server_back);
        consider(self.disk_back);
        consider(self.next_action);
        for (c, back) in self.clients.iter().zip(&self.clients_back) {
            consider(c.deadline());
            consider(*back);
        }
        at
    }

    fn ready(&mut self) -> Vec<Item> {
        let now = self.now;
        let mut items: Vec<Item> = self.net.take_due(now).into_iter().map(|(c, e, b)| Item::Bytes(c, e, b)).collect();
        if self.server.as_ref().and_then(|s| s.deadline()).is_some_and(|t| t <= now) {
            items.push(Item::ServerTimer);
        }
        if self.server_back.is_some_and(|t| t <= now) {
            items.push(Item::ServerBack);
        }
        if self.disk_back.is_some_and(|t| t <= now) {
            items.push(Item::DiskBack);
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
        items
    }

    fn handle(&mut self, item: Item) {
        let now = self.now;
        let mut sfx = Vec::new();
        let mut cfx = Vec::new();
        match item {
            Item::Bytes(conn, to, bytes) => {
                if !self.net.is_open(conn) {
                    return;
                }
                match to {
                    End::Server => {
                        if let Some(s) = &mut self.server {
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
            Item::ServerTimer => {
                if let Some(s) = &mut self.server {
                    s.on_timeout(now, &mut self.net, &mut sfx);
                }
            }
            Item::ServerBack => {
                self.server_back = None;
                match Server::start(self.disk.clone(), self.settings, now, self.wall_ns()) {
                    Ok(s) => {
                        self.server = Some(s);
                        self.say("server: started again".into());
                    }
                    Err(e) => self.broken.push(format!("the server cannot start again: {e}")),
                }
            }
            Item::DiskBack => {
                self.disk_back = None;
                self.disk.blobs.set_full(false);
                self.say("server: disk has room again".into());
            }
            Item::ClientBack(i) => {
                self.clients_back[i] = None;
                self.clients[i].restart(now);
                self.say(format!("c{i}: started again"));
            }
            Item::Client(i) => {
                if self.clients[i].wants_connect(now) {
                    self.connect(i);
                } else {
                    self.clients[i].on_timeout(now, &mut self.net, &mut cfx);
                }
            }
            Item::Action => self.action(),
        }
        self.effects(sfx, cfx);
    }

    fn wall_ns(&self) -> i64 {
        WALL_BASE_SECS * 1_000_000_000 + self.now.saturating_duration_since(self.t0).as_nanos() as i64
    }

    fn connect(&mut self, i: usize) {
        let now = self.now;
        let up_ok = self.server.is_some() && self.net.reachable(i, now);
        if !up_ok {
            self.clients[i].connect_failed(now);
            return;
        }
        let up = self.net.open(i);
        let down = self.net.open(i);
        self.clients[i].connected_on(up, down, now);
        if let Some(s) = &mut self.server {
            let id = s.accept(i, up, down, now, &mut self.net);
            self.say(format!("c{i}: connected, session {id}"));
        }
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
                if let Some(s) = &mut self.server {
                    s.on_closed(conn, &mut self.net, &mut sfx);
                }
                self.clients[client].on_closed(conn, self.now, &mut self.net, &mut cfx);
            }
            self.effects(sfx, cfx);
        }
    }

    fn effects(&mut self, sfx: Vec<server::Effect>, cfx: Vec<client::Effect>) {
        let mut crash = false;
        for e in sfx {
            match e {
                server::Effect::Log(l) => self.say(l),
                server::Effect::Resent { client, path } => {
                    self.say(format!("server: {path:?} sent to c{client} again: its own change overtook a delivery"));
                    self.resent.insert((client, path));
                }
                server::Effect::Committed { client, path, content, version } => {
                    if version > 0 {
                        let key = (client, path.clone(), content);
                        self.last_commit = Some((key.clone(), self.now, self.top_version));
                        self.versions.push((path.clone(), version));
                        if !self.unacked.insert(key.clone()) && content.is_some() {
                            self.replays.insert(key);
                        }
                        if self.crash_on_commit {
                            // Killed right in this commit, before anything
                            // came of it (once its effects are recorded).
                            self.crash_on_commit = false;
                            crash = true;
                        }
                    }
                    let what = content.map_or("delete".to_owned(), |c| self.hist.describe(Some(c)));
                    self.say(format!("server: c{client} {path:?} {what} -> version {version}"));
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
        if crash {
            self.crash_server();
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
        match self.rng.weighted(&[40, 12, 6, 2, 6, 4, 3, 4, 4, 3, 2, 2, 2]) {
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
                self.say("server: to be killed at its next commit".into());
            }
            6 => self.crash_server(),
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
                self.disk.blobs.set_full(true);
                self.disk_back = Some(self.disk_back.map_or(until, |t| t.max(until)));
                self.say("server: disk full".into());
            }
            10 => {
                let until = self.now + Duration::from_millis(self.rng.range(200, 5000));
                let by = Duration::from_millis(self.rng.range(5, 1500));
                if let Some(s) = &mut self.server {
                    s.slow_disk(until, by);
                    self.say(format!("server: disk slow by {by:?} for {:?}", until - self.now));
                }
            }
            11 => {
                let until = self.now + Duration::from_millis(self.rng.range(200, 5000));
                self.clients[c].disk_full(until);
                self.say(format!("c{c}: disk full for {:?}", until - self.now));
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

    fn crash_server(&mut self) {
        let Some(s) = self.server.take() else { return };
        drop(s);
        // Killed in the middle of its last commit's append: possible only
        // if nothing came of that commit yet (the crash is at the same
        // instant, so its reply and deliveries are still in flight, and are
        // lost with the connections).
        let during = self.last_commit.as_ref().filter(|(k, at, _)| *at == self.now && self.unacked.contains(k));
        if let Some((_, _, top_before)) = during.cloned() {
            if self.rng.chance(50) {
                let rng = &mut self.rng;
                if self.disk.catalog.tear_last_append(|len| rng.index(len.max(1))) {
                    // That version was never seen: it may be handed out again.
                    self.top_version = top_before;
                    self.versions.pop();
                    self.say("server: its last journal append torn by the crash".into());
                }
            }
        }
        for conn in self.net.open_conns() {
            self.net.close(conn);
        }
        let back = self.now + Duration::from_millis(self.rng.range(50, 3000));
        self.server_back = Some(back);
        self.say(format!("server: killed (kill -9), back in {:?}", back - self.now));
    }

    /// The workload is over: partitions heal, stopped processes start.
    fn heal(&mut self) {
        self.net.heal();
        self.say("workload over: partitions healed; waiting for everything to settle".into());
    }

    fn settled(&self) -> bool {
        self.server_back.is_none()
            && self.disk_back.is_none()
            && self.clients_back.iter().all(Option::is_none)
            && self.server.as_ref().is_some_and(|s| s.is_idle())
            && self.clients.iter().all(|c| c.is_idle())
            && self.net.is_quiet()
    }

    fn unsettled(&self) -> Vec<String> {
        let mut out = vec![format!("not settled {SETTLE_LIMIT:?} after the workload ended")];
        if let Some(s) = &self.server {
            out.extend(s.backlog());
        }
        out.extend(self.clients.iter().filter(|c| !c.is_idle()).map(|c| c.backlog()));
        out
    }

    /// The invariants of a settled run.
    fn check(&mut self) -> Result<(), Vec<String>> {
        let mut known = Vec::new();
        let result = self.check_into(&mut known);
        self.known = known;
        result
    }

    fn check_into(&self, known: &mut Vec<String>) -> Result<(), Vec<String>> {
        let Some(server) = &self.server else { return Err(vec!["no server at the end".into()]) };
        let files = server.files();
        let tree: Tree = files.iter().map(|(p, b)| (p.clone(), Version::of(b))).collect();
        let mut out = Vec::new();
        for c in &self.clients {
            if c.fs != files {
                let mut diff = String::new();
                let ctree: Tree = c.fs.iter().map(|(p, b)| (p.clone(), Version::of(b))).collect();
                for p in tree.keys().chain(ctree.keys()).collect::<std::collections::BTreeSet<_>>() {
                    let (s, l) = (tree.get(p).copied(), ctree.get(p).copied());
                    if s != l {
                        let _ =
                            write!(diff, " {p:?}: server {} client {};", self.hist.describe(s), self.hist.describe(l));
                    }
                }
                out.push(format!("{} differs from the server:{diff}", c.backlog().split(':').next().unwrap_or("?")));
            }
        }
        out.extend(self.hist.lost_work(&tree));
        for r in self.hist.resurrected(&tree) {
            let gone = &self.hist.events[r.gone];
            let replay = self.replays.iter().any(|(_, p, v)| *p == r.path && *v == Some(r.content));
            let overtaken = self.resent.contains(&(gone.client, r.path.clone()));
            match (replay, overtaken) {
                (false, false) => out.push(self.hist.show_resurrection(&r)),
                (true, _) => known.push(format!("replayed upload: {:?}", r.path)),
                (_, true) => known.push(format!("overtaken delivery: {:?}", r.path)),
            }
        }
        out.extend(self.hist.torn(&tree));
        if server.temps_open() > 0 {
            out.push(format!("{} temp file(s) left on the server", server.temps_open()));
        }
        let versions: BTreeMap<String, u64> = server.versions();
        for p in versions.keys() {
            if let Some(h) = server.lock_holder(p) {
                out.push(format!("{p:?} still locked by session {h} (alive: {})", server.has_session(h)));
            }
        }
        let lost: Vec<&(String, u64)> = self.versions.iter().filter(|(p, v)| !server.keeps(p, *v)).collect();
        if !lost.is_empty() {
            out.push(format!("{} committed version(s) neither current nor in the history: {lost:?}", lost.len()));
        }
        let leaked = self.disk.blobs.unreferenced();
        if leaked > 0 {
            out.push(format!("{leaked} stored content(s) that no catalog line names"));
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }
}
