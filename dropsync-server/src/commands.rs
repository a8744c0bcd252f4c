//! `server history`, `server restore` and `server undelete`: the version
//! history from the command line (README, "When something goes wrong").
//!
//! `history` reads the store as it is on disk and writes nothing, so it is
//! safe beside a running server. `restore` and `undelete` ask the running
//! server (`admin.rs`) to do it, so that what comes back is committed and
//! sent to every client, and print its answer.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;
use dropsync_core::meta_server;
use dropsync_core::utc;
use dropsync_io::dir_storage::DirStorage;
use dropsync_proto::metadata::EntryState;

use crate::admin::{Request, CONTROL_DIR};
use crate::clock;

/// How long `restore` and `undelete` wait for the running server's answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);

/// `server history [--root DIR] PATH`
#[derive(Parser, Debug)]
#[command(name = "server history", about = "Lists the versions of PATH the server keeps (the current one last)")]
struct HistoryArgs {
    /// The server's storage root.
    #[arg(long, default_value = "dropsync-data")]
    root: PathBuf,
    /// The server's catalog on PostgreSQL, when it keeps it there (its
    /// --catalog).
    #[arg(long, value_name = "URL")]
    catalog: Option<String>,
    /// The path, as in the synced folder (e.g. docs/report.txt).
    path: String,
}

/// `server restore [--root DIR] PATH VERSION`
#[derive(Parser, Debug)]
#[command(name = "server restore", about = "Brings VERSION of PATH back as its newest version, on every client")]
struct RestoreArgs {
    /// The server's storage root.
    #[arg(long, default_value = "dropsync-data")]
    root: PathBuf,
    /// The path.
    path: String,
    /// The version to bring back (from `server history`).
    version: u64,
}

/// `server undelete [--root DIR] [FOLDER] --at TIME`
#[derive(Parser, Debug)]
#[command(
    name = "server undelete",
    about = "Brings FOLDER (everything if none) back as it was at TIME, on every client"
)]
struct UndeleteArgs {
    /// The server's storage root.
    #[arg(long, default_value = "dropsync-data")]
    root: PathBuf,
    /// The folder, as in the synced folder; everything if left out.
    #[arg(default_value = "")]
    folder: String,
    /// When, in UTC: "YYYY-MM-DD HH:MM[:SS]", or "@SECONDS" since the epoch.
    #[arg(long)]
    at: String,
}

/// Runs one of the history commands if `argv` names one: `Some` with what
/// to print (or the error), `None` for the server itself.
pub fn command(argv: &[String]) -> Option<Result<String, String>> {
    let rest = argv.get(1..).unwrap_or_default();
    let result = match argv.get(1).map(String::as_str) {
        Some("history") => HistoryArgs::try_parse_from(rest).map(|a| history(&a.root, a.catalog.as_deref(), &a.path)),
        Some("restore") => RestoreArgs::try_parse_from(rest)
            .map(|a| ask(&a.root, &Request::Restore { path: a.path, version: a.version })),
        Some("undelete") => UndeleteArgs::try_parse_from(rest).map(|a| match parse_time(&a.at) {
            Some(at_ns) => ask(&a.root, &Request::Undelete { prefix: a.folder, at_ns }),
            None => Err(format!("--at {:?}: not a time (\"YYYY-MM-DD HH:MM[:SS]\" UTC, or \"@SECONDS\")", a.at)),
        }),
        _ => return None,
    };
    Some(result.unwrap_or_else(|e| Err(e.render().to_string().trim_end().to_owned())))
}

/// "@SECONDS" or a UTC date, to ns since the epoch.
fn parse_time(text: &str) -> Option<i64> {
    let secs = match text.strip_prefix('@') {
        Some(s) => s.trim().parse().ok()?,
        None => utc::parse(text)?,
    };
    secs.checked_mul(1_000_000_000)
}

fn history(root: &Path, catalog: Option<&str>, path: &str) -> Result<String, String> {
    let (kept, current) = match catalog {
        Some(url) => {
            use dropsync_core::meta_server::Catalog;
            let pg = crate::pg_catalog::PgCatalog::open(url).map_err(|e| format!("cannot read the catalog: {e}"))?;
            (pg.history(path), pg.get(path))
        }
        None => {
            let meta = root.join("meta");
            if !meta.is_dir() {
                return Err(format!("{} holds no server storage (--root? --catalog?)", root.display()));
            }
            let storage = DirStorage::new(meta).map_err(|e| e.to_string())?;
            let (table, history) =
                meta_server::read_only(&storage).map_err(|e| format!("cannot read the store: {e}"))?;
            (history.of(path).to_vec(), table.get(path).cloned())
        }
    };
    if kept.is_empty() && current.is_none() {
        return Err(format!("{path:?} is not known to the server"));
    }
    let mut out = format!("versions of {path:?} (UTC):");
    let line = |version: u64, at: i64, state: EntryState, size: u64, end: String| {
        let what = match state {
            EntryState::File => format!("file, {size} bytes"),
            _ => "deleted".to_owned(),
        };
        format!("\n  version {version:<6} {}  {what:<22} {end}", utc::format(at.div_euclid(1_000_000_000)))
    };
    for k in &kept {
        let e = &k.entry;
        out.push_str(&line(
            e.version,
            e.mtime_ns,
            e.state,
            e.size,
            format!("replaced {}", utc::format(k.replaced_ns.div_euclid(1_000_000_000))),
        ));
    }
    if let Some(e) = &current {
        out.push_str(&line(e.version, e.mtime_ns, e.state, e.size, "(current)".into()));
    }
    out.push_str(&format!("\nbring one back with: server restore --root {} {path:?} VERSION", root.display()));
    Ok(out)
}

/// Drops the request into the running server's control folder and waits
/// for its answer.
fn ask(root: &Path, req: &Request) -> Result<String, String> {
    let dir = root.join(CONTROL_DIR);
    if !dir.is_dir() {
        return Err(format!("no running server keeps its storage in {} (--root?)", root.display()));
    }
    let name = format!("{}-{}", clock::now_ns(), std::process::id());
    let (tmp, req_path, done) =
        (dir.join(format!("{name}.tmp")), dir.join(format!("{name}.req")), dir.join(format!("{name}.done")));
    std::fs::write(&tmp, req.render())
        .and_then(|()| std::fs::rename(&tmp, &req_path))
        .map_err(|e| format!("cannot ask the server: {e}"))?;
    let deadline = Instant::now() + ANSWER_WAIT;
    while Instant::now() < deadline {
        if let Ok(answer) = std::fs::read_to_string(&done) {
            let _ = std::fs::remove_file(&done);
            return match answer.split_once('\n') {
                Some(("ok", msg)) => Ok(msg.to_owned()),
                Some((_, msg)) => Err(msg.to_owned()),
                None => Err(answer),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&req_path);
    Err(format!("no answer within {ANSWER_WAIT:?}: is the server running with --root {}?", root.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_utc_dates_or_seconds() {
        assert_eq!(parse_time("@1700000000"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_time("2023-11-14 22:13:20"), Some(1_700_000_000_000_000_000));
        assert_eq!(parse_time("soon"), None);
    }
}
