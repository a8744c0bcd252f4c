//! Changes the client makes to the synced folder on the server's behalf
//! that could destroy local content: replacing or deleting a file. Before
//! either, content the server never accepted is kept as a conflict copy
//! (PROTOCOL.md section 7 [ext]), unless `--no-conflict-copies`.
//!
//! Each change is split in two so that hashing never happens under the
//! state lock: [`look`] hashes the local file first, without the lock; then,
//! under the lock, [`keep_if_unaccepted`] checks the stat is unchanged (a
//! file changed in between is assumed to hold new, unaccepted content) and
//! renames the file away if it must be kept.

use std::fs;
use std::io;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use dropsync_core::conflict::pick_conflict_name;
use dropsync_core::meta_client::LocalSeen;
use dropsync_core::reconcile::Content;
use dropsync_core::sync_policy::must_keep_local;

use crate::paths::{local_path, remove_empty_parents};
use crate::scan::{probe, read_local, FileStat, Local, Probe};
use crate::state::{Ctx, State};

/// What was at a path when it was looked at, before the lock was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Before {
    /// A regular file with this stat, and its content if it held still
    /// while it was hashed.
    File {
        /// Its stat.
        stat: FileStat,
        /// Its content; `None` when it kept changing.
        content: Option<Content>,
    },
    /// Anything else (nothing, a folder, a symlink).
    NotAFile(Probe),
}

impl Before {
    /// What a scan recorded: a file with this stat and content.
    pub fn seen(seen: LocalSeen) -> Self {
        Before::File { stat: FileStat::of_seen(&seen), content: Some(seen.content) }
    }
}

/// Looks at the local file at `path` (hashing it unless `seen` is current).
pub fn look(path: &Path, seen: Option<LocalSeen>) -> io::Result<Before> {
    Ok(match read_local(path, seen, SystemTime::now())? {
        Local::File { seen, .. } => Before::seen(seen),
        Local::Unhashed { stat, .. } => Before::File { stat, content: None },
        Local::NotAFile(p) => Before::NotAFile(p),
        Local::Unstable => match probe(path)? {
            Probe::File(stat) => Before::File { stat, content: None },
            other => Before::NotAFile(other),
        },
    })
}

/// Under the state lock, before `name` (at `path`) is replaced by
/// `incoming` or deleted (`None`): if the local file holds content the
/// server never accepted, renames it to its conflict-copy name and returns
/// that name (the caller has it uploaded as a new file). `before` is what
/// [`look`] saw. Does nothing with conflict copies turned off.
///
/// # Errors
/// When the path is a folder, a symlink or a special file (which the client
/// does not overwrite), or the rename fails.
pub fn keep_if_unaccepted(
    ctx: &Ctx,
    st: &mut State,
    name: &str,
    path: &Path,
    before: &Before,
    incoming: Option<Content>,
) -> io::Result<Option<String>> {
    let stat = match probe(path)? {
        Probe::Absent => return Ok(None),
        Probe::File(stat) => stat,
        other => return Err(io::Error::other(format!("{} is not a regular file ({other:?})", path.display()))),
    };
    let keep = match *before {
        Before::File { stat: was, content: Some(local) } if was == stat => {
            must_keep_local(Some(local), st.record(name).base, incoming)
        }
        // Changed since it was looked at: new content nobody has seen.
        _ => true,
    };
    if !keep || !ctx.conflict_copies {
        return Ok(None);
    }
    keep_conflict_copy(ctx, st, name, path).map(Some)
}

/// Renames the local file of `name` to its conflict-copy name,
/// `<stem> (conflicted copy <label> <date>)<.ext>`, and returns that name.
pub fn keep_conflict_copy(ctx: &Ctx, st: &mut State, name: &str, path: &Path) -> io::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let copy = pick_conflict_name(name, &ctx.label, now, |candidate| {
        st.meta.records.get(candidate).is_some_and(|r| r.base.is_some() || r.local.is_some())
            || !matches!(probe(&local_path(&ctx.root, candidate)), Ok(Probe::Absent))
    });
    fs::rename(path, local_path(&ctx.root, &copy))?;
    st.set_local(name, None);
    log::warn!("conflict: kept local changes of {name} as {copy}");
    Ok(copy)
}

/// Deletes the local file of `name` and the folders it leaves empty, and
/// records the path as deleted on both sides.
pub fn delete_local(ctx: &Ctx, st: &mut State, name: &str, path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => remove_empty_parents(&ctx.root, name),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    st.set_deleted(name);
    Ok(())
}

