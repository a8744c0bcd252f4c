//! The client's sync policy for one session (PROTOCOL.md section 7), with
//! no I/O: what to send next, what one path's local state means, and what
//! to do once the server answered. The control thread looks at files and
//! talks to the connection; every decision it makes about them is here,
//! taking what it saw (a file's content, whether an operation on the path
//! is under way, a reply) and `now`, and returning what to do.
//!
//! The rules, each in one place:
//! - REQUESTs go before uploads, each path queued once ([`Jobs`]); a path
//!   with an operation under way waits for it to end (deferred);
//! - a path that equals its base is in sync; a change given up is not sent
//!   again until the content changes ([`SyncPolicy::judge`]);
//! - "A reply 0x0040 or 0x0020 gives up on that change" — 0x0040 only
//!   until [`LOCKED_RETRY`] later (the holder's version usually comes and
//!   keeps ours as a conflict copy; if it never does, ours must still go
//!   out); 0x0080 is tried again with a backoff (section 9); a damaged
//!   transfer (0x0008, 0x0010) is tried again [`MAX_RETRIES`] times
//!   ([`SyncPolicy::ended`]);
//! - a REQUEST is answered by the first delivery of its path that starts
//!   after it;
//! - a delivery refused because this client's own change of the path was
//!   being sent is asked for once that change has its reply
//!   ([`SyncPolicy::refused_while_sending`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use dropsync_proto::StatusCode;

use crate::backoff::Backoff;
use crate::jobs::{Job, Jobs};
use crate::receiving::Ended;
use crate::reconcile::Content;
use crate::sender::Outcome;

/// How long a change refused with 0x0040 (another transfer holds the file)
/// waits before it is looked at again the first time; each refusal in a
/// row doubles it, up to [`LOCKED_RETRY_MAX`]. A read-only client (secure
/// mode) hears 0x0040 for every change it makes: it keeps them, and asks
/// again rarely rather than every few seconds for ever.
pub const LOCKED_RETRY: Duration = Duration::from_secs(5);

/// Longest wait between tries of a change refused with 0x0040.
pub const LOCKED_RETRY_MAX: Duration = Duration::from_secs(300);

/// A change refused with 0x0080 (the server cannot take it now: too many
/// transfers open, a disk error) is tried again after this, doubling each
/// time up to [`IN_USE_RETRY_MAX`] (section 9: "the sender may try that
/// transfer again later").
pub const IN_USE_RETRY_FIRST: Duration = Duration::from_millis(500);

/// Longest wait between two tries of a change refused with 0x0080.
pub const IN_USE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Under `--once`, tries of a change refused with 0x0080 before it is
/// given up, so that a run always ends.
pub const ONCE_IN_USE_TRIES: u32 = 6;

/// A delivery this client refused because it could not write the path
/// (section 7's 0x0080) is asked for again after this, doubling up to
/// [`UNWRITABLE_RETRY_MAX`]: the server gives the path up for this client
/// (section 6), so without asking again the replica would stay stale.
pub const UNWRITABLE_RETRY_FIRST: Duration = Duration::from_secs(1);

/// Longest wait between two REQUESTs of a path that could not be written.
pub const UNWRITABLE_RETRY_MAX: Duration = Duration::from_secs(60);

/// Times an upload refused by a checksum or size abort (0x0008, 0x0010:
/// data damaged on the way) is tried again before the change is given up.
pub const MAX_RETRIES: u32 = 3;

/// Section 7 [ext], conflict copies: true when replacing a local file
/// holding `local` with `incoming` (`None`: deleting it) would destroy
/// content the server never accepted — it is not the base, and not what
/// arrives either — so it is first kept as a conflict copy.
pub fn must_keep_local(local: Option<Content>, base: Option<Content>, incoming: Option<Content>) -> bool {
    local.is_some() && local != base && local != incoming
}

/// Section 7 [ext]: a delivery whose content is the base (what this client
/// and the server last had in common) brings nothing new, so the local
/// file is left as it is: if it changed or was deleted since, that change
/// goes out as usual. Installing the base over it would undo a change the
/// server has not seen yet (a deleted file would come back: found by the
/// simulator, seed 66, where a REQUEST was answered with the client's own
/// version after the user had deleted the file). Reply 0x0001: the client
/// has that version. Not when the user asked for the server's version back
/// (`restoring`: a mass delete held and undone): that is what they want.
pub fn brings_nothing_new(incoming: Content, base: Option<Content>, restoring: bool) -> bool {
    !restoring && base == Some(incoming)
}

/// Whether a delivery that ended here without being installed must be
/// asked for again ([`SyncPolicy::incoming_refused`]): the server gives a
/// path up for this client on any reply but 0x0001 (section 6), so one
/// this side aborted for idleness (a link that stalled past the idle
/// limit), found damaged, or could not write would never arrive (found by
/// the simulator, seed 46324). Not when the server aborted it (it sends
/// the path again if it should) or the connection ended (the next session
/// reconciles).
pub fn ask_again_after(why: Ended) -> bool {
    matches!(why, Ended::Idle | Ended::Verdict(_) | Ended::HostFailed(_))
}

/// Section 7, on an incoming transfer or DELETE of a path: "An incoming
/// transfer or DELETE of a path that the client is uploading at that moment
/// (from its first message of that upload until the reply to its FINISHED
/// or ABORT) is refused with 0x0080, at the first chunk or at latest at
/// FINISHED: the upload in flight replaces it"; and "If F cannot be opened
/// for writing: reply 0x0080". The client asks at the first message and
/// again right before it installs or deletes.
pub fn admit_incoming(being_sent: bool, writable: bool) -> Result<(), StatusCode> {
    if being_sent || !writable {
        return Err(StatusCode::IN_USE);
    }
    Ok(())
}

/// What the file of a path is now, as the control thread found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// No file.
    Absent,
    /// A file, with this content.
    File(Content),
    /// A file not hashed first (a path with no base is sent whatever its
    /// content; the upload hashes it as it reads).
    Unhashed,
}

/// What to do with a path, from [`SyncPolicy::judge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Judgement {
    /// Upload the file. `trusted` is the content it was hashed to, for
    /// FINISHED; `None` has the upload hash what it reads (a retry after
    /// 0x0008 does, so that a stale digest cannot fail it twice).
    Upload {
        /// The content to announce, if it may be trusted.
        trusted: Option<Content>,
    },
    /// DELETE it on the server: the file is gone and the server had it.
    Delete,
    /// Nothing: in sync with the base, or a change given up, or nothing on
    /// either side.
    Nothing,
}

/// What comes of an operation that ended, from [`SyncPolicy::ended`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Nothing more to do about it.
    Done,
    /// Look at the path again at `at` (once quiet, through the debouncer).
    LookAgain {
        /// When.
        at: Instant,
        /// Why, for the log.
        why: Again,
    },
    /// The change is given up for this session, unless the file changes
    /// (section 7: it counts as not accepted).
    GivenUp(StatusCode),
}

/// Why a path is looked at again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// It changed while it was being sent, or since.
    Changed,
    /// 0x0040, for the `tries`-th time in a row: another transfer holds
    /// it, or this client may not change files; see [`LOCKED_RETRY`].
    Locked {
        /// Tries so far.
        tries: u32,
        /// Until the next.
        after: Duration,
    },
    /// 0x0080, for the `tries`-th time.
    InUse {
        /// Tries so far.
        tries: u32,
    },
    /// 0x0008 or 0x0010: damaged on the way.
    Damaged,
}

/// How an operation of the send connection ended, as the policy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An upload; `content` is what the file held if that is known (a
    /// refused upload's content, `None` if the file changed since).
    Upload {
        /// How it ended.
        outcome: Outcome,
        /// The content refused, for the given-up record.
        content: Option<Content>,
    },
    /// A DELETE.
    Delete(Outcome),
    /// A REQUEST.
    Request(Outcome),
}

/// The sync policy of one session.
#[derive(Debug)]
pub struct SyncPolicy {
    /// `--once`: a run must end, so 0x0080 is not tried for ever.
    once: bool,
    jobs: Jobs,
    /// REQUESTs waiting for their delivery, with when each was sent: a
    /// delivery of the path that starts later answers it.
    pending_requests: HashMap<String, Instant>,
    /// Paths whose sync waits for an operation on the same path to end.
    deferred: HashSet<String>,
    /// Files larger than one chunk waiting for a large-upload slot.
    waiting_large: VecDeque<String>,
    /// Changes the server refused for good: not sent again this session
    /// unless the content changes (`None`: a DELETE).
    given_up: HashMap<String, Option<Content>>,
    retries: HashMap<String, u32>,
    in_use_tries: HashMap<String, Backoff>,
    /// Refusals 0x0040 in a row, per path.
    locked_tries: HashMap<String, Backoff>,
    /// Paths this client could not write when they were delivered: when
    /// each is asked for again (`None` once asked, until its delivery ends),
    /// and its backoff.
    unwritable: HashMap<String, (Option<Instant>, Backoff)>,
    /// Paths whose delivery was refused while this client's own change of
    /// them was being sent: asked for once that change ends.
    overtaken: HashSet<String>,
    stopping: bool,
}

impl SyncPolicy {
    /// A new session's policy.
    pub fn new(once: bool) -> Self {
        SyncPolicy {
            once,
            jobs: Jobs::default(),
            pending_requests: HashMap::new(),
            deferred: HashSet::new(),
            waiting_large: VecDeque::new(),
            given_up: HashMap::new(),
            retries: HashMap::new(),
            in_use_tries: HashMap::new(),
            locked_tries: HashMap::new(),
            unwritable: HashMap::new(),
            overtaken: HashSet::new(),
            stopping: false,
        }
    }

    /// Queues a REQUEST of `name` (reconciliation pulls it).
    pub fn request(&mut self, name: String) {
        self.jobs.push_request(name);
    }

    /// Queues a look at `name` (a local change, or reconciliation).
    pub fn sync(&mut self, name: String) {
        self.jobs.push_sync(name);
    }

    /// The next job while the connection has room: a file waiting for a
    /// large-upload slot first when `large_slot_free`, then REQUESTs, then
    /// syncs. A REQUEST returned counts as sent at `now`.
    pub fn next_job(&mut self, now: Instant, large_slot_free: bool) -> Option<Job> {
        // The earliest due first, ties by name: the same inputs always give
        // the same order (the simulator replays a seed bit for bit).
        let due = self
            .unwritable
            .iter()
            .filter(|(name, (at, _))| at.is_some_and(|at| at <= now) && !self.pending_requests.contains_key(*name))
            .min_by(|a, b| (a.1 .0, a.0).cmp(&(b.1 .0, b.0)));
        if let Some(name) = due.map(|(name, _)| name.clone()) {
            if let Some((at, _)) = self.unwritable.get_mut(&name) {
                // Asked for now; `incoming_refused` sets the next time if
                // this delivery cannot be written either.
                *at = None;
            }
            self.pending_requests.insert(name.clone(), now);
            return Some(Job::Request(name));
        }
        if large_slot_free {
            if let Some(name) = self.waiting_large.pop_front() {
                return Some(Job::Sync(name));
            }
        }
        let job = self.jobs.pop()?;
        if let Job::Request(name) = &job {
            self.pending_requests.insert(name.clone(), now);
        }
        Some(job)
    }

    /// Whether `name` may be looked at now: not while an operation on it
    /// is under way (`busy`: being sent or received) or a REQUEST of it
    /// awaits its delivery. A path that may not is looked at once that ends.
    pub fn may_sync(&mut self, name: &str, busy: bool) -> bool {
        if busy || self.awaits_server(name) {
            self.deferred.insert(name.to_owned());
            return false;
        }
        true
    }

    /// `name` is a file larger than one chunk and no large-upload slot is
    /// free: it waits for one.
    pub fn wait_for_large_slot(&mut self, name: String) {
        self.waiting_large.push_back(name);
    }

    /// Whether the file of `name` may be sent without hashing it first: it
    /// has nothing in common with the server (`has_base` false) and no
    /// change of it was given up (that one must be compared).
    pub fn may_send_unhashed(&self, name: &str, has_base: bool) -> bool {
        !has_base && !self.given_up.contains_key(name)
    }

    /// Section 7: what to do with `name`, whose file is `local` and whose
    /// base (content last in common with the server) is `base`.
    pub fn judge(&mut self, name: &str, local: Local, base: Option<Content>) -> Judgement {
        let content = match local {
            Local::Unhashed => return Judgement::Upload { trusted: None },
            Local::File(c) => Some(c),
            Local::Absent => None,
        };
        if content == base {
            self.given_up.remove(name);
            return Judgement::Nothing;
        }
        if self.given_up.get(name) == Some(&content) {
            return Judgement::Nothing;
        }
        match (content, base) {
            (Some(c), _) => Judgement::Upload { trusted: Some(c).filter(|_| !self.retries.contains_key(name)) },
            (None, Some(_)) => Judgement::Delete,
            (None, None) => Judgement::Nothing,
        }
    }

    /// The operation on `name` ended at `now` as `ending` says: what comes
    /// next for the path. Syncs deferred for it are queued again.
    pub fn ended(&mut self, name: &str, ending: Ending, now: Instant) -> Next {
        let next = match ending {
            Ending::Upload { outcome: Outcome::Committed, .. } | Ending::Delete(Outcome::Committed) => {
                self.given_up.remove(name);
                self.retries.remove(name);
                self.in_use_tries.remove(name);
                self.locked_tries.remove(name);
                Next::Done
            }
            // It changed while being sent: again once quiet.
            Ending::Upload { outcome: Outcome::Aborted, .. } if !self.stopping => {
                Next::LookAgain { at: now, why: Again::Changed }
            }
            Ending::Upload { outcome: Outcome::Refused(code), content } => match content {
                Some(c) => self.refused(name, code, Some(c), now),
                // Changed since it was sent: that is a new change.
                None => Next::LookAgain { at: now, why: Again::Changed },
            },
            Ending::Delete(Outcome::Refused(code)) => self.refused(name, code, None, now),
            Ending::Request(outcome) => {
                if outcome != Outcome::Committed {
                    self.pending_requests.remove(name);
                    if outcome == Outcome::Refused(StatusCode::IN_USE) && !self.stopping {
                        // Section 6: "F locked (being written): 0x0080".
                        // That write usually ends in a commit, which comes
                        // through the update queue; but one aborted sends
                        // nothing: asked again later (found by the
                        // simulator, seed 2793).
                        let _ = self.incoming_refused(name, now);
                    } else {
                        // Nothing will be delivered: nothing more to ask for.
                        self.unwritable.remove(name);
                    }
                }
                Next::Done
            }
            Ending::Upload { outcome: Outcome::Aborted, .. } | Ending::Delete(Outcome::Aborted) => Next::Done,
        };
        if !matches!(ending, Ending::Request(_)) && self.overtaken.remove(name) && !self.stopping {
            self.jobs.push_request(name.to_owned());
        }
        self.undefer(name);
        next
    }

    /// A delivery of `name` that started at `started` ended: it answers a
    /// REQUEST sent before it, and syncs deferred for the path go on.
    pub fn delivered(&mut self, name: &str, started: Instant) {
        if self.pending_requests.get(name).is_some_and(|&sent| started >= sent) {
            self.pending_requests.remove(name);
        }
        // A change given up was about the path as it was before this
        // delivery: a DELETE refused with 0x0020 must not keep the next
        // deletion of the file that came back from going out (found by the
        // simulator, seed 1007).
        self.given_up.remove(name);
        // Asked for again and answered (a DELETE writes nothing).
        if matches!(self.unwritable.get(name), Some((None, _))) {
            self.unwritable.remove(name);
        }
        self.undefer(name);
    }

    /// This client refused a delivery of `name` at `now` because it could
    /// not write the path (a folder in the way, a full disk): it asks for
    /// it again later, with a backoff; returns when. Under `--once`, after
    /// [`ONCE_IN_USE_TRIES`] tries it gives up (`None`).
    pub fn incoming_refused(&mut self, name: &str, now: Instant) -> Option<Instant> {
        let entry = self
            .unwritable
            .entry(name.to_owned())
            .or_insert_with(|| (None, Backoff::new(UNWRITABLE_RETRY_FIRST, UNWRITABLE_RETRY_MAX)));
        if self.once && entry.1.attempts() >= ONCE_IN_USE_TRIES {
            self.unwritable.remove(name);
            return None;
        }
        let at = now + entry.1.next_delay();
        entry.0 = Some(at);
        Some(at)
    }

    /// This client refused a delivery of `name` (0x0080) because its own
    /// upload or DELETE of the path was being sent (section 7: "the upload
    /// in flight replaces it"). That holds when the server commits our
    /// change after the refused version; but the server may have committed
    /// ours first and the refused version after it (another client's newer
    /// change, delivered before our reply arrived), and it gives the path
    /// up for this client on the refusal. So once our change has its reply,
    /// the path is asked for: the server sends its current version, ours or
    /// newer (found by the simulator, seed 14).
    pub fn refused_while_sending(&mut self, name: &str) {
        self.overtaken.insert(name.to_owned());
    }

    /// `name` was written here: no more asking for it.
    pub fn incoming_written(&mut self, name: &str) {
        self.unwritable.remove(name);
    }

    /// When a path that could not be written is next asked for: what
    /// [`next_job`](Self::next_job) would pick then. A driver waits for it
    /// only while its connection has room for a job; otherwise a retry that
    /// is due but cannot start yet would wake it again at once, for ever
    /// (found by the simulator, seed 4951).
    pub fn next_retry(&self) -> Option<Instant> {
        self.unwritable
            .iter()
            .filter(|(name, _)| !self.pending_requests.contains_key(*name))
            .filter_map(|(_, (at, _))| *at)
            .min()
    }

    /// Section 9: stop taking work. Nothing queued is started, and nothing
    /// refused is tried again.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.jobs.clear();
        self.deferred.clear();
        self.waiting_large.clear();
        self.unwritable.clear();
        self.overtaken.clear();
    }

    /// How many paths are queued, waiting or awaited here (for a status
    /// report).
    pub fn pending(&self) -> usize {
        self.jobs.len() + self.pending_requests.len() + self.deferred.len() + self.waiting_large.len() + self.unwritable.len()
    }

    /// True when nothing is queued, waiting or awaited here (`--once`
    /// ends when this and the rest of the session are idle).
    pub fn is_idle(&self) -> bool {
        self.jobs.is_empty()
            && self.pending_requests.is_empty()
            && self.deferred.is_empty()
            && self.waiting_large.is_empty()
            && self.unwritable.is_empty()
    }

    fn refused(&mut self, name: &str, code: StatusCode, content: Option<Content>, now: Instant) -> Next {
        if code == StatusCode::LOCKED && !self.stopping {
            let backoff =
                self.locked_tries.entry(name.to_owned()).or_insert_with(|| Backoff::new(LOCKED_RETRY, LOCKED_RETRY_MAX));
            let after = backoff.next_delay();
            return Next::LookAgain { at: now + after, why: Again::Locked { tries: backoff.attempts(), after } };
        }
        if code == StatusCode::IN_USE && !self.stopping {
            let backoff =
                self.in_use_tries.entry(name.to_owned()).or_insert_with(|| Backoff::new(IN_USE_RETRY_FIRST, IN_USE_RETRY_MAX));
            if !(self.once && backoff.attempts() >= ONCE_IN_USE_TRIES) {
                let delay = backoff.next_delay();
                let tries = backoff.attempts();
                return Next::LookAgain { at: now + delay, why: Again::InUse { tries } };
            }
            self.in_use_tries.remove(name);
        }
        let damaged = code == StatusCode::ABORT_CHECKSUM || code == StatusCode::ABORT_SIZE;
        let tries = self.retries.entry(name.to_owned()).or_insert(0);
        *tries += 1;
        if damaged && *tries <= MAX_RETRIES && !self.stopping {
            return Next::LookAgain { at: now, why: Again::Damaged };
        }
        self.retries.remove(name);
        self.given_up.insert(name.to_owned(), content);
        Next::GivenUp(code)
    }

    /// Whether the server's version of `name` is awaited: asked for, or to
    /// be asked for again. Until it comes the local file is not judged: the
    /// base is older than what the server has, so a local delete judged
    /// against it would go out as a DELETE of a version this client never
    /// had (found by the simulator, seed 15335).
    fn awaits_server(&self, name: &str) -> bool {
        self.pending_requests.contains_key(name) || self.unwritable.contains_key(name)
    }

    /// Queues the sync of `name` again if it waited for an operation on it.
    fn undefer(&mut self, name: &str) {
        if self.awaits_server(name) {
            return;
        }
        if self.deferred.remove(name) {
            self.jobs.push_sync(name.to_owned());
        }
    }
}

#[cfg(test)]
#[path = "sync_policy_tests.rs"]
mod tests;
