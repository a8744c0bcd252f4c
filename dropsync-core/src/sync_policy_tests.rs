//! The client's sync policy with virtual time: one test per rule of
//! PROTOCOL.md sections 7 and 9 it holds, named by the rule's words.

use std::time::{Duration, Instant};

use dropsync_proto::StatusCode;

use super::*;

fn t0() -> Instant {
    // Any instant will do as the start of virtual time.
    dropsync_io::clock::now()
}

fn c(n: u8) -> Content {
    Content { md5: [n; 16], size: u64::from(n) }
}

fn refused(code: StatusCode, n: u8) -> Ending {
    Ending::Upload { outcome: Outcome::Refused(code), content: Some(c(n)) }
}

fn jobs(p: &mut SyncPolicy, now: Instant) -> Vec<Job> {
    std::iter::from_fn(|| p.next_job(now, true)).collect()
}

#[test]
fn requests_go_before_uploads_and_each_path_is_queued_once() {
    let mut p = SyncPolicy::new(false);
    p.sync("a".into());
    p.request("r".into());
    p.sync("a".into());
    p.request("r".into());
    assert_eq!(jobs(&mut p, t0()), vec![Job::Request("r".into()), Job::Sync("a".into())]);
}

#[test]
fn a_path_with_an_operation_under_way_is_looked_at_once_it_ends() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    assert!(!p.may_sync("f", true));
    assert!(!p.is_idle());
    assert_eq!(p.ended("f", Ending::Upload { outcome: Outcome::Committed, content: None }, now), Next::Done);
    assert_eq!(jobs(&mut p, now), vec![Job::Sync("f".into())]);
    // A delivery ending does the same.
    assert!(!p.may_sync("g", true));
    p.delivered("g", now);
    assert_eq!(jobs(&mut p, now), vec![Job::Sync("g".into())]);
}

#[test]
fn s_equals_b_and_l_equals_b_is_in_sync() {
    let mut p = SyncPolicy::new(false);
    assert_eq!(p.judge("f", Local::File(c(1)), Some(c(1))), Judgement::Nothing);
    assert_eq!(p.judge("f", Local::Absent, None), Judgement::Nothing);
}

#[test]
fn l_differs_from_b_pushes_the_local_change_upload_or_delete() {
    let mut p = SyncPolicy::new(false);
    assert_eq!(p.judge("f", Local::File(c(2)), Some(c(1))), Judgement::Upload { trusted: Some(c(2)) });
    assert_eq!(p.judge("new", Local::File(c(2)), None), Judgement::Upload { trusted: Some(c(2)) });
    assert_eq!(p.judge("f", Local::Absent, Some(c(1))), Judgement::Delete);
}

#[test]
fn a_path_with_no_base_is_sent_without_hashing_it_first_unless_a_change_of_it_was_given_up() {
    let mut p = SyncPolicy::new(false);
    assert!(p.may_send_unhashed("f", false));
    assert!(!p.may_send_unhashed("f", true));
    assert_eq!(p.judge("f", Local::Unhashed, None), Judgement::Upload { trusted: None });
    p.ended("f", refused(StatusCode::NO_FILE, 3), t0());
    assert!(!p.may_send_unhashed("f", false));
}

#[test]
fn a_reply_0x0020_gives_up_on_that_change_until_the_file_changes() {
    let mut p = SyncPolicy::new(false);
    assert_eq!(p.ended("f", refused(StatusCode::NO_FILE, 2), t0()), Next::GivenUp(StatusCode::NO_FILE));
    assert_eq!(p.judge("f", Local::File(c(2)), Some(c(1))), Judgement::Nothing, "the change counts as not accepted");
    assert_eq!(p.judge("f", Local::File(c(3)), Some(c(1))), Judgement::Upload { trusted: Some(c(3)) });
    // A refused DELETE likewise.
    assert_eq!(p.ended("g", Ending::Delete(Outcome::Refused(StatusCode::NO_FILE)), t0()), Next::GivenUp(StatusCode::NO_FILE));
    assert_eq!(p.judge("g", Local::Absent, Some(c(1))), Judgement::Nothing);
}

#[test]
fn a_reply_0x0040_looks_at_the_change_again_after_the_locked_retry_delay_doubling_up_to_its_cap() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    assert_eq!(
        p.ended("f", refused(StatusCode::LOCKED, 2), now),
        Next::LookAgain { at: now + LOCKED_RETRY, why: Again::Locked { tries: 1, after: LOCKED_RETRY } }
    );
    assert_eq!(p.judge("f", Local::File(c(2)), Some(c(1))), Judgement::Upload { trusted: Some(c(2)) });
    let mut last = LOCKED_RETRY;
    for _ in 0..12 {
        match p.ended("f", refused(StatusCode::LOCKED, 2), now) {
            Next::LookAgain { why: Again::Locked { after, .. }, .. } => {
                assert!(after >= last && after <= LOCKED_RETRY_MAX, "{after:?} after {last:?}");
                last = after;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(last, LOCKED_RETRY_MAX, "a read-only client asks again every few minutes, not seconds");
    assert_eq!(p.ended("f", Ending::Upload { outcome: Outcome::Committed, content: Some(c(2)) }, now), Next::Done);
    assert_eq!(
        p.ended("f", refused(StatusCode::LOCKED, 3), now),
        Next::LookAgain { at: now + LOCKED_RETRY, why: Again::Locked { tries: 1, after: LOCKED_RETRY } },
        "a commit starts the count again"
    );
}

#[test]
fn a_reply_0x0080_is_tried_again_later_doubling_up_to_a_minute() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    let delays: Vec<Duration> = (0..9)
        .map(|_| match p.ended("f", refused(StatusCode::IN_USE, 2), now) {
            Next::LookAgain { at, why: Again::InUse { .. } } => at - now,
            other => panic!("{other:?}"),
        })
        .collect();
    let ms: Vec<u128> = delays.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]);
    // Accepted at last: the backoff starts over.
    p.ended("f", Ending::Upload { outcome: Outcome::Committed, content: None }, now);
    assert_eq!(p.ended("f", refused(StatusCode::IN_USE, 2), now), Next::LookAgain { at: now + IN_USE_RETRY_FIRST, why: Again::InUse { tries: 1 } });
}

#[test]
fn under_once_a_change_refused_with_0x0080_is_given_up_after_six_tries() {
    let mut p = SyncPolicy::new(true);
    for _ in 0..ONCE_IN_USE_TRIES {
        assert!(matches!(p.ended("f", refused(StatusCode::IN_USE, 2), t0()), Next::LookAgain { .. }));
    }
    assert_eq!(p.ended("f", refused(StatusCode::IN_USE, 2), t0()), Next::GivenUp(StatusCode::IN_USE));
}

#[test]
fn a_damaged_upload_is_tried_again_hashing_what_it_sends_then_given_up() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    for _ in 0..MAX_RETRIES {
        assert_eq!(p.ended("f", refused(StatusCode::ABORT_CHECKSUM, 2), now), Next::LookAgain { at: now, why: Again::Damaged });
        assert_eq!(p.judge("f", Local::File(c(2)), Some(c(1))), Judgement::Upload { trusted: None });
    }
    assert_eq!(p.ended("f", refused(StatusCode::ABORT_SIZE, 2), now), Next::GivenUp(StatusCode::ABORT_SIZE));
}

#[test]
fn an_upload_aborted_because_its_file_changed_is_looked_at_again_once_quiet() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    let aborted = Ending::Upload { outcome: Outcome::Aborted, content: None };
    assert_eq!(p.ended("f", aborted, now), Next::LookAgain { at: now, why: Again::Changed });
    // A refused upload whose file changed since is a new change too.
    let changed = Ending::Upload { outcome: Outcome::Refused(StatusCode::NO_FILE), content: None };
    assert_eq!(p.ended("f", changed, now), Next::LookAgain { at: now, why: Again::Changed });
}

#[test]
fn a_request_is_answered_by_the_first_delivery_that_starts_after_it() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    p.request("f".into());
    assert_eq!(p.next_job(now, true), Some(Job::Request("f".into())));
    assert!(!p.may_sync("f", false), "a REQUEST awaits its delivery");
    p.delivered("f", now - Duration::from_millis(1));
    assert!(!p.is_idle(), "a delivery that started before the REQUEST does not answer it");
    p.delivered("f", now + Duration::from_millis(1));
    assert_eq!(jobs(&mut p, now), vec![Job::Sync("f".into())]);
    assert!(p.is_idle());
}

#[test]
fn a_refused_request_awaits_nothing() {
    let mut p = SyncPolicy::new(false);
    p.request("f".into());
    p.next_job(t0(), true);
    p.ended("f", Ending::Request(Outcome::Refused(StatusCode::NO_FILE)), t0());
    assert!(p.is_idle());
}

#[test]
fn a_large_file_waits_for_a_free_slot_and_goes_first_then() {
    let mut p = SyncPolicy::new(false);
    p.wait_for_large_slot("big".into());
    p.sync("small".into());
    assert_eq!(p.next_job(t0(), false), Some(Job::Sync("small".into())));
    assert_eq!(p.next_job(t0(), false), None);
    assert_eq!(p.next_job(t0(), true), Some(Job::Sync("big".into())));
}

#[test]
fn on_stop_no_work_is_taken_and_nothing_refused_is_tried_again() {
    let mut p = SyncPolicy::new(false);
    p.sync("a".into());
    p.wait_for_large_slot("b".into());
    p.may_sync("c", true);
    p.stop();
    assert!(p.is_idle());
    assert_eq!(p.ended("c", refused(StatusCode::LOCKED, 1), t0()), Next::GivenUp(StatusCode::LOCKED));
    let aborted = Ending::Upload { outcome: Outcome::Aborted, content: None };
    assert_eq!(p.ended("d", aborted, t0()), Next::Done);
}

#[test]
fn an_incoming_file_or_delete_that_would_destroy_local_content_the_server_never_accepted_keeps_it_first() {
    let (a, b, cc) = (Some(c(1)), Some(c(2)), Some(c(3)));
    // (local, base, incoming, keep?)
    let cases = [
        (None, a, b, false),
        (a, a, b, false),
        (a, a, None, false),
        (b, a, cc, true),
        (b, a, None, true),
        (b, None, cc, true),
        (b, a, b, false),
    ];
    for (local, base, incoming, keep) in cases {
        assert_eq!(must_keep_local(local, base, incoming), keep, "{local:?} {base:?} {incoming:?}");
    }
}

#[test]
fn an_incoming_transfer_or_delete_of_a_path_the_client_is_uploading_or_cannot_write_gets_0x0080() {
    assert_eq!(admit_incoming(false, true), Ok(()));
    assert_eq!(admit_incoming(true, true), Err(StatusCode::IN_USE));
    assert_eq!(admit_incoming(false, false), Err(StatusCode::IN_USE));
}

#[test]
fn a_delivery_the_client_could_not_write_is_asked_for_again_later_until_written() {
    let mut p = SyncPolicy::new(false);
    let now = t0();
    let at = p.incoming_refused("f", now).unwrap();
    assert_eq!(at, now + UNWRITABLE_RETRY_FIRST);
    assert!(!p.is_idle());
    assert_eq!(p.next_retry(), Some(at));
    assert_eq!(p.next_job(now, true), None, "not before its time");
    assert_eq!(p.next_job(at, true), Some(Job::Request("f".into())));
    assert_eq!(p.next_job(at, true), None, "asked once");
    // Refused again: the wait doubles.
    assert_eq!(p.incoming_refused("f", at), Some(at + 2 * UNWRITABLE_RETRY_FIRST));
    p.incoming_written("f");
    p.delivered("f", at + Duration::from_secs(3));
    assert!(p.is_idle());
}

#[test]
fn under_once_a_path_that_cannot_be_written_is_given_up_after_six_tries() {
    let mut p = SyncPolicy::new(true);
    for _ in 0..ONCE_IN_USE_TRIES {
        assert!(p.incoming_refused("f", t0()).is_some());
    }
    assert_eq!(p.incoming_refused("f", t0()), None);
    assert!(p.is_idle());
}

#[test]
fn a_path_that_could_not_be_written_and_is_then_gone_from_the_server_is_not_asked_for_again() {
    let mut p = SyncPolicy::new(false);
    let at = p.incoming_refused("f", t0()).unwrap();
    assert_eq!(p.next_job(at, true), Some(Job::Request("f".into())));
    p.ended("f", Ending::Request(Outcome::Refused(StatusCode::NO_FILE)), at);
    assert!(p.is_idle());
    assert_eq!(p.next_retry(), None);
}

#[test]
fn a_delivery_refused_while_our_change_was_sent_is_asked_for_after_it() {
    let now = t0();
    let mut p = SyncPolicy::new(false);
    p.refused_while_sending("f");
    let next = p.ended("f", Ending::Delete(Outcome::Committed), now);
    assert_eq!(next, Next::Done);
    assert_eq!(p.next_job(now, true), Some(Job::Request("f".into())), "the server's version may be newer than ours");
    assert!(!p.may_sync("f", false), "the local file waits for the answer");
    p.delivered("f", now);
    assert!(p.may_sync("f", false));
    // Asked for once, not after every later change.
    let _ = p.ended("f", Ending::Delete(Outcome::Committed), now);
    assert_eq!(p.next_job(now, true), Some(Job::Sync("f".into())));
    assert_eq!(p.next_job(now, true), None);
}

#[test]
fn a_delivery_of_the_base_leaves_a_local_change_alone() {
    let x = Content { md5: [1; 16], size: 1 };
    let y = Content { md5: [2; 16], size: 2 };
    assert!(brings_nothing_new(x, Some(x), false));
    assert!(!brings_nothing_new(x, Some(y), false));
    assert!(!brings_nothing_new(x, None, false));
    assert!(!brings_nothing_new(x, Some(x), true), "the user asked for it back");
}

#[test]
fn a_delivery_ends_what_was_given_up_about_the_path() {
    let now = t0();
    let mut p = SyncPolicy::new(false);
    let x = Content { md5: [1; 16], size: 1 };
    assert_eq!(p.ended("f", Ending::Delete(Outcome::Refused(StatusCode::NO_FILE)), now), Next::GivenUp(StatusCode::NO_FILE));
    assert_eq!(p.judge("f", Local::Absent, Some(x)), Judgement::Nothing, "given up");
    p.delivered("f", now);
    assert_eq!(p.judge("f", Local::Absent, Some(x)), Judgement::Delete, "the file came back and was deleted again");
}

#[test]
fn a_request_refused_while_the_path_is_written_is_asked_again() {
    let now = t0();
    let mut p = SyncPolicy::new(false);
    p.request("f".into());
    assert_eq!(p.next_job(now, true), Some(Job::Request("f".into())));
    let _ = p.ended("f", Ending::Request(Outcome::Refused(StatusCode::IN_USE)), now);
    let at = p.next_retry().expect("asked again: the write may be aborted");
    assert_eq!(p.next_job(now, true), None);
    assert!(!p.may_sync("f", false), "the local file waits for the server's version");
    assert_eq!(p.next_job(at, true), Some(Job::Request("f".into())));
    p.delivered("f", at);
    assert_eq!(p.next_job(at, true), Some(Job::Sync("f".into())), "then it is looked at");
    assert!(p.is_idle(), "answered, by a DELETE as well");
    // Unknown on the server: nothing to ask for again.
    p.request("g".into());
    let _ = p.next_job(now, true);
    let _ = p.ended("g", Ending::Request(Outcome::Refused(StatusCode::NO_FILE)), now);
    assert!(p.is_idle());
}

#[test]
fn a_delivery_ended_here_is_asked_for_again_unless_the_server_or_the_connection_ended_it() {
    use crate::receiving::Ended;
    assert!(ask_again_after(Ended::Idle));
    assert!(ask_again_after(Ended::Verdict(StatusCode::ABORT_CHECKSUM)));
    assert!(ask_again_after(Ended::HostFailed(StatusCode::IN_USE)));
    assert!(!ask_again_after(Ended::PeerAbort));
    assert!(!ask_again_after(Ended::ConnectionClosed));
}
