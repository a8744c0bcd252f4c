//! Who sends to clients. Extra credit (ASSIGNMENT.md): a fixed pool of
//! worker threads takes jobs from one FIFO work queue — a job is "send
//! client K its next queued path", one job per client at a time, and a
//! client with more work goes to the back of the queue, so one big backlog
//! never starves the others. `--workers 0` instead gives each client the
//! dedicated sending thread the assignment suggests.

use std::sync::Arc;
use std::time::Duration;

use dropsync_core::queue::Pop;

use crate::outbound::{send_pending_metadata, serve_next, serve_paths, Gone};
use crate::server::Server;
use crate::session::Session;

/// One pool worker: serves jobs until the work queue closes.
pub fn pool_worker(server: Arc<Server>) {
    while let Some(id) = server.work.take() {
        let Some(session) = server.session(id) else {
            server.work.done(&id, false);
            continue;
        };
        let more = match serve_next(&server, &session) {
            Ok(more) => more,
            Err(gone) => {
                server.end_session(&session, &gone.0);
                false
            }
        };
        server.work.done(&id, more);
    }
}

/// How long a dedicated sender waits on an empty queue before it checks
/// for shutdown again.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// A dedicated sending thread for one client (`--workers 0`): the
/// META-DATA, then every queued path as it is dequeued. The queue lock is
/// held only inside `pop_timeout`, never during a transfer.
pub fn dedicated(server: &Arc<Server>, session: &Arc<Session>) {
    let result = (|| -> Result<(), Gone> {
        send_pending_metadata(server, session)?;
        loop {
            if session.is_closed() || server.is_shutting_down() {
                return Ok(());
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
                    serve_paths(server, session, paths)?
                }
                Pop::TimedOut => {}
                Pop::Closed => return Ok(()),
            }
        }
    })();
    if let Err(gone) = result {
        server.end_session(session, &gone.0);
    }
}
