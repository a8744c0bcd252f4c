//! The server's shared state: configuration, the library, the connected
//! client list, the work queue, and the operations that touch several of
//! them (starting and ending sessions, fan-out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use dropsync_core::liveness::Timers;
use dropsync_core::locks::SessionId;
use dropsync_core::pairing::{ConnId, Pairing};
use dropsync_io::scheduler::WorkQueue;

use crate::accept::Half;
use crate::metrics::Metrics;
use crate::session::Session;

/// Settings from the command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Chunk size of outgoing transfers.
    pub chunk_size: u32,
    /// Largest incoming chunk payload.
    pub max_chunk: u32,
    /// Longest accepted name.
    pub max_name_len: usize,
    /// Most sessions at once.
    pub max_clients: usize,
    /// Most sessions from one IP address at once, so that one address
    /// cannot fill `max_clients` and lock everyone else out.
    pub max_clients_per_address: usize,
    /// Idle time before a keep-alive is sent.
    pub keepalive: Duration,
    /// Silence after which a connection is dropped.
    pub dead_peer: Duration,
    /// Worker pool size; 0 = a dedicated sender thread per client.
    pub workers: usize,
    /// Most transfers interleaved to one client at once.
    pub parallel: usize,
    /// Most uploads open at once on one connection (section 9: never
    /// below 256); the first message of one more gets 0x0080.
    pub max_transfers: usize,
    /// Refuse a new file that differs from a live one in letter case alone
    /// (not `--allow-case-twins`).
    pub refuse_case_twins: bool,
    /// [ext] Large uploads are delivered while they arrive (`streams`;
    /// not `--no-streaming`).
    pub streaming: bool,
}

impl Config {
    /// Section 9's intervals.
    pub fn timers(&self) -> Timers {
        Timers { keepalive: self.keepalive, dead_peer: self.dead_peer }
    }

    /// How often blocked reads wake up to check keep-alives and shutdown.
    pub fn tick(&self) -> Duration {
        self.keepalive.min(Duration::from_secs(1)).max(Duration::from_millis(50))
    }
}

/// Connections waiting for their partner, and the pairing table, under one
/// lock so that a half is never paired after it gave up waiting.
pub struct Handshakes {
    /// The pairing logic.
    pub pairing: Pairing<IpAddr>,
    /// Unpaired connections, by id.
    pub parked: HashMap<ConnId, Half>,
    /// Live sessions by their connection ids.
    pub by_conn: HashMap<ConnId, SessionId>,
}

/// Everything shared by the server's threads.
pub struct Server {
    /// Settings.
    pub config: Config,
    /// Files, META-DATA and locks.
    pub library: crate::library::Library,
    /// The connected-client list.
    sessions: Mutex<HashMap<SessionId, Arc<Session>>>,
    /// Pairing state.
    pub handshakes: Mutex<Handshakes>,
    /// The worker pool's FIFO of clients with work (pool mode only).
    pub work: WorkQueue<SessionId>,
    /// Set once SIGINT/SIGTERM arrived.
    pub shutting_down: AtomicBool,
    /// Outgoing transfers in progress (shutdown waits for their ABORTs).
    pub active_transfers: AtomicUsize,
    /// What `--http` shows (counted whether or not it is on: a few atomics).
    pub metrics: Metrics,
    /// Who gets in: TLS identity and enrolled clients.
    pub gate: crate::gate::Gate,
    /// The chunk MD5s of contents uploaded lately, for their deliveries.
    pub chunk_digests: crate::chunk_digests::ChunkDigests,
    /// [ext] The listing each client acknowledged, to send it only what
    /// changed since (`dropsync_core::delta_index`).
    pub acks: Mutex<dropsync_core::delta_index::Acks>,
    next_id: AtomicU64,
}

/// [ext] A store id for this run's table of versions
/// (`dropsync_core::delta_index`): random, so that no client takes a
/// listing of another run's table, or another server's, for one of this.
fn store_id() -> dropsync_proto::index::StoreId {
    use std::io::Read;
    let mut id = [0u8; 16];
    if std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut id)).is_err() {
        // No randomness to be had: the time and the process id, mixed.
        let seed = format!("{:?} {}", std::time::SystemTime::now(), std::process::id());
        id = dropsync_proto::md5(seed.as_bytes());
    }
    id
}

impl Server {
    /// [ext] The listings clients acknowledged.
    pub fn acks(&self) -> MutexGuard<'_, dropsync_core::delta_index::Acks> {
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A server with no clients yet.
    pub fn new(config: Config, library: crate::library::Library, gate: crate::gate::Gate) -> Self {
        Self {
            config,
            library,
            sessions: Mutex::new(HashMap::new()),
            handshakes: Mutex::new(Handshakes {
                pairing: Pairing::new(),
                parked: HashMap::new(),
                by_conn: HashMap::new(),
            }),
            work: WorkQueue::new(),
            shutting_down: AtomicBool::new(false),
            active_transfers: AtomicUsize::new(0),
            metrics: Metrics::new(),
            gate,
            chunk_digests: Default::default(),
            acks: Mutex::new(dropsync_core::delta_index::Acks::new(store_id())),
            next_id: AtomicU64::new(1),
        }
    }

    /// A fresh id for a connection or session.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<SessionId, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The handshake state.
    pub fn handshakes(&self) -> MutexGuard<'_, Handshakes> {
        self.handshakes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of connected clients.
    pub fn client_count(&self) -> usize {
        self.sessions().len()
    }

    /// Live sessions from `ip`.
    pub fn sessions_from(&self, ip: IpAddr) -> usize {
        self.sessions().values().filter(|s| s.ip == ip).count()
    }

    /// A live session by id.
    pub fn session(&self, id: SessionId) -> Option<Arc<Session>> {
        self.sessions().get(&id).cloned()
    }

    /// Every live session.
    pub fn all_sessions(&self) -> Vec<Arc<Session>> {
        self.sessions().values().cloned().collect()
    }

    /// Adds a session to the connected-client list.
    pub fn add_session(&self, s: Arc<Session>) {
        self.sessions().insert(s.id, s);
    }

    /// Tells whoever sends to `s` that it has work.
    pub fn wake(&self, s: &Session) {
        if self.config.workers > 0 {
            self.work.schedule(s.id);
        } else {
            // A dedicated sender blocks on the queue itself: a push wakes
            // it, and so does this for work that is not in the queue (a
            // META-DATA listing [ext], an upload offered to stream [ext]).
            s.queue.nudge();
        }
    }

    /// Queues `path` for every connected client except `except` (the
    /// uploader); a path already queued is not added again. Each client's
    /// queue lock is held only for its own push.
    pub fn fan_out(&self, path: &str, except: Option<SessionId>) {
        for s in self.all_sessions() {
            if Some(s.id) != except && s.queue.push(path) {
                self.wake(&s);
            }
        }
    }

    /// Ends a session: removes it from the client list, releases its locks,
    /// shuts its sockets down. Idempotent.
    pub fn end_session(&self, s: &Session, why: &str) {
        if !s.close() {
            return;
        }
        self.sessions().remove(&s.id);
        self.work.forget(&s.id);
        let released = self.library.locks().release_all(s.id);
        {
            let mut hs = self.handshakes();
            let conns: Vec<ConnId> = hs.by_conn.iter().filter(|(_, &sid)| sid == s.id).map(|(&c, _)| c).collect();
            for c in conns {
                hs.by_conn.remove(&c);
                let _ = hs.pairing.on_closed(c);
            }
        }
        log::info!(
            "disconnect {} ({why}); {} lock(s) released; {} client(s) left",
            s.who(),
            released,
            self.client_count()
        );
    }
}
