//! The transfers open on one connection, on the receiving side: one
//! [`Receiver`] per file plus whatever the driver keeps for it (`S`: a temp
//! file, a lock), and the connection-wide rules of PROTOCOL.md section 9
//! that no single transfer can enforce:
//!
//! - "A receiver may refuse the first message of a transfer beyond its limit
//!   of transfers open on one connection with 0x0080."
//! - "An open transfer that has had no message of its own for 60 s is
//!   aborted by its receiver (partial data dropped, lock released), even
//!   while keep-alives keep the connection up."
//!
//! The server's inbound connection and the client's receive connection both
//! keep their transfers here. Time comes in as arguments.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use dropsync_proto::StatusCode;

use crate::receiver::Receiver;

/// The limits of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most transfers open at once; the first message of one more is
    /// refused with 0x0080. Section 9: a server's is never below 256.
    pub max_open: usize,
    /// A transfer with no message of its own for this long is aborted (the
    /// dead-peer time, 60 s by default).
    pub idle: Duration,
    /// How many names of transfers aborted for idleness are remembered, so
    /// that the next message of one is refused (0x0080) rather than taken
    /// for the first message of a new transfer. Without that, a chunk that
    /// comes after the abort would open a transfer in the middle of the
    /// file, and a FINISHED with no whole-file digest (section 4) would
    /// commit a truncated file. The oldest is forgotten first.
    pub remember_expired: usize,
}

/// The verdict on the first message of a transfer, from
/// [`OpenTransfers::begin`].
#[must_use = "a refused transfer must be answered with its STATUS"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Begin {
    /// The transfer is open already: handle the message with its receiver.
    Open,
    /// No transfer of that name: the driver sets one up (lock, temp file)
    /// and calls [`OpenTransfers::insert`], or refuses it itself.
    New,
    /// Refused with this STATUS (0x0080), which ends it (section 4): beyond
    /// the limit, or the late message of a transfer aborted for idleness.
    Refused(StatusCode),
}

/// Why [`OpenTransfers::begin`] refused, for the driver's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_open` transfers are open.
    Limit,
    /// The transfer was aborted for idleness.
    Expired,
}

#[derive(Debug)]
struct Open<S> {
    receiver: Receiver,
    last_msg: Instant,
    state: S,
}

/// The receiving side of the transfers open on one connection.
#[derive(Debug)]
pub struct OpenTransfers<S> {
    limits: Limits,
    open: HashMap<String, Open<S>>,
    expired: VecDeque<String>,
    last_refusal: Option<Refusal>,
}

impl<S> OpenTransfers<S> {
    /// No transfer open.
    pub fn new(limits: Limits) -> Self {
        OpenTransfers { limits, open: HashMap::new(), expired: VecDeque::new(), last_refusal: None }
    }

    /// A message of the transfer of `name` arrived at `now` (a FILE_CHUNK or
    /// a FINISHED; an ABORT goes to [`abort`](Self::abort)). Counts as the
    /// transfer's own message for the idle rule.
    pub fn begin(&mut self, name: &str, now: Instant) -> Begin {
        if let Some(open) = self.open.get_mut(name) {
            open.last_msg = now;
            return Begin::Open;
        }
        if let Some(i) = self.expired.iter().position(|n| n == name) {
            self.expired.remove(i);
            self.last_refusal = Some(Refusal::Expired);
            return Begin::Refused(StatusCode::IN_USE);
        }
        if self.open.len() >= self.limits.max_open {
            self.last_refusal = Some(Refusal::Limit);
            return Begin::Refused(StatusCode::IN_USE);
        }
        Begin::New
    }

    /// Why the last [`Begin::Refused`] was given.
    pub fn last_refusal(&self) -> Option<Refusal> {
        self.last_refusal
    }

    /// Opens the transfer of `name` (after [`Begin::New`]) with its
    /// receiver and the driver's `state`.
    pub fn insert(&mut self, name: &str, receiver: Receiver, state: S, now: Instant) {
        self.open.insert(name.to_owned(), Open { receiver, last_msg: now, state });
    }

    /// The open transfer of `name`: its receiver and the driver's state.
    pub fn get_mut(&mut self, name: &str) -> Option<(&mut Receiver, &mut S)> {
        self.open.get_mut(name).map(|o| (&mut o.receiver, &mut o.state))
    }

    /// Ends the transfer of `name` (committed, discarded, refused by a
    /// verdict) and hands back what it held.
    pub fn remove(&mut self, name: &str) -> Option<(Receiver, S)> {
        self.open.remove(name).map(|o| (o.receiver, o.state))
    }

    /// An ABORT of `name`: the open transfer is ended (returned, to be
    /// dropped), and a transfer aborted for idleness is forgotten. Section
    /// 4: either way the reply is 0x0001.
    pub fn abort(&mut self, name: &str) -> Option<S> {
        self.expired.retain(|n| n != name);
        self.remove(name).map(|(_, s)| s)
    }

    /// Aborts every transfer that has had no message of its own for the
    /// idle limit at `now`, and returns them (name and state, to drop: that
    /// removes the partial data and releases the lock).
    pub fn expire(&mut self, now: Instant) -> Vec<(String, S)> {
        let idle = self.limits.idle;
        let names: Vec<String> = self
            .open
            .iter()
            .filter(|(_, o)| now.saturating_duration_since(o.last_msg) >= idle)
            .map(|(n, _)| n.clone())
            .collect();
        let mut ended = Vec::with_capacity(names.len());
        for name in names {
            if let Some(open) = self.open.remove(&name) {
                if self.limits.remember_expired > 0 {
                    if self.expired.len() >= self.limits.remember_expired {
                        self.expired.pop_front();
                    }
                    self.expired.push_back(name.clone());
                }
                ended.push((name, open.state));
            }
        }
        ended
    }

    /// When the next transfer falls idle if nothing arrives for it (call
    /// [`expire`](Self::expire) then); `None` with nothing open.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.open.values().map(|o| o.last_msg + self.limits.idle).min()
    }

    /// Transfers open now.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// True with no transfer open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Ends every transfer (the connection is gone) and hands back their
    /// names and states.
    pub fn drain(&mut self) -> Vec<(String, S)> {
        self.expired.clear();
        self.open.drain().map(|(n, o)| (n, o.state)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    /// Any instant will do as the start of virtual time: nothing depends
    /// on its value (the core reads no clock; the drivers' does).
    fn epoch() -> Instant {
        dropsync_io::clock::now()
    }

    fn limits(max_open: usize) -> Limits {
        Limits { max_open, idle: 60 * S, remember_expired: 2 }
    }

    fn open(t: &mut OpenTransfers<u32>, name: &str, now: Instant) {
        assert_eq!(t.begin(name, now), Begin::New);
        t.insert(name, Receiver::new(16), 0, now);
    }

    #[test]
    fn a_transfer_beyond_the_limit_of_transfers_open_on_one_connection_gets_0x0080() {
        let t0 = epoch();
        let mut t = OpenTransfers::new(limits(2));
        open(&mut t, "a", t0);
        open(&mut t, "b", t0);
        assert_eq!(t.begin("c", t0), Begin::Refused(StatusCode::IN_USE));
        assert_eq!(t.last_refusal(), Some(Refusal::Limit));
        // The open ones carry on; once one ends there is room again.
        assert_eq!(t.begin("a", t0), Begin::Open);
        assert!(t.remove("a").is_some());
        assert_eq!(t.begin("c", t0), Begin::New);
    }

    #[test]
    fn an_open_transfer_with_no_message_of_its_own_for_60_s_is_aborted_by_its_receiver() {
        let t0 = epoch();
        let mut t = OpenTransfers::new(limits(8));
        open(&mut t, "quiet", t0);
        open(&mut t, "busy", t0);
        assert_eq!(t.poll_timeout(), Some(t0 + 60 * S));
        assert_eq!(t.begin("busy", t0 + 30 * S), Begin::Open);
        assert!(t.expire(t0 + 59 * S).is_empty());
        let ended = t.expire(t0 + 60 * S);
        assert_eq!(ended, vec![("quiet".to_string(), 0)]);
        assert_eq!(t.poll_timeout(), Some(t0 + 90 * S));
        // Its next message is refused, which ends it; then it is forgotten.
        assert_eq!(t.begin("quiet", t0 + 61 * S), Begin::Refused(StatusCode::IN_USE));
        assert_eq!(t.last_refusal(), Some(Refusal::Expired));
        assert_eq!(t.begin("quiet", t0 + 62 * S), Begin::New);
    }

    #[test]
    fn an_abort_of_an_expired_transfer_forgets_it() {
        let t0 = epoch();
        let mut t = OpenTransfers::new(limits(8));
        open(&mut t, "f", t0);
        assert_eq!(t.expire(t0 + 60 * S).len(), 1);
        assert_eq!(t.abort("f"), None);
        assert_eq!(t.begin("f", t0 + 61 * S), Begin::New);
    }

    #[test]
    fn only_the_newest_expired_names_are_remembered() {
        let t0 = epoch();
        let mut t = OpenTransfers::new(limits(8));
        for n in ["a", "b", "c"] {
            open(&mut t, n, t0);
        }
        assert_eq!(t.expire(t0 + 60 * S).len(), 3);
        let refused = ["a", "b", "c"].iter().filter(|n| t.begin(n, t0 + 61 * S) != Begin::New).count();
        assert_eq!(refused, 2);
    }

    proptest! {
        /// Whatever the schedule, never more than `max_open` transfers are
        /// open, and none of them is older than the idle limit after an
        /// `expire` at that time.
        #[test]
        fn limits_hold(steps in prop::collection::vec((0u8..6, 0u64..30_000, 0u8..4), 1..200)) {
            let t0 = epoch();
            let lim = Limits { max_open: 3, idle: 10 * S, remember_expired: 2 };
            let mut t = OpenTransfers::<()>::new(lim);
            let mut now = t0;
            let mut last: HashMap<String, Instant> = HashMap::new();
            for (file, gap_ms, op) in steps {
                now += Duration::from_millis(gap_ms);
                let name = format!("f{file}");
                match op {
                    0 | 1 => match t.begin(&name, now) {
                        Begin::New => { t.insert(&name, Receiver::new(16), (), now); last.insert(name, now); }
                        Begin::Open => { last.insert(name, now); }
                        Begin::Refused(code) => prop_assert_eq!(code, StatusCode::IN_USE),
                    },
                    2 => { t.remove(&name); last.remove(&name); }
                    _ => {
                        for (n, ()) in t.expire(now) {
                            prop_assert!(now.duration_since(last[&n]) >= lim.idle);
                            last.remove(&n);
                        }
                        for at in last.values() {
                            prop_assert!(now.duration_since(*at) < lim.idle);
                        }
                    }
                }
                prop_assert!(t.len() <= lim.max_open);
                prop_assert_eq!(t.len(), last.len());
            }
        }
    }
}
