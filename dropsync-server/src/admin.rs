//! What the running server does for `server restore` and `server undelete`
//! (`commands.rs`), and the history's retention.
//!
//! A restore must be committed and queued for every client like any other
//! change, so the command does not touch the store itself: it drops a
//! request file into `<root>/control/` and waits for this thread's answer
//! beside it. One thread, polling every [`POLL`]; at most [`BATCH`]
//! requests a round, each at most [`MAX_REQUEST`] bytes. Only someone who
//! can write the server's root can ask, and they could change the store
//! anyway.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dropsync_core::library::{Committed, Undeleted, WallTime};
use dropsync_core::meta_server::Catalog;
use dropsync_proto::metadata::EntryState;
use dropsync_core::utc;
use dropsync_proto::name::validate_name;

use crate::server::Server;
use crate::{clock, library, spawn_named};

/// The folder under the root where requests and answers are exchanged.
pub const CONTROL_DIR: &str = "control";

/// How often the folder is looked at.
pub const POLL: Duration = Duration::from_millis(200);

/// How often retention runs (and once at start).
pub const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Requests handled per round.
const BATCH: usize = 16;

/// Largest request file read.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request, as the command writes it: one field per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Bring back `version` of `path` as a new version.
    Restore {
        /// The path.
        path: String,
        /// The version to bring back.
        version: u64,
    },
    /// Bring back the folder `prefix` (all for "") as it was at `at_ns`.
    Undelete {
        /// The folder.
        prefix: String,
        /// The time, ns since the epoch.
        at_ns: i64,
    },
}

impl Request {
    /// The request file's text.
    pub fn render(&self) -> String {
        match self {
            Request::Restore { path, version } => format!("restore\n{path}\n{version}\n"),
            Request::Undelete { prefix, at_ns } => format!("undelete\n{prefix}\n{at_ns}\n"),
        }
    }

    /// Reads a request file's text.
    pub fn parse(text: &str) -> Result<Request, String> {
        let mut lines = text.lines();
        let (verb, name, number) = (lines.next(), lines.next(), lines.next());
        let name = name.ok_or("no path")?.to_owned();
        let number = number.ok_or("no number")?;
        match verb {
            Some("restore") => {
                validate_name(&name, false).map_err(|e| format!("{name:?}: {e}"))?;
                Ok(Request::Restore { path: name, version: number.parse().map_err(|_| "bad version")? })
            }
            Some("undelete") => {
                let folder = name.trim_end_matches('/');
                if !folder.is_empty() {
                    validate_name(folder, false).map_err(|e| format!("{folder:?}: {e}"))?;
                }
                Ok(Request::Undelete { prefix: folder.to_owned(), at_ns: number.parse().map_err(|_| "bad time")? })
            }
            _ => Err("unknown request".into()),
        }
    }
}

/// Starts the thread.
pub fn start(server: Arc<Server>, root: &Path, keep: Retention) -> io::Result<()> {
    let dir = root.join(CONTROL_DIR);
    fs::create_dir_all(&dir)?;
    spawn_named("admin", move || run(&server, &dir, keep))?;
    Ok(())
}

/// What the history keeps: versions replaced within `age`, and of those at
/// most `bytes` (`--keep-days`, `--keep-size`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// How long a replaced version is kept.
    pub age: Duration,
    /// The size budget, if any: the most recently replaced versions that fit.
    pub bytes: Option<u64>,
}

fn run(server: &Server, dir: &Path, keep: Retention) {
    let mut next_retention = Instant::now();
    while !server.shutting_down.load(Ordering::SeqCst) {
        if Instant::now() >= next_retention {
            retention(server, keep);
            next_retention = Instant::now() + RETENTION_EVERY;
        }
        for req in pending(dir) {
            answer(server, &req);
        }
        std::thread::sleep(POLL);
    }
}

/// Retention: versions replaced more than `keep.age` ago go, and the
/// oldest beyond the size budget, and their content with the last of them.
fn retention(server: &Server, keep: Retention) {
    let age = keep.age.as_nanos().min(i64::MAX as u128) as i64;
    let cutoff = WallTime { unix_ns: clock::now_ns().saturating_sub(age) };
    match server.library.expire(cutoff, keep.bytes) {
        Ok(0) => {}
        Ok(n) => log::info!("history: {n} version(s) beyond the retention (age or size) dropped"),
        Err(e) => log::warn!("history: retention failed (tried again later): {e}"),
    }
}

fn pending(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut reqs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "req"))
        .collect();
    reqs.sort();
    reqs.truncate(BATCH);
    reqs
}

/// Carries out one request file and writes its answer beside it (`.done`).
fn answer(server: &Server, req: &Path) {
    let text = match fs::File::open(req).and_then(|f| {
        use std::io::Read;
        let mut s = String::new();
        f.take(MAX_REQUEST).read_to_string(&mut s).map(|_| s)
    }) {
        Ok(t) => t,
        Err(e) => format!("unreadable: {e}"),
    };
    let reply = match Request::parse(&text) {
        Ok(r) => carry_out(server, &r),
        Err(e) => Err(format!("bad request: {e}")),
    };
    let body = match reply {
        Ok(msg) => format!("ok\n{msg}"),
        Err(msg) => format!("error\n{msg}"),
    };
    let done = req.with_extension("done");
    let tmp = req.with_extension("done.tmp");
    let written = fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, &done));
    if let Err(e) = written {
        log::warn!("cannot answer {}: {e}", req.display());
    }
    let _ = fs::remove_file(req);
}

/// Commits what a request brings back and queues it for every client.
pub fn carry_out(server: &Server, req: &Request) -> Result<String, String> {
    let owner = server.next_id();
    let now = library::now();
    let lib = &server.library;
    match req {
        Request::Restore { path, version } => match in_the_way(server, path) {
            Some(why) => Err(format!("cannot restore {path:?} beside what is there now ({why}); move that away first")),
            None => restore(server, path, *version, owner, now),
        },
        Request::Undelete { prefix, at_ns } => {
            let at = utc::format(at_ns.div_euclid(1_000_000_000));
            let what = if prefix.is_empty() { "everything".to_owned() } else { format!("{prefix:?}") };
            match lib.undelete(prefix, WallTime { unix_ns: *at_ns }, owner, now) {
                Ok(Undeleted { back, locked, in_the_way }) => {
                    for e in &back {
                        server.fan_out(&e.path, None);
                    }
                    log::info!("history: undeleted {} file(s) of {what} as at {at} UTC", back.len());
                    let mut msg = format!("{} file(s) of {what} brought back as they were at {at} UTC", back.len());
                    for e in &back {
                        msg.push_str(&format!("\n  {:?} (version {})", e.path, e.version));
                    }
                    if locked > 0 {
                        msg.push_str(&format!("\n{locked} file(s) were being written and were left; run it again"));
                    }
                    for p in &in_the_way {
                        msg.push_str(&format!("\n  left {p:?}: a file or folder made since stands in its way"));
                    }
                    Ok(msg)
                }
                Err(e) => Err(format!("cannot undelete {what}: {e}")),
            }
        }
    }
}

/// A file or folder made since, in the way of bringing `path` back as a
/// file (`path_rules`), unless `path` is a live file itself.
fn in_the_way(server: &Server, path: &str) -> Option<String> {
    let lib = &server.library;
    if lib.catalog().get(path).is_some_and(|c| c.state == EntryState::File) {
        return None;
    }
    lib.path_conflict(path, server.config.refuse_case_twins).map(|c| format!("{c:?}"))
}

fn restore(server: &Server, path: &str, version: u64, owner: u64, now: WallTime) -> Result<String, String> {
    match server.library.restore(path, version, owner, now) {
        Ok(Committed::New { entry, .. }) => {
            log::info!("history: restored {path:?} version {version} as version {}", entry.version);
            server.fan_out(path, None);
            Ok(format!("restored {path:?}: version {version}'s content is version {} now", entry.version))
        }
        Ok(Committed::Unchanged) => Ok(format!("{path:?} already holds version {version}'s content")),
        Ok(Committed::Locked) => Err(format!("{path:?} is being written; try again in a moment")),
        Ok(Committed::NoFile) => {
            Err(format!("no file version {version} of {path:?} is kept (see `server history`)"))
        }
        Err(e) => Err(format!("cannot restore {path:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        for r in [
            Request::Restore { path: "d/a b.txt".into(), version: 7 },
            Request::Undelete { prefix: "photos".into(), at_ns: 1_700_000_000_000_000_000 },
            Request::Undelete { prefix: String::new(), at_ns: -1 },
        ] {
            assert_eq!(Request::parse(&r.render()), Ok(r));
        }
        assert!(Request::parse("restore\n../etc/passwd\n1\n").is_err());
        assert!(Request::parse("restore\na\nx\n").is_err());
        assert!(Request::parse("format\na\n1\n").is_err());
        assert!(Request::parse("").is_err());
    }
}
