//! The simulated network. A connection has two directions; each delivers
//! its bytes in order, after a latency of its own, in pieces of any size
//! (so every parser meets every split). A link can stall (a segment held
//! for seconds), be partitioned from the server (nothing passes until it
//! heals; new connections fail) or be reset (both directions close, what
//! was in flight is lost, as with an RST).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use dropsync_soak::rng::Rng;

/// One connection, named for the whole run.
pub type ConnId = u64;

/// Which end receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum End {
    /// The server's end.
    Server,
    /// The client's end.
    Client,
}

#[derive(Debug, Default)]
struct Pipe {
    /// Bytes in flight, each with when it may arrive (non-decreasing).
    segs: VecDeque<(Instant, Vec<u8>)>,
    last: Option<Instant>,
}

#[derive(Debug)]
struct Conn {
    client: usize,
    to_server: Pipe,
    to_client: Pipe,
}

impl Conn {
    fn pipe(&mut self, to: End) -> &mut Pipe {
        match to {
            End::Server => &mut self.to_server,
            End::Client => &mut self.to_client,
        }
    }
}

/// How a client's link behaves, drawn per seed.
#[derive(Debug, Clone, Copy)]
pub struct LinkShape {
    /// One-way latency.
    pub latency: Duration,
    /// Extra random delay, up to this much.
    pub jitter: Duration,
    /// Percent of segments held back by a stall.
    pub stall_percent: u64,
}

/// Every connection of the run.
#[derive(Debug)]
pub struct Net {
    rng: Rng,
    conns: BTreeMap<ConnId, Conn>,
    next_id: ConnId,
    links: Vec<LinkShape>,
    /// Per client: partitioned from the server until then.
    partitioned: Vec<Option<Instant>>,
    /// Connections closed since [`take_closed`](Self::take_closed), with
    /// their client: both ends must hear of it.
    closed: Vec<(ConnId, usize)>,
    /// Bytes that crossed, for the log's summary.
    pub bytes: u64,
}

impl Net {
    /// A network for clients with these links.
    pub fn new(rng: Rng, links: Vec<LinkShape>) -> Self {
        let n = links.len();
        Net { rng, conns: BTreeMap::new(), next_id: 1, links, partitioned: vec![None; n], closed: Vec::new(), bytes: 0 }
    }

    /// Whether `client` can reach the server at `now`.
    pub fn reachable(&self, client: usize, now: Instant) -> bool {
        !matches!(self.partitioned[client], Some(until) if until > now)
    }

    /// Cuts `client` off from the server until `until`.
    pub fn partition(&mut self, client: usize, until: Instant) {
        self.partitioned[client] = Some(until);
    }

    /// Heals every partition.
    pub fn heal(&mut self) {
        self.partitioned.iter_mut().for_each(|p| *p = None);
    }

    /// A new connection of `client` (the caller checked it is reachable).
    pub fn open(&mut self, client: usize) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(id, Conn { client, to_server: Pipe::default(), to_client: Pipe::default() });
        id
    }

    /// Whether `id` is open.
    pub fn is_open(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    /// Closes `id` both ways; what was in flight is lost. False if it was
    /// closed already.
    pub fn close(&mut self, id: ConnId) -> bool {
        match self.conns.remove(&id) {
            Some(c) => {
                self.closed.push((id, c.client));
                true
            }
            None => false,
        }
    }

    /// The connections closed since the last call, with their clients.
    pub fn take_closed(&mut self) -> Vec<(ConnId, usize)> {
        std::mem::take(&mut self.closed)
    }

    /// Connections open now.
    pub fn open_conns(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// `bytes` written at `now` on `id` toward `to`.
    pub fn send(&mut self, now: Instant, id: ConnId, to: End, bytes: Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let shape = self.links[conn.client];
        let mut at = now + shape.latency;
        if !shape.jitter.is_zero() {
            at += Duration::from_micros(self.rng.below(shape.jitter.as_micros() as u64 + 1));
        }
        if self.rng.chance(shape.stall_percent) {
            at += Duration::from_millis(self.rng.range(200, 3000));
        }
        let pipe = conn.pipe(to);
        // In order within a direction: never before what was sent earlier.
        let at = pipe.last.map_or(at, |last| at.max(last));
        pipe.last = Some(at);
        pipe.segs.push_back((at, bytes));
    }

    /// When the next bytes may arrive anywhere.
    pub fn next_due(&self) -> Option<Instant> {
        let mut best: Option<Instant> = None;
        for conn in self.conns.values() {
            let held = self.partitioned[conn.client];
            for pipe in [&conn.to_server, &conn.to_client] {
                if let Some((at, _)) = pipe.segs.front() {
                    let at = held.map_or(*at, |h| (*at).max(h));
                    best = Some(best.map_or(at, |b| b.min(at)));
                }
            }
        }
        best
    }

    /// Everything that arrives by `now`: per direction with bytes due, a
    /// piece of random size from its front.
    pub fn take_due(&mut self, now: Instant) -> Vec<(ConnId, End, Vec<u8>)> {
        let mut out = Vec::new();
        for (&id, conn) in self.conns.iter_mut() {
            if self.partitioned[conn.client].is_some_and(|until| until > now) {
                continue;
            }
            for to in [End::Server, End::Client] {
                let pipe = conn.pipe(to);
                let Some((at, seg)) = pipe.segs.front_mut() else { continue };
                if *at > now {
                    continue;
                }
                let n =
                    if seg.len() > 1 && self.rng.chance(30) { 1 + self.rng.index(seg.len() - 1) } else { seg.len() };
                let piece: Vec<u8> = if n == seg.len() {
                    pipe.segs.pop_front().map(|(_, s)| s).unwrap_or_default()
                } else {
                    seg.drain(..n).collect()
                };
                self.bytes += piece.len() as u64;
                out.push((id, to, piece));
            }
        }
        out
    }

    /// Whether nothing is in flight anywhere.
    pub fn is_quiet(&self) -> bool {
        self.conns.values().all(|c| c.to_server.segs.is_empty() && c.to_client.segs.is_empty())
    }
}
