//! Command line: the assignment's two ports, plus `--flags` with defaults.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use dropsync_proto::limits::{DEFAULT_MAX_CHUNK, MAX_NAME_LEN};

/// dropsync server: keeps one folder's files and pushes every finished
/// upload to every other connected client.
#[derive(Debug, Parser)]
#[command(name = "server", version, about)]
pub struct Args {
    /// Port clients send files to (client → server transfers). 0 picks a free port.
    pub send_port: u16,
    /// Port clients receive files from (server → client transfers). 0 picks a free port.
    pub receive_port: u16,
    /// Folder holding the files and META-DATA (created if missing).
    #[arg(long, default_value = "dropsync-data")]
    pub root: PathBuf,
    /// Address to listen on; repeat for several. Default: every IPv6 and IPv4 address.
    #[arg(long = "bind", value_name = "ADDR")]
    pub bind: Vec<IpAddr>,
    /// Worker threads serving outgoing transfers from one FIFO work queue;
    /// 0 gives every client its own dedicated sending thread instead.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Most transfers interleaved to one client at once on its receive
    /// connection ([ext] parallel transfers); 1 = strictly one at a time.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub parallel: u16,
    /// Size of the chunks the server sends.
    #[arg(long, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1..=i64::from(DEFAULT_MAX_CHUNK)))]
    pub chunk_size: u32,
    /// Largest chunk payload accepted from clients (larger: 0x0004, payload skipped).
    #[arg(long, default_value_t = DEFAULT_MAX_CHUNK, value_parser = clap::value_parser!(u32).range(1..=i64::from(DEFAULT_MAX_CHUNK)))]
    pub max_chunk: u32,
    /// Longest file name accepted, in bytes (at most the protocol's 4096).
    #[arg(long, default_value_t = MAX_NAME_LEN as u16, value_parser = clap::value_parser!(u16).range(1..=MAX_NAME_LEN as i64))]
    pub max_name_len: u16,
    /// Most clients connected at once; connections beyond are closed at once.
    #[arg(long, default_value_t = 4096)]
    pub max_clients: usize,
    /// Most clients connected at once from one IP address. Default: all
    /// but an eighth of --max-clients (at least one), so that no single
    /// address can lock the others out.
    #[arg(long)]
    pub max_clients_per_address: Option<usize>,
    /// Most uploads open at once on one connection; the first message of
    /// one more is refused with 0x0080 (PROTOCOL.md section 9: at least 256).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(256..=65536))]
    pub max_transfers: u32,
    /// Send a keep-alive after this many seconds without sending on a connection.
    #[arg(long, default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Close a connection after this many seconds without receiving anything
    /// (not a legacy one: TCP keep-alive watches those), and abort an open
    /// upload that has had no message of its own for as long.
    #[arg(long, default_value_t = 60)]
    pub dead_peer_secs: u64,
    /// Serve /metrics (Prometheus text), /healthz and a status page over
    /// HTTP on this address, e.g. 127.0.0.1:9100 (port 0 picks one). Off
    /// by default. The page lists clients, paths and changes to anyone who
    /// can reach it, with no login: keep it on loopback, or behind a proxy
    /// that authenticates.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Keep the catalog (META-DATA, versions, history) on PostgreSQL, e.g.
    /// postgres://dropsync@127.0.0.1:5432/dropsync, instead of in ROOT/meta;
    /// contents stay in ROOT/blobs. The schema is made or upgraded at start.
    #[arg(long, value_name = "URL")]
    pub catalog: Option<String>,
    /// Keep contents in an S3 bucket, s3://BUCKET[/PREFIX], one object per
    /// content named by its SHA-256; ROOT/blobs is then a local cache.
    /// Credentials and region: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_REGION (default us-east-1).
    #[arg(long, value_name = "S3_URL")]
    pub blobs: Option<String>,
    /// The S3 service's URL (path-style), e.g. http://127.0.0.1:9000 for a
    /// local one, https://s3.eu-west-1.amazonaws.com for AWS; default:
    /// AWS_ENDPOINT_URL.
    #[arg(long, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// With a shared catalog and bucket: how long a content no instance
    /// refers to any more waits before its object may be deleted (uploads
    /// in progress on other instances are given this long to commit).
    #[arg(long, value_name = "SECONDS", default_value_t = 3600)]
    pub gc_grace_secs: u64,
    /// Admit enrolled clients only, over TLS, even while nobody is enrolled
    /// (secure mode is on by itself once anyone is: `server enroll`).
    #[arg(long)]
    pub require_auth: bool,
    /// Accept files whose names differ from a live file's in letter case
    /// alone (README.TXT beside readme.txt). By default they are refused
    /// with 0x0100, since a case-insensitive file system (macOS, Windows)
    /// cannot hold both; the client that made one keeps it as a conflict
    /// copy instead.
    #[arg(long)]
    pub allow_case_twins: bool,
    /// The assignment's plain overwrite: never keep an overwritten version
    /// as a conflict copy (PROTOCOL.md section 6 [ext]).
    #[arg(long)]
    pub no_conflict_copies: bool,
    /// Deliver an upload only once it is committed: no streaming
    /// deliveries ([ext] docs/PROTOCOL.md, "Streaming deliveries"), which
    /// by default send a large upload to the other clients that said HELLO
    /// while it arrives.
    #[arg(long)]
    pub no_streaming: bool,
    /// Days every overwritten or deleted version is kept, for `server
    /// history`, `server restore` and `server undelete` (fractions allowed).
    #[arg(long, default_value_t = 30.0, value_parser = parse_keep_days)]
    pub keep_days: f64,
    /// A size budget for the history: of the versions `--keep-days` keeps,
    /// only the most recently replaced ones whose sizes add up to at most
    /// this, e.g. 500M or 20G (K, M, G, T: powers of 1024). Default: no
    /// budget. Retention runs at start and every minute.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub keep_size: Option<u64>,
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long)]
    pub quiet: bool,
}

/// The default of `--max-clients-per-address`: seven eighths of
/// `max_clients` (at least one), leaving the rest for other addresses.
pub fn default_per_address(max_clients: usize) -> usize {
    (max_clients - max_clients / 8).max(1)
}

/// `--keep-days`: a number of days from 0 to 36,500.
fn parse_keep_days(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(d) if (0.0..=36_500.0).contains(&d) => Ok(d),
        _ => Err(format!("{text:?}: a number of days from 0 to 36500")),
    }
}

/// `--keep-size`: bytes, or a number with K, M, G or T (powers of 1024).
fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let shift = match unit.trim().to_ascii_uppercase().trim_end_matches("IB").trim_end_matches('B') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("{text:?}: a size such as 500M or 20G")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("{text:?}: a size such as 500M or 20G"))?;
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{text:?}: too large"))
}

#[cfg(test)]
mod size_tests {
    use super::parse_size;

    #[test]
    fn sizes_take_binary_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1 t"), Ok(1 << 40));
        assert!(parse_size("M").is_err() && parse_size("5X").is_err() && parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
