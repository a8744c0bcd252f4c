//! The user's answer to held deletes (the delete guard, core's
//! `delete_guard`): `client confirm-deletes FOLDER` sends them,
//! `client restore-deletes FOLDER` brings the files back from the server.
//! Each command leaves a marker in `FOLDER/.dropsync/` that the running
//! client (or the next one started on the folder) acts on and removes, so
//! the commands need no connection to the client and work while it is
//! stopped.

use std::fs;
use std::io;
use std::path::Path;

use crate::paths::{state_dir_of, STATE_DIR};

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send the held deletes.
    Confirm,
    /// Request the held paths from the server.
    Restore,
}

impl Answer {
    const ALL: [Answer; 2] = [Answer::Confirm, Answer::Restore];

    /// The command word, which is also the marker's file name.
    pub fn word(self) -> &'static str {
        match self {
            Answer::Confirm => "confirm-deletes",
            Answer::Restore => "restore-deletes",
        }
    }
}

/// `client confirm-deletes FOLDER` or `client restore-deletes FOLDER`:
/// `None` for any other command line (the assignment's five arguments are
/// never taken for one: a host named like a command would need four more).
pub fn command(args: &[String]) -> Option<Result<String, String>> {
    let [_, word, folder] = args else { return None };
    let answer = Answer::ALL.into_iter().find(|a| a.word() == word)?;
    Some(leave_marker(Path::new(folder), answer))
}

fn leave_marker(folder: &Path, answer: Answer) -> Result<String, String> {
    let state = state_dir_of(folder)?;
    fs::write(state.join(answer.word()), b"").map_err(|e| format!("cannot write to {}: {e}", state.display()))?;
    Ok(match answer {
        Answer::Confirm => "the held deletes will be sent to the server by the running client (or the next one started)",
        Answer::Restore => "the held deletes' files will be fetched back from the server by the running client (or the next one started)",
    }
    .to_owned())
}

/// The answer the user left for the client of `root`, if any; its marker
/// is removed. Confirm wins if both were left (the later command cannot be
/// told apart).
pub fn take(root: &Path) -> io::Result<Option<Answer>> {
    let mut found = None;
    for answer in Answer::ALL {
        match fs::remove_file(root.join(STATE_DIR).join(answer.word())) {
            Ok(()) => found = found.or(Some(answer)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(found)
}
