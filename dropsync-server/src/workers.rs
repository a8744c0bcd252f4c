//! Who sends to clients. Extra credit (ASSIGNMENT.md): a fixed pool of
//! worker threads takes jobs from one FIFO work queue — a job is "prepare
//! client K's next delivery" (dequeue its paths, read the catalog, open the
//! content), one job per client at a time, and a client with more work goes
//! to the back of the queue, so one big backlog never starves the others.
//! The delivery itself (the chunks, and the wait for each reply) is made by
//! the client's own sender thread: a worker never waits on a client, so a
//! client that is slow, or never answers, holds back no one but itself.
//! `--workers 0` gives each client the dedicated sending thread the
//! assignment suggests instead, which prepares and delivers alike.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use dropsync_io::queue::Pop;

use crate::outbound::{deliver, prepare_next, prepare_paths, tend, Batch, Gone};
use crate::server::Server;
use crate::session::Session;

/// How long an idle sender waits before it checks for shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// One pool worker: prepares deliveries until the work queue closes.
pub fn pool_worker(server: Arc<Server>) {
    while let Some(id) = server.work.take() {
        if let Some(session) = server.session(id) {
            prepare_for(&server, &session);
        }
        server.work.done(&id, false);
    }
}

/// Prepares `session`'s next delivery and hands it to its sender, unless
/// one is under way already: the sender schedules the client again when
/// that one is over.
fn prepare_for(server: &Server, session: &Session) {
    if session.delivering.swap(true, Ordering::SeqCst) {
        return;
    }
    let handed = match prepare_next(server, session) {
        Some(batch) => session.hand_over(batch),
        None => false,
    };
    if !handed {
        session.delivering.store(false, Ordering::SeqCst);
    }
}

/// A client's sender thread in pool mode: delivers what the workers
/// prepared, one delivery at a time, until the session ends.
pub fn session_sender(server: &Arc<Server>, session: &Arc<Session>, batches: Receiver<Batch>) {
    loop {
        match batches.recv_timeout(IDLE_WAIT) {
            Ok(batch) => {
                if let Err(gone) = deliver(server, session, batch) {
                    return server.end_session(session, &gone.0);
                }
                // Cleared before the queue is looked at: a path queued from
                // here on schedules the client itself. So does a META-DATA
                // set meanwhile ([ext] a `/more` listing), and an upload
                // offered to stream ([ext]), whose wake-ups found this
                // delivery under way.
                session.delivering.store(false, Ordering::SeqCst);
                if !session.queue.is_empty() || session.metadata_ready() || session.has_offers() {
                    server.wake(session);
                }
            }
            Err(RecvTimeoutError::Timeout) if !session.is_closed() && !server.is_shutting_down() => {
                if let Err(gone) = tend(session) {
                    return server.end_session(session, &gone.0);
                }
            }
            Err(_) => return,
        }
    }
}

/// A dedicated sending thread for one client (`--workers 0`): the
/// META-DATA, then every queued path as it is dequeued. The queue lock is
/// held only inside `pop_timeout`, never during a transfer.
pub fn dedicated(server: &Arc<Server>, session: &Arc<Session>) {
    let result = (|| -> Result<(), Gone> {
        loop {
            if session.is_closed() || server.is_shutting_down() {
                return Ok(());
            }
            if let Some(batch) = prepare_next(server, session) {
                deliver(server, session, batch)?;
                continue;
            }
            match session.queue.pop_timeout(IDLE_WAIT) {
                Pop::Item(path) => {
                    let mut paths = vec![path];
                    while paths.len() < session.transfers_at_once(server.config.parallel) {
                        match session.queue.try_pop() {
                            Some(p) => paths.push(p),
                            None => break,
                        }
                    }
                    if let Some(batch) = prepare_paths(server, session, paths) {
                        deliver(server, session, batch)?;
                    }
                }
                Pop::TimedOut => tend(session)?,
                Pop::Closed => return Ok(()),
            }
        }
    })();
    if let Err(gone) = result {
        server.end_session(session, &gone.0);
    }
}
