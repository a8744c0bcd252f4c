//! Pairing a client's send- and receive-connection into one session
//! (PROTOCOL.md section 1), as pure bookkeeping.
//!
//! The server accepts on two ports and cannot know which two connections
//! belong together until they say so. **\[ext\] HELLO pairing:** both carry a
//! HELLO with the same client id, and "a new session with the id of a live
//! session replaces the old one (the old connections are shut down)".
//! **Legacy peers:** "a connection that sends no HELLO within 1 s of
//! connecting (or whose first message is another type) is a legacy
//! connection; the server pairs legacy send- and receive-connections from the
//! same IP address in order of arrival".
//!
//! The driver decides which of the two a connection is (it owns the clock and
//! the socket, see [`HELLO_TIMEOUT`]) and reports it here; [`Pairing`] says
//! what to do. Connections are opaque [`ConnId`]s and addresses a generic
//! key, so this module needs no socket type. HELLO and legacy connections
//! never pair with each other, even from the same address: a HELLO names its
//! partner exactly, a legacy connection can only be guessed at.
//!
//! Each connection id is announced once (by [`Pairing::on_hello`] or
//! [`Pairing::on_legacy`]); the driver uses a fresh id for every accepted
//! connection, so a closed id never comes back.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use dropsync_proto::ClientId;

/// How long a new connection has to send HELLO before it counts as legacy
/// (section 1: "no HELLO within 1 s of connecting"). The driver applies it.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(1);

/// The server's name for one accepted connection, unique for the server's
/// lifetime.
pub type ConnId = u64;

/// Which server port a connection came in on, named from the client's point
/// of view as in section 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKind {
    /// Accepted on the send port: files flow client → server.
    Send,
    /// Accepted on the receive port: files flow server → client.
    Receive,
}

/// A paired session: one connection of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The connection on the send port.
    pub send: ConnId,
    /// The connection on the receive port.
    pub receive: ConnId,
    /// The id both sent in HELLO; `None` for a legacy pair.
    pub client_id: Option<ClientId>,
}

/// What the driver must do after announcing a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum PairEvent {
    /// No partner yet; keep the connection open and wait.
    Waiting,
    /// A session is complete: start it (reply to its HELLOs, send META-DATA).
    /// `replaces` is the live session with the same client id, as
    /// `(send, receive)`; it is already forgotten here, and the driver shuts
    /// its connections down.
    Paired {
        /// The connection on the send port.
        send: ConnId,
        /// The connection on the receive port.
        receive: ConnId,
        /// The id from HELLO; `None` for a legacy pair.
        client_id: Option<ClientId>,
        /// The live session this one replaces, as `(send, receive)`.
        replaces: Option<(ConnId, ConnId)>,
    },
    /// An unpaired HELLO connection of the same kind and id was waiting; the
    /// new one takes its place (the client gave up on it and reconnected).
    /// It is forgotten here; the driver closes it.
    Superseded(ConnId),
    /// The connection was already announced: nothing changed. A driver bug,
    /// worth a log line.
    AlreadyKnown,
}

/// Where one announced connection is.
#[derive(Debug)]
enum Slot<A> {
    /// An unpaired HELLO connection, findable in `hello_waiting`.
    Hello(ClientId, ConnKind),
    /// An unpaired legacy connection, in `legacy_waiting[A]`.
    Legacy(A, ConnKind),
    /// Half of a live session.
    Live(Session),
}

/// Unpaired legacy connections from one address, oldest first, by kind.
#[derive(Debug)]
struct LegacyWaiting {
    send: VecDeque<ConnId>,
    receive: VecDeque<ConnId>,
}

impl LegacyWaiting {
    fn of_kind(&mut self, kind: ConnKind) -> &mut VecDeque<ConnId> {
        match kind {
            ConnKind::Send => &mut self.send,
            ConnKind::Receive => &mut self.receive,
        }
    }
}

/// The server's table of connections that wait for a partner and of live
/// sessions. `A` is the peer address key (the IP address, without the port).
#[derive(Debug)]
pub struct Pairing<A: Eq + Hash + Clone> {
    conns: HashMap<ConnId, Slot<A>>,
    hello_waiting: HashMap<(ClientId, ConnKind), ConnId>,
    legacy_waiting: HashMap<A, LegacyWaiting>,
    /// Live HELLO sessions by client id, for replacement.
    live_by_id: HashMap<ClientId, Session>,
}

impl<A: Eq + Hash + Clone> Default for Pairing<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Eq + Hash + Clone> Pairing<A> {
    /// No connections, no sessions.
    pub fn new() -> Self {
        Self {
            conns: HashMap::new(),
            hello_waiting: HashMap::new(),
            legacy_waiting: HashMap::new(),
            live_by_id: HashMap::new(),
        }
    }

    /// `conn` sent HELLO with `client_id` as its first message.
    ///
    /// It pairs with a waiting HELLO connection of the other kind and the
    /// same id, replacing any live session of that id. A waiting one of the
    /// same kind and id is superseded by it. A live session of that id is
    /// untouched until the new session is complete, so a stray connection
    /// cannot end a working session on its own.
    pub fn on_hello(&mut self, conn: ConnId, kind: ConnKind, client_id: ClientId) -> PairEvent {
        if self.conns.contains_key(&conn) {
            return PairEvent::AlreadyKnown;
        }
        if let Some(partner) = self.hello_waiting.remove(&(client_id, other(kind))) {
            let session = session_of(conn, kind, partner, Some(client_id));
            let replaced = self.live_by_id.insert(client_id, session);
            if let Some(old) = replaced {
                self.conns.remove(&old.send);
                self.conns.remove(&old.receive);
            }
            self.conns.insert(session.send, Slot::Live(session));
            self.conns.insert(session.receive, Slot::Live(session));
            return paired(session, replaced);
        }
        self.conns.insert(conn, Slot::Hello(client_id, kind));
        match self.hello_waiting.insert((client_id, kind), conn) {
            Some(old) => {
                self.conns.remove(&old);
                PairEvent::Superseded(old)
            }
            None => PairEvent::Waiting,
        }
    }

    /// `conn`, from address `addr`, is legacy: no HELLO came within
    /// [`HELLO_TIMEOUT`], or its first message was another type. It pairs
    /// with the oldest waiting legacy connection of the other kind from the
    /// same address, or waits for one.
    pub fn on_legacy(&mut self, conn: ConnId, kind: ConnKind, addr: A) -> PairEvent {
        if self.conns.contains_key(&conn) {
            return PairEvent::AlreadyKnown;
        }
        let waiting = self
            .legacy_waiting
            .entry(addr.clone())
            .or_insert_with(|| LegacyWaiting {
                send: VecDeque::new(),
                receive: VecDeque::new(),
            });
        if let Some(partner) = waiting.of_kind(other(kind)).pop_front() {
            if waiting.send.is_empty() && waiting.receive.is_empty() {
                self.legacy_waiting.remove(&addr);
            }
            let session = session_of(conn, kind, partner, None);
            self.conns.insert(session.send, Slot::Live(session));
            self.conns.insert(session.receive, Slot::Live(session));
            return paired(session, None);
        }
        waiting.of_kind(kind).push_back(conn);
        self.conns.insert(conn, Slot::Legacy(addr, kind));
        PairEvent::Waiting
    }

    /// `conn` closed (or the driver is ending its session). An unpaired
    /// connection is simply forgotten: `None`. A connection of a live
    /// session ends the whole session here, and it is returned so the driver
    /// shuts down the other connection and releases the session's locks
    /// (section 9). Afterwards the other connection is unknown, so closing it
    /// returns `None`: each session is reported ended exactly once. A
    /// session replaced by [`PairEvent::Paired`] was reported there, and its
    /// connections are unknown here too.
    pub fn on_closed(&mut self, conn: ConnId) -> Option<Session> {
        match self.conns.remove(&conn)? {
            Slot::Hello(id, kind) => {
                self.hello_waiting.remove(&(id, kind));
                None
            }
            Slot::Legacy(addr, kind) => {
                if let Some(waiting) = self.legacy_waiting.get_mut(&addr) {
                    waiting.of_kind(kind).retain(|&c| c != conn);
                    if waiting.send.is_empty() && waiting.receive.is_empty() {
                        self.legacy_waiting.remove(&addr);
                    }
                }
                None
            }
            Slot::Live(session) => {
                self.conns.remove(&session.send);
                self.conns.remove(&session.receive);
                if let Some(id) = session.client_id {
                    if self.live_by_id.get(&id) == Some(&session) {
                        self.live_by_id.remove(&id);
                    }
                }
                Some(session)
            }
        }
    }

    /// The live session `conn` belongs to, if it is paired.
    pub fn session(&self, conn: ConnId) -> Option<Session> {
        match self.conns.get(&conn)? {
            Slot::Live(session) => Some(*session),
            Slot::Hello(..) | Slot::Legacy(..) => None,
        }
    }

    /// How many connections wait for a partner, for logs and for a driver
    /// that wants to cap half-open connections.
    pub fn waiting(&self) -> usize {
        self.conns
            .values()
            .filter(|slot| !matches!(slot, Slot::Live(_)))
            .count()
    }
}

fn other(kind: ConnKind) -> ConnKind {
    match kind {
        ConnKind::Send => ConnKind::Receive,
        ConnKind::Receive => ConnKind::Send,
    }
}

/// The session of `conn` (of `kind`) and its partner (of the other kind).
fn session_of(
    conn: ConnId,
    kind: ConnKind,
    partner: ConnId,
    client_id: Option<ClientId>,
) -> Session {
    match kind {
        ConnKind::Send => Session {
            send: conn,
            receive: partner,
            client_id,
        },
        ConnKind::Receive => Session {
            send: partner,
            receive: conn,
            client_id,
        },
    }
}

fn paired(session: Session, replaced: Option<Session>) -> PairEvent {
    PairEvent::Paired {
        send: session.send,
        receive: session.receive,
        client_id: session.client_id,
        replaces: replaced.map(|old| (old.send, old.receive)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use ConnKind::{Receive as R, Send as S};

    const X: ClientId = [1; 16];
    const Y: ClientId = [2; 16];

    /// One input to the table and what it must answer.
    #[derive(Debug, Clone, Copy)]
    enum Ev {
        Hello(ConnId, ConnKind, ClientId),
        Legacy(ConnId, ConnKind, &'static str),
        Closed(ConnId),
    }

    #[derive(Debug, PartialEq)]
    enum Out {
        Pair(PairEvent),
        Ended(Option<Session>),
    }

    use Ev::{Closed, Hello, Legacy};

    const WAIT: Out = Out::Pair(PairEvent::Waiting);

    fn pair(
        send: ConnId,
        receive: ConnId,
        id: Option<ClientId>,
        replaces: Option<(ConnId, ConnId)>,
    ) -> Out {
        Out::Pair(PairEvent::Paired {
            send,
            receive,
            client_id: id,
            replaces,
        })
    }

    fn ended(send: ConnId, receive: ConnId, id: Option<ClientId>) -> Out {
        Out::Ended(Some(Session {
            send,
            receive,
            client_id: id,
        }))
    }

    fn apply(table: &mut Pairing<&'static str>, ev: Ev) -> Out {
        match ev {
            Hello(conn, kind, id) => Out::Pair(table.on_hello(conn, kind, id)),
            Legacy(conn, kind, addr) => Out::Pair(table.on_legacy(conn, kind, addr)),
            Closed(conn) => Out::Ended(table.on_closed(conn)),
        }
    }

    #[test]
    fn table_of_cases() {
        let cases: Vec<(&str, Vec<(Ev, Out)>)> = vec![
            (
                "hello send then receive",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(2, R, X), pair(1, 2, Some(X), None)),
                ],
            ),
            (
                "hello receive then send",
                vec![
                    (Hello(1, R, X), WAIT),
                    (Hello(2, S, X), pair(2, 1, Some(X), None)),
                ],
            ),
            (
                "different ids do not pair",
                vec![(Hello(1, S, X), WAIT), (Hello(2, R, Y), WAIT)],
            ),
            (
                "two clients interleaved",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(2, S, Y), WAIT),
                    (Hello(3, R, Y), pair(2, 3, Some(Y), None)),
                    (Hello(4, R, X), pair(1, 4, Some(X), None)),
                ],
            ),
            (
                "two clients, receive first, crossed",
                vec![
                    (Hello(1, R, X), WAIT),
                    (Hello(2, R, Y), WAIT),
                    (Hello(3, S, X), pair(3, 1, Some(X), None)),
                    (Hello(4, S, Y), pair(4, 2, Some(Y), None)),
                ],
            ),
            (
                "second unpaired hello of a kind supersedes the first",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(2, S, X), Out::Pair(PairEvent::Superseded(1))),
                    (Hello(3, R, X), pair(2, 3, Some(X), None)),
                    (Closed(1), Out::Ended(None)),
                ],
            ),
            (
                "new session replaces the live one of its id",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(2, R, X), pair(1, 2, Some(X), None)),
                    (Hello(3, R, X), WAIT),
                    (Hello(4, S, X), pair(4, 3, Some(X), Some((1, 2)))),
                    (Closed(1), Out::Ended(None)),
                    (Closed(2), Out::Ended(None)),
                    (Closed(4), ended(4, 3, Some(X))),
                ],
            ),
            (
                "half a new session leaves the live one alone",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(2, R, X), pair(1, 2, Some(X), None)),
                    (Hello(3, S, X), WAIT),
                    (Closed(3), Out::Ended(None)),
                    (Closed(2), ended(1, 2, Some(X))),
                ],
            ),
            (
                "closing a live half ends the session once",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(2, R, X), pair(1, 2, Some(X), None)),
                    (Closed(1), ended(1, 2, Some(X))),
                    (Closed(2), Out::Ended(None)),
                    (Hello(3, S, X), WAIT),
                    (Hello(4, R, X), pair(3, 4, Some(X), None)),
                ],
            ),
            (
                "closed unpaired hello is forgotten",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Closed(1), Out::Ended(None)),
                    (Hello(2, R, X), WAIT),
                ],
            ),
            (
                "legacy pairs by address in order of arrival",
                vec![
                    (Legacy(1, S, "a"), WAIT),
                    (Legacy(2, S, "a"), WAIT),
                    (Legacy(3, S, "b"), WAIT),
                    (Legacy(4, R, "a"), pair(1, 4, None, None)),
                    (Legacy(5, R, "a"), pair(2, 5, None, None)),
                    (Legacy(6, R, "a"), WAIT),
                    (Legacy(7, R, "b"), pair(3, 7, None, None)),
                    (Legacy(8, S, "a"), pair(8, 6, None, None)),
                ],
            ),
            (
                "closed legacy half is skipped",
                vec![
                    (Legacy(1, S, "a"), WAIT),
                    (Legacy(2, S, "a"), WAIT),
                    (Closed(1), Out::Ended(None)),
                    (Legacy(3, R, "a"), pair(2, 3, None, None)),
                    (Closed(3), ended(2, 3, None)),
                ],
            ),
            (
                "legacy and hello from one address never mix",
                vec![
                    (Legacy(1, S, "a"), WAIT),
                    (Hello(2, R, X), WAIT),
                    (Hello(3, S, X), pair(3, 2, Some(X), None)),
                    (Legacy(4, R, "a"), pair(1, 4, None, None)),
                ],
            ),
            (
                "legacy sessions are never replaced",
                vec![
                    (Legacy(1, S, "a"), WAIT),
                    (Legacy(2, R, "a"), pair(1, 2, None, None)),
                    (Legacy(3, S, "a"), WAIT),
                    (Legacy(4, R, "a"), pair(3, 4, None, None)),
                    (Closed(2), ended(1, 2, None)),
                ],
            ),
            (
                "a conn is announced once",
                vec![
                    (Hello(1, S, X), WAIT),
                    (Hello(1, S, X), Out::Pair(PairEvent::AlreadyKnown)),
                    (Legacy(1, R, "a"), Out::Pair(PairEvent::AlreadyKnown)),
                    (Hello(2, R, X), pair(1, 2, Some(X), None)),
                    (Hello(2, R, Y), Out::Pair(PairEvent::AlreadyKnown)),
                ],
            ),
            (
                "closing an unknown conn does nothing",
                vec![(Closed(9), Out::Ended(None))],
            ),
        ];
        for (name, steps) in cases {
            let mut table = Pairing::new();
            for (i, (ev, want)) in steps.into_iter().enumerate() {
                assert_eq!(apply(&mut table, ev), want, "{name}: step {i} {ev:?}");
            }
        }
    }

    #[test]
    fn session_lookup_and_waiting_count() {
        let mut table = Pairing::new();
        assert_eq!(table.on_legacy(1, S, "a"), PairEvent::Waiting);
        assert_eq!(table.on_hello(2, S, X), PairEvent::Waiting);
        assert_eq!(table.waiting(), 2);
        assert_eq!(table.session(2), None);
        assert!(matches!(table.on_hello(3, R, X), PairEvent::Paired { .. }));
        let live = Session {
            send: 2,
            receive: 3,
            client_id: Some(X),
        };
        assert_eq!(
            (table.session(2), table.session(3)),
            (Some(live), Some(live))
        );
        assert_eq!(table.waiting(), 1);
        assert_eq!(table.on_closed(1), None);
        assert_eq!(table.waiting(), 0);
        assert!(
            table.legacy_waiting.is_empty(),
            "no empty per-address entry left behind"
        );
    }

    /// A random input. Connections are slots whose id changes on close, as
    /// a driver gives each accepted connection a fresh id.
    #[derive(Debug, Clone)]
    enum Step {
        Hello(usize, ConnKind, u8),
        Legacy(usize, ConnKind, u8),
        Closed(usize),
    }

    fn kind() -> impl Strategy<Value = ConnKind> {
        prop_oneof![Just(S), Just(R)]
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0..10usize, kind(), 0..3u8).prop_map(|(c, k, id)| Step::Hello(c, k, id)),
            2 => (0..10usize, kind(), 0..2u8).prop_map(|(c, k, a)| Step::Legacy(c, k, a)),
            2 => (0..10usize).prop_map(Step::Closed),
        ]
    }

    /// The driver closed `conn`: its slot gets a fresh id next time.
    fn retire(generation: &mut [u64; 10], conn: ConnId) {
        let slot = (conn % 100) as usize;
        if conn / 100 == generation[slot] {
            generation[slot] += 1;
        }
    }

    proptest! {
        #[test]
        fn pairs_are_sound(steps in proptest::collection::vec(step(), 0..150)) {
            let mut table: Pairing<u8> = Pairing::new();
            let mut generation = [0u64; 10];
            // What each accepted announcement said: kind, and id or address.
            let mut announced: HashMap<ConnId, (ConnKind, Result<ClientId, u8>)> = HashMap::new();
            let mut ever_paired: HashSet<ConnId> = HashSet::new();
            let mut live: HashSet<ConnId> = HashSet::new();
            for step in steps {
                let (conn, event) = match step {
                    Step::Hello(slot, kind, id) => {
                        let conn = slot as ConnId + 100 * generation[slot];
                        let ev = table.on_hello(conn, kind, [id; 16]);
                        if ev != PairEvent::AlreadyKnown {
                            announced.insert(conn, (kind, Ok([id; 16])));
                        }
                        (conn, ev)
                    }
                    Step::Legacy(slot, kind, addr) => {
                        let conn = slot as ConnId + 100 * generation[slot];
                        let ev = table.on_legacy(conn, kind, addr);
                        if ev != PairEvent::AlreadyKnown {
                            announced.insert(conn, (kind, Err(addr)));
                        }
                        (conn, ev)
                    }
                    Step::Closed(slot) => {
                        let conn = slot as ConnId + 100 * generation[slot];
                        generation[slot] += 1;
                        if let Some(s) = table.on_closed(conn) {
                            prop_assert!(s.send == conn || s.receive == conn);
                            prop_assert!(live.remove(&s.send) && live.remove(&s.receive), "ended a dead session");
                            // The driver shuts the partner down too.
                            retire(&mut generation, s.send ^ s.receive ^ conn);
                        } else {
                            prop_assert!(!live.contains(&conn), "live conn closed without ending its session");
                        }
                        continue;
                    }
                };
                match event {
                    PairEvent::Paired { send, receive, client_id, replaces } => {
                        prop_assert!(send == conn || receive == conn);
                        prop_assert!(ever_paired.insert(send), "{} paired twice", send);
                        prop_assert!(ever_paired.insert(receive), "{} paired twice", receive);
                        let (send_kind, send_key) = announced[&send];
                        let (receive_kind, receive_key) = announced[&receive];
                        prop_assert_eq!((send_kind, receive_kind), (S, R));
                        prop_assert_eq!(send_key, receive_key, "paired across ids or addresses");
                        prop_assert_eq!(client_id, send_key.ok());
                        if let Some((old_send, old_receive)) = replaces {
                            prop_assert!(live.remove(&old_send) && live.remove(&old_receive));
                            prop_assert_eq!(announced[&old_send].1, send_key, "replaced another id");
                            retire(&mut generation, old_send);
                            retire(&mut generation, old_receive);
                        }
                        live.insert(send);
                        live.insert(receive);
                    }
                    PairEvent::Superseded(old) => {
                        prop_assert_ne!(old, conn);
                        prop_assert_eq!(announced[&old], announced[&conn]);
                        prop_assert!(!ever_paired.contains(&old));
                        prop_assert_eq!(table.on_closed(old), None, "superseded conn is forgotten");
                        retire(&mut generation, old);
                    }
                    PairEvent::Waiting | PairEvent::AlreadyKnown => {}
                }
                for &c in &live {
                    prop_assert!(table.session(c).is_some());
                }
            }
        }
    }
}
