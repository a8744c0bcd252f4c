//! Progress of long transfers on a terminal: one line on stderr, redrawn a
//! few times a second, cleared when the transfer ends. Nothing is drawn
//! when stderr is not a terminal (logs, scripts, tests).
//!
//! A few lines of our own rather than a progress-bar crate: the protocol
//! gives no size for incoming files, the line must share stderr with the
//! log, and a byte count, percentage and rate are all that is shown.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Transfers smaller than this finish too fast to be worth a line.
const MIN_SIZE: u64 = 4 * 1024 * 1024;

/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(250);

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// Client → server.
    Up,
    /// Server → client.
    Down,
}

/// The progress line of one thread's transfers.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    last_draw: Option<Instant>,
    shown: bool,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// Draws only when stderr is a terminal.
    pub fn new() -> Self {
        Self { enabled: std::io::stderr().is_terminal(), last_draw: None, shown: false }
    }

    /// Reports `done` bytes of `name` (of `total`, when known) since
    /// `started`.
    pub fn update(&mut self, dir: Direction, name: &str, done: u64, total: Option<u64>, started: Instant) {
        if !self.enabled || total.unwrap_or(done) < MIN_SIZE && done < MIN_SIZE {
            return;
        }
        if self.last_draw.is_some_and(|t| t.elapsed() < REDRAW) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let line = render(dir, name, done, total, started.elapsed());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{line}\x1b[K");
        let _ = err.flush();
        self.shown = true;
    }

    /// Clears the line after a transfer ends.
    pub fn finish(&mut self) {
        if self.shown {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
            self.shown = false;
            self.last_draw = None;
        }
    }
}

/// The text of the line, e.g. `↑ big.bin  45%  480.0 / 1073.7 MB  98.2 MB/s`.
fn render(dir: Direction, name: &str, done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let arrow = match dir {
        Direction::Up => '↑',
        Direction::Down => '↓',
    };
    let mb = |b: u64| b as f64 / 1e6;
    let rate = mb(done) / elapsed.as_secs_f64().max(1e-3);
    match total {
        Some(t) if t > 0 => {
            let pct = done.saturating_mul(100) / t;
            format!("{arrow} {name}  {pct:>3}%  {:.1} / {:.1} MB  {rate:.1} MB/s", mb(done), mb(t))
        }
        _ => format!("{arrow} {name}  {:.1} MB  {rate:.1} MB/s", mb(done)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_known_and_unknown_sizes() {
        let s = Duration::from_secs(2);
        assert_eq!(render(Direction::Up, "a.bin", 50_000_000, Some(200_000_000), s), "↑ a.bin   25%  50.0 / 200.0 MB  25.0 MB/s");
        assert_eq!(render(Direction::Down, "b", 10_000_000, None, s), "↓ b  10.0 MB  5.0 MB/s");
    }

    #[test]
    fn draws_nothing_off_a_terminal() {
        let mut p = Progress { enabled: false, last_draw: None, shown: false };
        p.update(Direction::Up, "x", 1 << 30, Some(1 << 31), Instant::now());
        assert!(!p.shown);
    }
}
