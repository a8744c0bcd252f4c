//! The machine's limits that B5's 10,000 sessions need, raised for the
//! phase and put back afterwards (and by `procs::kill_all_and_clean` on
//! any other exit), and short system commands (`mount`, `losetup`, `git`)
//! run under `timeout`.
//!
//! B5 puts about 3 threads per session in the server and one in the
//! bench's workers, and 6 descriptors per session in the server (main at
//! 6b3156e: each connection's socket held three times) and 2 in a worker:
//! for 10,000 sessions that is 40,000 tasks (beyond a `kernel.pid_max` of
//! 32768), about 30,000 thread stacks in one process (each 2 mappings:
//! beyond a `vm.max_map_count` of 65530) and 60,000 descriptors in the
//! server (beyond a hard `ulimit -n` of 20,000, which only
//! CAP_SYS_RESOURCE can raise).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::procs;
use crate::R;

/// What one command gave: stdout, or why it failed.
pub fn run(cmd: &str, args: &[&str], secs: u64) -> Result<String, String> {
    let out = Command::new("timeout")
        .args(["-k", "5", &secs.to_string(), cmd])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// True when this process runs as root (mounting, sysctls, hard limits).
pub fn is_root() -> bool {
    run("id", &["-u"], 5).is_ok_and(|s| s.trim() == "0")
}

/// A value under `/proc/sys` (`kernel/pid_max`), if readable.
pub fn sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name)).ok()?.trim().parse().ok()
}

fn set_sysctl(name: &str, v: u64) -> std::io::Result<()> {
    std::fs::write(Path::new("/proc/sys").join(name), format!("{v}\n"))
}

/// `RLIMIT_NOFILE` of this process, (soft, hard), from `/proc/self/limits`.
pub fn nofile() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap_or("");
    let mut it = line.split_whitespace().skip(3).map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    (it.next().unwrap_or(0), it.next().unwrap_or(0))
}

/// Changes made by [`Raised::to_at_least`], undone by [`Raised::restore`]
/// or when dropped (and by the bench's exit paths, through `procs`).
#[derive(Default)]
pub struct Raised {
    undo: Vec<u64>,
    /// What was changed, for the table's notes.
    pub changed: Vec<String>,
}

impl Raised {
    /// Raises the sysctl `name` to `want` if it is lower; the old value is
    /// written back later. Fails (saying what is missing) when it cannot.
    pub fn sysctl_at_least(&mut self, name: &str, want: u64) -> R<()> {
        let old = sysctl(name).ok_or_else(|| format!("cannot read /proc/sys/{name}"))?;
        if old >= want {
            return Ok(());
        }
        set_sysctl(name, want).map_err(|e| format!("{name} is {old}, {want} needed, and raising it failed: {e}"))?;
        let owned = name.to_owned();
        self.undo.push(procs::at_exit(move || {
            if let Err(e) = set_sysctl(&owned, old) {
                eprintln!("bench: could not restore {owned} to {old}: {e}");
            }
        }));
        self.changed.push(format!("{name} {old} → {want}"));
        Ok(())
    }

    /// Raises this process's `RLIMIT_NOFILE` to `want` if it is lower, with
    /// `prlimit` (the workspace forbids `unsafe`, so no `setrlimit` here):
    /// the soft limit up to the hard one is always allowed; the hard limit
    /// needs CAP_SYS_RESOURCE. Processes started afterwards inherit it.
    /// Returns the soft limit now in force, which may be below `want`
    /// when the hard limit could not be raised (the caller decides).
    pub fn nofile_at_least(&mut self, want: u64) -> u64 {
        let (soft, hard) = nofile();
        if soft >= want {
            return soft;
        }
        let pid = std::process::id().to_string();
        let mut got = None;
        if want > hard && run("prlimit", &["--pid", &pid, &format!("--nofile={want}:{want}")], 10).is_ok() {
            got = Some((want, want));
        }
        if got.is_none()
            && soft < hard
            && run("prlimit", &["--pid", &pid, &format!("--nofile={}:{hard}", want.min(hard))], 10).is_ok()
        {
            got = Some((want.min(hard), hard));
        }
        let Some((new_soft, new_hard)) = got else { return soft };
        self.undo.push(procs::at_exit(move || {
            let _ = run("prlimit", &["--pid", &pid, &format!("--nofile={soft}:{hard}")], 10);
        }));
        self.changed.push(format!("open files (this process and its children) {soft}:{hard} → {new_soft}:{new_hard}"));
        new_soft
    }

    /// Puts back everything changed, newest first.
    pub fn restore(&mut self) {
        while let Some(id) = self.undo.pop() {
            procs::undo_now(id);
        }
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.restore();
    }
}
