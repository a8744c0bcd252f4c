//! Signals and process states the testkit does not cover: SIGSTOP and
//! SIGCONT, "have all threads stopped yet", and "did it exit by itself"
//! (a child the harness has not reaped stays a zombie, so `/proc` tells).
//! Linux only, through `/proc` and kill(1), without unsafe code.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dropsync_testkit::wait_until;

/// How long a SIGSTOP may take to stop every thread of a process.
pub const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// Sends `sig` (e.g. `-STOP`) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) -> Result<(), String> {
    let status = Command::new("kill").args([sig, &pid.to_string()]).status().map_err(|e| format!("kill: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("kill {sig} {pid}: {status}"))
    }
}

/// The state letter of a task from its `stat` file (R, S, D, T, t, Z, ...).
fn state_in(stat: &Path) -> Option<char> {
    let text = std::fs::read_to_string(stat).ok()?;
    // The command name is in parentheses and may contain anything.
    let after = &text[text.rfind(')')? + 1..];
    after.split_whitespace().next()?.chars().next()
}

/// The state letter of process `pid`, `None` when there is no such process.
pub fn state(pid: u32) -> Option<char> {
    state_in(Path::new(&format!("/proc/{pid}/stat")))
}

/// True when `pid` ended (a zombie waiting to be reaped, or gone).
pub fn exited(pid: u32) -> bool {
    matches!(state(pid), None | Some('Z' | 'X'))
}

/// True when every thread of `pid` is stopped (or dead).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
    tasks.flatten().all(|t| matches!(state_in(&t.path().join("stat")), None | Some('T' | 't' | 'Z' | 'X')))
}

/// SIGSTOP, then waits until every thread has actually stopped: a thread
/// still running could otherwise finish a rename into the folder after the
/// caller believes the process is frozen.
pub fn stop(pid: u32) -> Result<(), String> {
    signal(pid, "-STOP")?;
    if wait_until(STOP_DEADLINE, || all_stopped(pid)) {
        Ok(())
    } else {
        Err(format!("process {pid} did not stop within {STOP_DEADLINE:?} of SIGSTOP"))
    }
}

/// SIGCONT.
pub fn resume(pid: u32) -> Result<(), String> {
    signal(pid, "-CONT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_resumes_and_sees_an_exit() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(!exited(pid));
        stop(pid).unwrap();
        assert_eq!(state(pid), Some('T'));
        resume(pid).unwrap();
        assert!(wait_until(STOP_DEADLINE, || state(pid) != Some('T')));
        child.kill().unwrap();
        assert!(wait_until(STOP_DEADLINE, || exited(pid)), "a killed, unreaped child is a zombie");
        child.wait().unwrap();
        assert!(exited(pid));
    }
}
