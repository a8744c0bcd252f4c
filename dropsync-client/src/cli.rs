//! Command line: the assignment's five arguments, plus `--flags` with
//! documented defaults, turned into one validated [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dropsync_io::tls::Fingerprint;
use dropsync_proto::limits::DEFAULT_MAX_CHUNK;

/// Largest `<chunk size>` accepted: the server's default maximum chunk
/// payload (PROTOCOL.md section 4). A larger chunk would only be answered
/// 0x0004 and halved until it fits, so it is refused up front instead.
pub const MAX_CHUNK_SIZE: u32 = DEFAULT_MAX_CHUNK;

/// Label sent in HELLO when neither `--label` nor a host name is available.
pub const FALLBACK_LABEL: &str = "client";

/// dropsync client: keeps <FOLDER> in sync with every other client of the
/// server at <HOST>.
///
/// Local changes are uploaded as soon as a file written to is closed, or
/// has been quiet for --debounce-ms (1 s while its writer holds it open);
/// files changed on other clients are written into the
/// folder as they arrive. The client reconnects by itself when the server
/// goes away. Its own state lives in <FOLDER>/.dropsync/, which is never
/// synced. SIGINT or SIGTERM stops it cleanly (exit status 0).
#[derive(Debug, Parser)]
#[command(name = "client", version, about, long_about)]
pub struct Args {
    /// Server host name or address.
    pub host: String,
    /// Server port this client sends files to (client → server transfers).
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub send_port: u16,
    /// Server port this client receives files from (server → client transfers).
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    pub receive_port: u16,
    /// Folder to keep in sync (created if missing).
    pub folder: PathBuf,
    /// Largest chunk this client sends, in bytes: 1 to 16777216 (16 MiB).
    #[arg(value_parser = parse_chunk_size)]
    pub chunk_size: u32,
    /// The delete guard: when at least this many of the files in sync (and
    /// at least half of them) are deleted at once, the deletes are held, not
    /// sent, until `client confirm-deletes FOLDER` (send them) or `client
    /// restore-deletes FOLDER` (bring the files back from the server).
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..))]
    pub delete_guard_min: u16,
    /// Turns the delete guard off: every delete is sent.
    #[arg(long)]
    pub no_delete_guard: bool,
    /// Synchronise once and exit: connect, reconcile, transfer everything
    /// pending in both directions, save META-DATA, exit 0 (non-zero with a
    /// one-line message on failure).
    #[arg(long)]
    pub once: bool,
    /// The assignment's plain overwrite: an incoming version replaces a
    /// local change the server never accepted, without keeping it as a
    /// "conflicted copy" file (PROTOCOL.md section 7 [ext]).
    #[arg(long)]
    pub no_conflict_copies: bool,
    /// Upload every file whole: never offer the server COPY [ext] (a file
    /// renamed or copied from one in sync then goes out as a COPY of it,
    /// with no bytes sent, and arrives here the same way).
    #[arg(long)]
    pub no_copy: bool,
    /// Secure mode: connect over TLS to the server whose certificate has
    /// this SHA-256 fingerprint (the server logs it at start; `server
    /// fingerprint` prints it), and only to it. Kept in .dropsync/, so
    /// later runs need not repeat it.
    #[arg(long, value_name = "FINGERPRINT", value_parser = parse_fingerprint)]
    pub server_fingerprint: Option<Fingerprint>,
    /// Secure mode without a fingerprint given: pin whatever key the server
    /// shows on this first connection (check it against the server's log)
    /// and require it from then on.
    #[arg(long)]
    pub trust_first_use: bool,
    /// Name sent to the server in HELLO and used in this client's
    /// conflict-copy names. Default: the host name, else "client".
    #[arg(long, value_name = "NAME")]
    pub label: Option<String>,
    /// Uploads of files larger than one chunk in flight at once,
    /// interleaved on the send connection; 1 = strictly one at a time. The
    /// default, 8, measured best (`make bench-parallel`): 7.8× faster than 1
    /// for many small files at 20 ms round trip, 1.5× on loopback. Each
    /// holds a chunk buffer here and on the server, hence the bound.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,
    /// Operations in flight at once on the send connection, counting the
    /// `--parallel` large uploads, uploads of files that fit in one chunk,
    /// DELETEs and REQUESTs. Small operations hold no buffer, so many can
    /// be in flight: for 10,000 files of 4 KiB on loopback (`make bench`,
    /// B3) 16, 32, 64 and 128 took 0.42, 0.32, 0.27 and 0.28 s.
    #[arg(long, value_name = "M", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub in_flight: u16,
    /// A changed file is uploaded once it has been quiet for this many
    /// milliseconds. 20 by default: long enough to coalesce the bursts of
    /// writes of one save, short enough that an edit reaches the other
    /// clients in tens of milliseconds. A file closed after writing goes at
    /// once; one written to and still held open waits for its close, or
    /// for 1 s (at least this) without writes. A file still being written
    /// when its upload starts is ABORTed and sent again once quiet.
    #[arg(long, value_name = "MS", default_value_t = 20)]
    pub debounce_ms: u64,
    /// Full rescan of the folder (a stat walk) every this many seconds, for
    /// changes the file-system watcher missed (0: never); never more often
    /// than takes 1 % of a core (a walk that took 1 s waits 100 s). `--once`
    /// scans once and needs neither the watcher nor this.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub rescan_secs: u64,
    /// [ext] Once the folder has been in sync, nothing changing, for this
    /// many seconds, ask the server what changed since the listing it last
    /// sent (META-DATA since a version), so that the next connection is
    /// sent only what changes after that. Not with `--once`.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub checkpoint_secs: u64,
    /// Send a keep-alive after this many seconds without sending on a
    /// connection (PROTOCOL.md section 9).
    #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub keepalive_secs: u64,
    /// Drop a connection (and reconnect) after this many seconds without
    /// receiving anything on it.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub dead_peer_secs: u64,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,
}

/// Parses `<chunk size>`: a whole number of bytes, 1 ..= [`MAX_CHUNK_SIZE`].
pub fn parse_chunk_size(text: &str) -> Result<u32, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of bytes"))?;
    if n == 0 {
        return Err("must be at least 1 byte".to_owned());
    }
    if n > u64::from(MAX_CHUNK_SIZE) {
        return Err(format!("{n} bytes is more than the {MAX_CHUNK_SIZE}-byte (16 MiB) maximum"));
    }
    Ok(n as u32)
}

/// Everything the client needs to run, validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// Server host.
    pub host: String,
    /// Server send port.
    pub send_port: u16,
    /// Server receive port.
    pub receive_port: u16,
    /// The synced folder, as given (made absolute by the caller).
    pub folder: PathBuf,
    /// Largest chunk sent.
    pub chunk_size: u32,
    /// `--once`.
    pub once: bool,
    /// Keep conflict copies (not `--no-conflict-copies`).
    pub conflict_copies: bool,
    /// Offer COPY [ext] to the server (`--no-copy` turns it off).
    pub copy: bool,
    /// HELLO label and conflict-copy label.
    pub label: String,
    /// Uploads of files larger than one chunk in flight.
    pub parallel: usize,
    /// Operations in flight on the send connection (at least `parallel`).
    pub in_flight: usize,
    /// Quiet time before a changed file is uploaded.
    pub debounce: Duration,
    /// Period of the full rescan; `None` turns it off.
    pub rescan: Option<Duration>,
    /// [ext] Time in sync, nothing changing, before the client asks what
    /// changed since its last listing; `None` (`--once`): never.
    pub checkpoint: Option<Duration>,
    /// Least number of deletes at once that the delete guard holds (with
    /// half the files in sync); `None`: the guard is off.
    pub delete_guard: Option<usize>,
    /// Keep-alive interval.
    pub keepalive: Duration,
    /// Silence after which a connection is dropped.
    pub dead_peer: Duration,
    /// `--server-fingerprint`.
    pub server_fingerprint: Option<Fingerprint>,
    /// `--trust-first-use`.
    pub trust_first_use: bool,
}

/// `--server-fingerprint`: 64 hex digits, with or without `sha256:` and colons.
fn parse_fingerprint(text: &str) -> Result<Fingerprint, String> {
    Fingerprint::parse(text).ok_or_else(|| format!("{text:?}: not a SHA-256 fingerprint (64 hex digits)"))
}

impl Args {
    /// The validated configuration.
    pub fn config(&self) -> Config {
        Config {
            host: self.host.clone(),
            send_port: self.send_port,
            receive_port: self.receive_port,
            folder: self.folder.clone(),
            chunk_size: self.chunk_size,
            once: self.once,
            conflict_copies: !self.no_conflict_copies,
            copy: !self.no_copy,
            label: self.label.clone().unwrap_or_else(default_label),
            parallel: usize::from(self.parallel),
            in_flight: usize::from(self.in_flight.max(self.parallel)),
            debounce: Duration::from_millis(self.debounce_ms),
            rescan: (self.rescan_secs > 0 && !self.once).then(|| Duration::from_secs(self.rescan_secs)),
            checkpoint: (!self.once).then(|| Duration::from_secs(self.checkpoint_secs)),
            delete_guard: (!self.no_delete_guard).then_some(usize::from(self.delete_guard_min)),
            keepalive: Duration::from_secs(self.keepalive_secs),
            dead_peer: Duration::from_secs(self.dead_peer_secs),
            server_fingerprint: self.server_fingerprint,
            trust_first_use: self.trust_first_use,
        }
    }

    /// The log filter the flags ask for (RUST_LOG, if set, overrides it).
    /// `notify` is kept at warnings: it logs routine inotify housekeeping
    /// (watches of deleted folders) at info.
    pub fn log_filter(&self) -> &'static str {
        match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) => "info,notify=warn",
            (false, 1) => "debug,notify=warn",
            (false, _) => "trace",
        }
    }
}

/// The host name: `/etc/hostname`, else `$HOSTNAME`, else [`FALLBACK_LABEL`].
fn default_label() -> String {
    let from_file = std::fs::read_to_string("/etc/hostname").ok();
    let from_env = std::env::var("HOSTNAME").ok();
    from_file
        .into_iter()
        .chain(from_env)
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
        .unwrap_or_else(|| FALLBACK_LABEL.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["client", "localhost", "5000", "5001", "dir"].iter().chain(args))
    }

    #[test]
    fn chunk_size_bounds() {
        assert_eq!(parse_chunk_size("1"), Ok(1));
        assert_eq!(parse_chunk_size("16777216"), Ok(MAX_CHUNK_SIZE));
        assert!(parse_chunk_size("0").unwrap_err().contains("at least 1"));
        assert!(parse_chunk_size("16777217").unwrap_err().contains("maximum"));
        assert!(parse_chunk_size("abc").unwrap_err().contains("not a whole number"));
        assert!(parse_chunk_size("-5").is_err());
        assert!(parse_chunk_size("99999999999999999999999").is_err());
    }

    #[test]
    fn defaults_and_flags() {
        let a = parse(&["4096"]).expect("valid");
        let c = a.config();
        assert_eq!(c.chunk_size, 4096);
        assert!(c.conflict_copies && !c.once);
        assert_eq!((c.parallel, c.in_flight), (8, 64));
        assert!(c.debounce <= Duration::from_millis(50));
        assert_eq!(c.keepalive, Duration::from_secs(15));
        assert_eq!(c.dead_peer, Duration::from_secs(60));
        assert!(!c.label.is_empty());
        assert_eq!(a.log_filter(), "info,notify=warn");

        let a = parse(&["1", "--once", "--no-conflict-copies", "--label", "bob", "--parallel", "4", "--rescan-secs", "9", "-vv"])
            .expect("valid");
        let c = a.config();
        assert!(c.once && !c.conflict_copies);
        assert_eq!((c.label.as_str(), c.parallel, c.rescan), ("bob", 4, None));
        assert_eq!(a.log_filter(), "trace");

        // In flight is never below the large-upload slots.
        let c = parse(&["1", "--parallel", "40", "--in-flight", "10"]).expect("valid").config();
        assert_eq!((c.parallel, c.in_flight), (40, 40));
        assert!(parse(&["1", "--in-flight", "0"]).is_err());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(parse(&["0"]).is_err());
        assert!(parse(&["many"]).is_err());
        assert!(parse(&["1", "--parallel", "0"]).is_err());
        assert!(Args::try_parse_from(["client", "h", "0", "1", "d", "5"]).is_err(), "port 0");
        assert!(Args::try_parse_from(["client", "h", "1", "2", "d"]).is_err(), "missing chunk size");
    }
}
