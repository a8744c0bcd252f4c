//! The clocks of one connection (PROTOCOL.md section 9, and section 1 for
//! legacy sessions), as a machine that is told the time instead of reading
//! it.
//!
//! "Each side sends a keep-alive after 15 s without sending anything on a
//! connection, and closes a connection that has received nothing for 60 s."
//! A legacy session is "not closed for silence alone (a legacy peer may
//! never send keep-alives)": there only a reply awaited for the dead-peer
//! time ends it. The driver reports what it sent and received, and whether
//! a reply is awaited; it asks [`Liveness::poll`] what is due and
//! [`Liveness::poll_timeout`] when to ask again.

use std::time::{Duration, Instant};

/// Section 9's two intervals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Send a keep-alive after this long without sending (15 s by default).
    pub keepalive: Duration,
    /// The peer is gone after this long without receiving (60 s by default).
    pub dead_peer: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers { keepalive: Duration::from_secs(15), dead_peer: Duration::from_secs(60) }
    }
}

/// What silence from the peer means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Silence {
    /// A session that said HELLO: nothing received for the dead-peer time
    /// ends it (keep-alives keep an idle one up).
    Ends,
    /// A legacy session (section 1): silence alone is allowed; only a reply
    /// awaited for the dead-peer time ends it.
    Allowed,
}

/// What is due now, from [`Liveness::poll`].
#[must_use = "a keep-alive must be sent, a gone peer's connection closed"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Nothing: ask again at [`Liveness::poll_timeout`].
    Nothing,
    /// Send a STATUS 0x8000, then report it with [`Liveness::on_sent`].
    KeepAlive,
    /// The peer is gone: close the connection (which ends the session).
    PeerGone(Gone),
}

/// Why the peer counts as gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// Nothing at all received for this long.
    Silent(Duration),
    /// A reply awaited for this long (the only reason in a legacy session).
    NoReply(Duration),
}

impl std::fmt::Display for Gone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Gone::Silent(d) => write!(f, "nothing received for {d:?}"),
            Gone::NoReply(d) => write!(f, "no reply for {d:?}"),
        }
    }
}

/// The clocks of one connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    timers: Timers,
    silence: Silence,
    last_sent: Instant,
    last_received: Instant,
    /// Since when a reply has been awaited with nothing received, if one is.
    awaiting_since: Option<Instant>,
}

impl Liveness {
    /// A connection that has just been set up at `now`: nothing is due for
    /// a whole interval.
    pub fn new(now: Instant, timers: Timers, silence: Silence) -> Self {
        Liveness { timers, silence, last_sent: now, last_received: now, awaiting_since: None }
    }

    /// The intervals in force.
    pub fn timers(&self) -> Timers {
        self.timers
    }

    /// Something (a message, a keep-alive) was written at `now`.
    pub fn on_sent(&mut self, now: Instant) {
        self.last_sent = self.last_sent.max(now);
    }

    /// Bytes arrived at `now` (part of a message counts: a large chunk on
    /// a slow link is not silence).
    pub fn on_received(&mut self, now: Instant) {
        self.last_received = self.last_received.max(now);
        if self.awaiting_since.is_some() {
            self.awaiting_since = Some(now);
        }
    }

    /// Whether a reply from the peer is awaited at `now` (a message sent and
    /// not answered yet). Only a legacy session needs it, where it is what
    /// makes silence count.
    pub fn set_awaiting(&mut self, now: Instant, awaiting: bool) {
        self.awaiting_since = match (awaiting, self.awaiting_since) {
            (false, _) => None,
            (true, None) => Some(now),
            (true, since) => since,
        };
    }

    /// What is due at `now`: the peer gone comes before a keep-alive.
    pub fn poll(&self, now: Instant) -> Due {
        if let Some(gone) = self.gone(now) {
            return Due::PeerGone(gone);
        }
        if now >= self.keepalive_at() {
            return Due::KeepAlive;
        }
        Due::Nothing
    }

    /// When [`poll`](Self::poll) may next have something to say (call it
    /// again then, or sooner after any `on_*` report).
    pub fn poll_timeout(&self) -> Instant {
        match self.dead_at() {
            Some(dead) => dead.min(self.keepalive_at()),
            None => self.keepalive_at(),
        }
    }

    fn keepalive_at(&self) -> Instant {
        self.last_sent + self.timers.keepalive
    }

    /// When the peer counts as gone if nothing arrives, if ever.
    fn dead_at(&self) -> Option<Instant> {
        match self.silence {
            Silence::Ends => Some(self.last_received + self.timers.dead_peer),
            Silence::Allowed => self.awaiting_since.map(|since| since + self.timers.dead_peer),
        }
    }

    fn gone(&self, now: Instant) -> Option<Gone> {
        let dead = self.dead_at()?;
        if now < dead {
            return None;
        }
        Some(match self.silence {
            Silence::Ends => Gone::Silent(self.timers.dead_peer),
            Silence::Allowed => Gone::NoReply(self.timers.dead_peer),
        })
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

    fn timers() -> Timers {
        Timers { keepalive: 15 * S, dead_peer: 60 * S }
    }

    #[test]
    fn a_keepalive_after_15_s_without_sending() {
        let t0 = epoch();
        let mut l = Liveness::new(t0, timers(), Silence::Ends);
        assert_eq!(l.poll(t0 + 14 * S), Due::Nothing);
        assert_eq!(l.poll_timeout(), t0 + 15 * S);
        assert_eq!(l.poll(t0 + 15 * S), Due::KeepAlive);
        l.on_sent(t0 + 15 * S);
        assert_eq!(l.poll(t0 + 16 * S), Due::Nothing);
        assert_eq!(l.poll_timeout(), t0 + 30 * S);
        // Receiving does not replace sending.
        l.on_received(t0 + 29 * S);
        assert_eq!(l.poll(t0 + 30 * S), Due::KeepAlive);
    }

    #[test]
    fn a_connection_that_has_received_nothing_for_60_s_is_closed() {
        let t0 = epoch();
        let mut l = Liveness::new(t0, timers(), Silence::Ends);
        l.on_sent(t0 + 59 * S);
        assert_eq!(l.poll(t0 + 59 * S), Due::Nothing);
        assert_eq!(l.poll(t0 + 60 * S), Due::PeerGone(Gone::Silent(60 * S)));
        // A keep-alive received (anything) keeps it up.
        let mut l = Liveness::new(t0, timers(), Silence::Ends);
        l.on_received(t0 + 50 * S);
        l.on_sent(t0 + 100 * S);
        assert_eq!(l.poll(t0 + 100 * S), Due::Nothing);
        assert_eq!(l.poll_timeout(), t0 + 110 * S);
    }

    #[test]
    fn a_legacy_session_is_not_closed_for_silence_alone() {
        let t0 = epoch();
        let mut l = Liveness::new(t0, timers(), Silence::Allowed);
        l.on_sent(t0 + 3600 * S);
        assert_eq!(l.poll(t0 + 3600 * S), Due::Nothing);
        // A reply awaited for the dead-peer time ends it.
        l.set_awaiting(t0 + 3600 * S, true);
        l.set_awaiting(t0 + 3630 * S, true);
        assert_eq!(l.poll_timeout(), t0 + 3615 * S);
        l.on_sent(t0 + 3650 * S);
        assert_eq!(l.poll(t0 + 3659 * S), Due::Nothing);
        assert_eq!(l.poll(t0 + 3660 * S), Due::PeerGone(Gone::NoReply(60 * S)));
        // Bytes arriving restart the wait; the reply ends it.
        l.on_received(t0 + 3655 * S);
        l.on_sent(t0 + 3700 * S);
        assert_eq!(l.poll(t0 + 3700 * S), Due::Nothing);
        l.set_awaiting(t0 + 3701 * S, false);
        l.on_sent(t0 + 9000 * S);
        assert_eq!(l.poll(t0 + 9000 * S), Due::Nothing);
    }

    #[test]
    fn a_late_report_never_moves_a_clock_back() {
        let t0 = epoch();
        let mut l = Liveness::new(t0, timers(), Silence::Ends);
        l.on_sent(t0 + 10 * S);
        l.on_sent(t0 + 5 * S);
        assert_eq!(l.poll_timeout(), t0 + 25 * S);
    }

    proptest! {
        /// For any schedule of reports: `poll` says nothing before
        /// `poll_timeout`, keep-alives come no later than the interval after
        /// the last send, and a HELLO peer is gone exactly when nothing
        /// arrived for the dead-peer time.
        #[test]
        fn poll_agrees_with_poll_timeout(steps in prop::collection::vec((0u64..40_000, 0u8..4), 1..60)) {
            let t0 = epoch();
            let timers = Timers { keepalive: 15 * S, dead_peer: 60 * S };
            let mut l = Liveness::new(t0, timers, Silence::Ends);
            let (mut now, mut sent, mut received) = (t0, t0, t0);
            for (gap_ms, what) in steps {
                let next = now + Duration::from_millis(gap_ms);
                if next < l.poll_timeout() {
                    prop_assert_eq!(l.poll(next), Due::Nothing);
                }
                now = next;
                match l.poll(now) {
                    Due::KeepAlive => {
                        prop_assert!(now >= sent + timers.keepalive);
                        l.on_sent(now);
                        sent = now;
                    }
                    Due::PeerGone(_) => prop_assert!(now >= received + timers.dead_peer),
                    Due::Nothing => {
                        prop_assert!(now < sent + timers.keepalive);
                        prop_assert!(now < received + timers.dead_peer);
                    }
                }
                match what {
                    0 => { l.on_sent(now); sent = now; }
                    1 => { l.on_received(now); received = now; }
                    _ => {}
                }
            }
        }
    }
}
