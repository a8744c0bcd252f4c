//! `./server <send port> <receive port>`: the dropsync server.
//!
//! Threads: two accept loops (one per port and address), a handshake thread
//! per new connection that becomes the session's receiving thread (send
//! connection) or reply reader (receive connection), and the senders: a
//! fixed worker pool fed by a FIFO work queue, or one dedicated thread per
//! client with `--workers 0`. The main thread waits for SIGINT/SIGTERM.

mod accept;
mod admin;
mod blobs;
mod chunk_digests;
mod cli;
mod commands;
mod enrolment;
mod follower;
mod gate;
mod clock;
mod exposition;
mod http;
mod inbound;
mod library;
mod metrics;
mod outbound;
mod pg_catalog;
mod pg_gc;
mod pg_locks;
mod s3;
mod quiet_log;
mod server;
mod session;
mod status_page;
mod sink;
mod streams;
mod views;
mod workers;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use clap::Parser;
use dropsync_core::pairing::ConnKind;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::server::{Config, Server};

/// Stack size of every server thread: they keep their buffers on the heap,
/// so a small stack lets thousands of clients fit in little memory.
const THREAD_STACK: usize = 256 * 1024;

/// How long shutdown waits for outgoing transfers to send their ABORT.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Spawns a named thread with the server's stack size.
pub fn spawn_named<T: Send + 'static, F: FnOnce() -> T + Send + 'static>(
    name: &str,
    f: F,
) -> std::io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).stack_size(THREAD_STACK).spawn(f)
}

fn init_logging(args: &cli::Args) {
    let level = match (args.quiet, args.verbose) {
        (true, _) => "warn",
        (_, 0) => "info",
        (_, 1) => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
}

fn bind_all(addrs: &[IpAddr], port: u16) -> std::io::Result<Vec<TcpListener>> {
    if addrs.is_empty() {
        // Dual-stack wildcard where IPv6 exists, IPv4 wildcard otherwise.
        return match TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)) {
            Ok(l) => Ok(vec![l]),
            Err(_) => Ok(vec![TcpListener::bind(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))?]),
        };
    }
    let mut out = Vec::new();
    let mut port = port;
    for a in addrs {
        let l = TcpListener::bind(SocketAddr::new(*a, port))?;
        // With port 0, every address shares the port the first one got.
        port = l.local_addr()?.port();
        out.push(l);
    }
    Ok(out)
}

/// Tells, once at start, this server's fingerprint (which clients pin) and
/// who may connect: in the open protocol, listening beyond loopback, that
/// anyone who reaches the ports can read and change every file, and how to
/// enrol.
fn say_who_gets_in(gate: &gate::Gate, new_key: bool, args: &cli::Args) {
    let fp = gate.fingerprint;
    let made = if new_key { " (new key)" } else { "" };
    log::info!("server fingerprint {fp}{made}; clients pin it with --server-fingerprint {fp}");
    if gate.secure() {
        log::info!("secure mode: {} enrolled client(s); plaintext and unknown keys are refused", gate.enrolled());
        return;
    }
    if listens_beyond_loopback(&args.bind) {
        log::warn!(
            "open mode: nobody is enrolled, so anyone who can reach ports {} and {} can read and change every \
             file. To admit only your own clients, run each with --server-fingerprint {fp}, then enrol it on \
             this machine with `server enroll --root {} FINGERPRINT` (the client logs its fingerprint); \
             see README, \"Running it for real\"",
            args.send_port,
            args.receive_port,
            args.root.display()
        );
    }
}

/// True unless every `--bind` address is a loopback one (no `--bind`:
/// every address).
fn listens_beyond_loopback(binds: &[IpAddr]) -> bool {
    binds.is_empty() || binds.iter().any(|a| !a.to_canonical().is_loopback())
}

fn run(args: cli::Args) -> Result<(), String> {
    std::fs::create_dir_all(&args.root).map_err(|e| format!("cannot create root {}: {e}", args.root.display()))?;
    let remote = match &args.blobs {
        Some(location) => {
            let endpoint = args.s3_endpoint.clone().or_else(|| std::env::var("AWS_ENDPOINT_URL").ok());
            let endpoint = endpoint.ok_or("--blobs s3://... needs --s3-endpoint URL (or AWS_ENDPOINT_URL)")?;
            Some(s3::Remote::new(location, &endpoint)?)
        }
        None => None,
    };
    let gc_grace = Duration::from_secs(args.gc_grace_secs);
    let library = library::open(&args.root, args.catalog.as_deref(), remote, gc_grace, !args.no_conflict_copies)
        .map_err(|e| format!("cannot open storage in {}: {e}", args.root.display()))?;
    let config = Config {
        chunk_size: args.chunk_size,
        max_chunk: args.max_chunk,
        max_name_len: usize::from(args.max_name_len),
        max_clients: args.max_clients,
        max_clients_per_address: args.max_clients_per_address.unwrap_or_else(|| cli::default_per_address(args.max_clients)),
        keepalive: Duration::from_secs(args.keepalive_secs.max(1)),
        dead_peer: Duration::from_secs(args.dead_peer_secs.max(1)),
        workers: args.workers,
        parallel: usize::from(args.parallel),
        max_transfers: args.max_transfers as usize,
        refuse_case_twins: !args.allow_case_twins,
        streaming: !args.no_streaming,
    };
    let send = bind_all(&args.bind, args.send_port).map_err(|e| format!("cannot listen on send port {}: {e}", args.send_port))?;
    let recv = bind_all(&args.bind, args.receive_port)
        .map_err(|e| format!("cannot listen on receive port {}: {e}", args.receive_port))?;
    let http = match args.http {
        Some(a) => Some(TcpListener::bind(a).map_err(|e| format!("cannot listen for HTTP on {a}: {e}"))?),
        None => None,
    };
    let (gate, new_key) = gate::Gate::open(&args.root, args.require_auth)?;
    dropsync_io::tls::warm_up();
    say_who_gets_in(&gate, new_key, &args);
    let server = Arc::new(Server::new(config, library, gate));
    let keep = admin::Retention { age: Duration::from_secs_f64(args.keep_days * 86_400.0), bytes: args.keep_size };
    if let Some(url) = &args.catalog {
        follower::start(server.clone(), url, gc_grace).map_err(|e| format!("cannot start the follower thread: {e}"))?;
    }
    gate::start_watch(server.clone()).map_err(|e| format!("cannot start the enrolment thread: {e}"))?;
    admin::start(server.clone(), &args.root, keep).map_err(|e| format!("cannot start the history thread: {e}"))?;
    {
        use dropsync_core::meta_server::Catalog;
        log::info!(
            "storage {}: {} path(s); {} worker(s){}",
            args.root.display(),
            server.library.catalog().len(),
            args.workers,
            if args.workers == 0 { " (dedicated sender per client)" } else { "" }
        );
    }
    // SIGINT/SIGTERM are caught from here on, before the "listening" line
    // tells anyone we are up: a SIGTERM sent right after that line must get
    // the graceful shutdown and exit status 0 of section 9, not the default
    // action (found by dropsync-soak, seed 102).
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]).map_err(|e| e.to_string())?;
    let addr = |ls: &[TcpListener]| ls.first().and_then(|l| l.local_addr().ok()).map_or("?".into(), |a| a.to_string());
    let http_addr = http.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = http {
        http::start(server.clone(), l).map_err(|e| format!("cannot start the HTTP threads: {e}"))?;
    }
    // Machine-readable, for scripts and tests that start us on port 0.
    match http_addr {
        Some(h) => {
            log::info!("status page on http://{h}/ (metrics on /metrics)");
            println!("dropsync-server listening send={} receive={} http={h}", addr(&send), addr(&recv));
        }
        None => println!("dropsync-server listening send={} receive={}", addr(&send), addr(&recv)),
    }
    let _ = std::io::stdout().flush();

    for (listeners, kind) in [(send, ConnKind::Send), (recv, ConnKind::Receive)] {
        for l in listeners {
            let s = server.clone();
            spawn_named("accept", move || accept::accept_loop(s, l, kind)).map_err(|e| e.to_string())?;
        }
    }
    for _ in 0..args.workers {
        let s = server.clone();
        spawn_named("worker", move || workers::pool_worker(s)).map_err(|e| e.to_string())?;
    }

    let sig = signals.forever().next().unwrap_or(SIGTERM);
    log::info!("signal {sig}: shutting down");
    shutdown(&server);
    Ok(())
}

/// Section 9: stop taking work, ABORT outgoing transfers in progress,
/// persist META-DATA, shutdown(2) every socket.
fn shutdown(server: &Server) {
    server.shutting_down.store(true, Ordering::SeqCst);
    server.work.close();
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while server.active_transfers.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for s in server.all_sessions() {
        server.end_session(&s, "server shutting down");
    }
    if let Err(e) = server.library.catalog().fold() {
        log::error!("cannot write the META-DATA snapshot: {e}");
    }
    log::info!("stopped");
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    if let Some(done) = commands::command(&argv).or_else(|| enrolment::command(&argv)) {
        return match done {
            Ok(msg) => {
                println!("{msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli::Args::parse();
    init_logging(&args);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("server: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_binds_are_not_beyond_loopback() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(listens_beyond_loopback(&[]), "the default is every address");
        assert!(!listens_beyond_loopback(&[ip("127.0.0.1"), ip("::1"), ip("127.0.0.2")]));
        assert!(!listens_beyond_loopback(&[ip("::ffff:127.0.0.1")]));
        assert!(listens_beyond_loopback(&[ip("127.0.0.1"), ip("0.0.0.0")]));
        assert!(listens_beyond_loopback(&[ip("192.168.1.5")]));
    }
}
