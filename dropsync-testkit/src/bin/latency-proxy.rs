//! `latency-proxy <target host:port> <one-way delay ms> <lifetime s>`:
//! forwards connections to the target with the delay added each way; prints
//! `latency-proxy listening port=N` and exits after its lifetime.

use std::net::ToSocketAddrs;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: latency-proxy <target host:port> <one-way delay ms> <lifetime s>";
    let (Some(target), Some(ms), Some(life)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let target = target.to_socket_addrs().ok().and_then(|mut a| a.next());
    let (Some(target), Ok(ms), Ok(life)) = (target, ms.parse::<u64>(), life.parse::<u64>()) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let proxy = match dropsync_testkit::LatencyProxy::start(target, Duration::from_millis(ms)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("latency-proxy: {e}");
            std::process::exit(1);
        }
    };
    println!("latency-proxy listening port={}", proxy.port);
    let end = Instant::now() + Duration::from_secs(life);
    while Instant::now() < end {
        std::thread::park_timeout(end - Instant::now());
    }
}
