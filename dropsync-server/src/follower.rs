//! Following other server instances (issue 18; docs/SCALING.md): with the
//! catalog on PostgreSQL, one thread waits for a NOTIFY (at most
//! [`CATCH_UP_EVERY`]), reads what other instances committed since this
//! one's cursor, and queues it for this instance's clients, as a commit
//! made here is.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::pg_catalog::Listener;
use crate::quiet_log::{self, QuietLog};
use crate::server::Server;
use crate::spawn_named;

/// The longest a commit made elsewhere waits to be seen here when no
/// notification comes (a lost one, or no listening connection).
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(1);

static FAILURES: QuietLog = QuietLog::new();

/// Starts the thread for the database at `url`; it also runs the bucket's
/// collector across instances (`pg_gc`) every half `gc_grace` (1 s to 10
/// min).
pub fn start(server: Arc<Server>, url: &str, gc_grace: Duration) -> std::io::Result<()> {
    let mut listener = Listener::new(url);
    let collect_every = (gc_grace / 2).clamp(Duration::from_secs(1), Duration::from_secs(600));
    spawn_named("follower", move || {
        let mut next_collect = Instant::now() + collect_every;
        while !server.shutting_down.load(Ordering::SeqCst) {
            if Instant::now() >= next_collect {
                next_collect = Instant::now() + collect_every;
                match server.library.blobs().collect_shared(crate::clock::now_ns()) {
                    Ok(0) => {}
                    Ok(n) => log::info!("removed {n} content(s) no line names any more from the bucket"),
                    Err(e) => log::warn!("cannot collect the bucket's unused contents (trying again): {e}"),
                }
            }
            listener.wait(CATCH_UP_EVERY);
            catch_up(&server);
        }
    })
    .map(drop)
}

/// Applies what other instances committed since the last catch-up and
/// queues it for this instance's clients. The follower calls it; so does
/// the pairing of a new session, before its META-DATA is taken (a client
/// reconnecting through this instance after committing through another
/// then finds its own commit listed: without it, its folder was judged
/// against an older table, and its own version was sent back to it).
/// Nothing to do with a catalog only this instance writes.
pub fn catch_up(server: &Server) {
    match server.library.follow() {
        Ok(lines) => {
            for e in lines {
                log::debug!("committed elsewhere: {:?} version {}", e.path, e.version);
                server.fan_out(&e.path, None);
            }
        }
        Err(e) => {
            if let Some(n) = FAILURES.allow(Instant::now()) {
                log::warn!("cannot read other instances' commits (trying again): {e}{}", quiet_log::more(n));
            }
        }
    }
}
