//! `./client <remote host> <send port> <receive port> <folder name> <chunk size>`:
//! keeps a folder in sync with every other client of a dropsync server.
//!
//! Module map: `cli` (arguments), `client` (life cycle, reconnection),
//! `session` (the control loop of one connection, carrying out core's
//! `sync_policy`), `connect` (sockets, HELLO), `incoming` (receive thread:
//! driver and host of core's `receiving` machine), `outgoing` (the chunk
//! source of core's `sending` machine), `send_thread` (the send
//! connection's one owner), `replies` (reply thread), `initial_sync`
//! (reconciliation on connect), `scan` and `watch` (noticing local
//! changes), `folder` (conflict copies, local deletes), `state` (shared
//! records, META-DATA file), `held` (the answers to held deletes), `ignores`, `status`
//! (`client status FOLDER`), `paths`,
//! `progress`, `events`.

mod cli;
mod client;
mod connect;
mod copy_source;
mod events;
mod folder;
mod held;
mod ignores;
mod incoming;
mod initial_sync;
mod names;
mod outgoing;
mod paths;
mod progress;
mod replies;
mod saved_index;
mod scan;
mod send_thread;
mod session;
mod state;
mod status;
mod trust;
mod watch;
mod write_watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().collect();
    // Bare, for scripts: `server enroll $(client fingerprint FOLDER)`.
    if let Some(done) = trust::command(&argv) {
        return match done {
            Ok(fp) => {
                println!("{fp}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(done) = held::command(&argv).or_else(|| status::command(&argv)) {
        return match done {
            Ok(msg) => {
                println!("client: {msg}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("client: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let args = cli::Args::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(args.log_filter()))
        .format_timestamp_millis()
        .init();
    match client::run(args.config()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line for the user, not a log record (and never a panic).
            eprintln!("client: {e}");
            ExitCode::FAILURE
        }
    }
}
