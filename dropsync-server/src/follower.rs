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

/// Starts the thread for the database at `url`.
pub fn start(server: Arc<Server>, url: &str) -> std::io::Result<()> {
    let mut listener = Listener::new(url);
    spawn_named("follower", move || {
        while !server.shutting_down.load(Ordering::SeqCst) {
            listener.wait(CATCH_UP_EVERY);
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
    })
    .map(drop)
}
