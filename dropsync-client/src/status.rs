//! `client status FOLDER` (part of issue 20): is this folder in sync? The
//! running client keeps `FOLDER/.dropsync/status` up to date (looked at
//! every 250 ms, written only when it changes, replaced atomically); the
//! command prints it, and says when the client that wrote it is no longer
//! running.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dropsync_core::conflict::format_utc;

use crate::paths::{state_dir_of, STATE_DIR};

/// The status file, in the state folder.
const FILE: &str = "status";

/// What the status file says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    /// `host:send/receive`.
    pub server: String,
    /// A session is up.
    pub connected: bool,
    /// Changes being sent or waiting to be.
    pub uploads: usize,
    /// Transfers being received.
    pub downloads: usize,
    /// Deletes the delete guard holds.
    pub held_deletes: usize,
    /// Conflict copies in the folder.
    pub conflicts: usize,
    /// When the folder was last seen in sync with the server.
    pub last_in_sync: Option<SystemTime>,
}

impl Status {
    /// True when nothing is left to do in either direction.
    pub fn in_sync(&self) -> bool {
        self.connected && self.uploads == 0 && self.downloads == 0 && self.held_deletes == 0
    }

    fn render(&self) -> String {
        let state = if !self.connected {
            "not connected (reconnecting)".to_owned()
        } else if self.in_sync() {
            "in sync".to_owned()
        } else {
            let mut parts = Vec::new();
            if self.uploads > 0 {
                parts.push(format!("{} to send", self.uploads));
            }
            if self.downloads > 0 {
                parts.push(format!("{} being received", self.downloads));
            }
            if self.held_deletes > 0 {
                parts.push(format!("{} deletes held (client confirm-deletes / restore-deletes)", self.held_deletes));
            }
            format!("syncing: {}", parts.join(", "))
        };
        let last = self.last_in_sync.map_or("never".to_owned(), |t| {
            let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            format!("{} UTC", format_utc(secs))
        });
        format!(
            "pid: {}\nserver: {}\nstate: {state}\nuploads: {}\ndownloads: {}\nheld deletes: {}\nconflict copies: {}\nlast in sync: {last}\n",
            std::process::id(),
            self.server,
            self.uploads,
            self.downloads,
            self.held_deletes,
            self.conflicts,
        )
    }
}

/// Replaces `root`'s status file with `status`.
pub fn write(root: &Path, status: &Status) -> io::Result<()> {
    let dir = root.join(STATE_DIR);
    let tmp = dir.join(format!("{FILE}.tmp"));
    fs::write(&tmp, status.render())?;
    fs::rename(&tmp, dir.join(FILE))
}

/// `client status FOLDER`: `None` for any other command line.
pub fn command(args: &[String]) -> Option<Result<String, String>> {
    let [_, word, folder] = args else { return None };
    if word != "status" {
        return None;
    }
    let state = match state_dir_of(Path::new(folder)) {
        Ok(state) => state,
        Err(e) => return Some(Err(e)),
    };
    let text = match fs::read_to_string(state.join(FILE)) {
        Ok(t) => t,
        Err(_) => return Some(Ok(format!("{folder}: no client has run here yet with status reports"))),
    };
    let running = text
        .lines()
        .find_map(|l| l.strip_prefix("pid: "))
        .is_some_and(|pid| Path::new("/proc").join(pid.trim()).exists());
    Some(Ok(if running {
        text.trim_end().to_owned()
    } else {
        format!("{}\n(the client that wrote this is not running)", text.trim_end())
    }))
}
