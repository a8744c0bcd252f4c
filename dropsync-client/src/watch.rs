//! File-system change notifications (inotify through `notify`), forwarded
//! to the control thread, which debounces them. Symlinks are not followed,
//! and the client's own `.dropsync/` folder is filtered out here.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Config, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

use crate::events::Event;
use crate::paths::is_state_path;
use crate::scan::Scan;

/// Starts watching `root` and every folder under it, each on its own, by a
/// walk of the folder that watches each folder before it lists it; the
/// second value is false when not every folder could be (the limit of
/// inotify watches), the third is that walk when it is (what changes after
/// the walk saw it, the watcher reports). Events go to `events` until the
/// returned watcher is dropped.
pub fn start(root: &Path, events: mpsc::Sender<Event>) -> notify::Result<(RecommendedWatcher, bool, Option<Scan>)> {
    let base: PathBuf = root.to_path_buf();
    let handler = move |res: notify::Result<notify::Event>| {
        let ev = match res {
            Ok(ev) if ev.need_rescan() => Event::RescanNeeded,
            Ok(ev) => {
                if !matters(&ev.kind) {
                    return;
                }
                let closed = is_closed_after_write(&ev.kind);
                if let (true, [from, to]) = (is_rename(&ev.kind), ev.paths.as_slice()) {
                    if !is_state_path(&base, from) && !is_state_path(&base, to) {
                        let _ = events.send(Event::Moved { from: from.clone(), to: to.clone() });
                    }
                }
                let paths: Vec<PathBuf> = ev.paths.into_iter().filter(|p| !is_state_path(&base, p)).collect();
                if paths.is_empty() {
                    return;
                }
                if closed {
                    Event::Closed(paths)
                } else if is_write(&ev.kind) {
                    Event::Written(paths)
                } else {
                    Event::Changed(paths)
                }
            }
            Err(e) => {
                log::warn!("file watcher: {e}; rescanning");
                Event::RescanNeeded
            }
        };
        let _ = events.send(ev);
    };
    let mut watcher = RecommendedWatcher::new(handler, Config::default().with_follow_symlinks(false))?;
    watcher.watch(root, RecursiveMode::NonRecursive)?;
    let (watcher, complete) = (Mutex::new(watcher), AtomicBool::new(true));
    let scan = Scan::watching(root, &|dir| {
        if dir == root || !complete.load(Ordering::Relaxed) {
            return;
        }
        let mut watcher = watcher.lock().unwrap_or_else(PoisonError::into_inner);
        if !watch_folder(&mut watcher, dir, false) {
            complete.store(false, Ordering::Relaxed);
        }
    });
    let complete = complete.into_inner();
    // A walk made while folders went unwatched misses what changes in them.
    Ok((watcher.into_inner().unwrap_or_else(PoisonError::into_inner), complete, complete.then_some(scan)))
}

/// Watches the folder `path` on its own; false when the limit of inotify
/// watches is reached, which is logged unless `quiet` (it was already).
fn watch_folder(watcher: &mut RecommendedWatcher, path: &Path, quiet: bool) -> bool {
    match watcher.watch(path, RecursiveMode::NonRecursive) {
        Ok(()) => true,
        Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
            if !quiet {
                log::warn!(
                    "cannot watch {}: {e} (fs.inotify.max_user_watches); changes in the folders not watched \
                     are found by the periodic rescan",
                    path.display()
                );
            }
            false
        }
        // Gone since the listing, or unreadable: nothing to watch.
        Err(e) => {
            log::debug!("cannot watch {}: {e}", path.display());
            true
        }
    }
}

/// Watches each folder under `dir` (not `dir` itself) on its own, the state
/// folder `.dropsync` left out. notify's recursive mode would stat every
/// file to find the folders among them (1.5 s of a core at a million
/// files, at every start); a folder's listing says which entries are
/// folders. A folder that appears later is watched when the client looks
/// at it ([`Starting::watch_tree`]), before it lists the files in it.
/// False when the limit of inotify watches left folders unwatched, which
/// is logged unless `quiet` (it was already).
fn watch_folders_under(watcher: &mut RecommendedWatcher, root: &Path, dir: &Path, quiet: bool) -> bool {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            // A symlink is no folder here: never followed.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let path = entry.path();
            if is_state_path(root, &path) {
                continue;
            }
            if !watch_folder(watcher, &path, quiet) {
                return false;
            }
            stack.push(path);
        }
    }
    true
}

/// A watcher set up on a thread of its own: its listing of every folder
/// (0.4 s of a core at a million files in 10,100 folders) runs while the
/// client's state loads (issue 19, B8 reconnect). [`Starting::ready`]
/// waits for it, and the walk of a reconciliation waits for that, so no
/// change made during the walk goes unseen.
pub enum Starting {
    /// Still listing the folders.
    Walking(JoinHandle<notify::Result<(RecommendedWatcher, bool, Option<Scan>)>>),
    /// Watching; dropping it stops the watch. Not `complete` when the
    /// limit of inotify watches left folders unwatched. `walk`: the walk
    /// of the folder that set the watch up, for the first reconciliation
    /// (see [`Starting::spawn`]).
    Ready { watcher: RecommendedWatcher, complete: bool, walk: Option<Scan> },
    /// None wanted (`--once`), or none could be had.
    Without,
}

impl Starting {
    /// Starts watching `root` on a thread; events go to `events`. The watch
    /// is set up by the walk of the folder for the first reconciliation
    /// ([`Starting::take_walk`]), each folder watched before it is listed,
    /// so what changes after the walk saw it, the watcher reports; it runs
    /// while the client's state loads (issue 19, B8: both take a second or
    /// more at a million files).
    pub fn spawn(root: &Path, events: mpsc::Sender<Event>) -> Starting {
        let root = root.to_path_buf();
        match thread::Builder::new().name("watch-start".into()).spawn(move || start(&root, events)) {
            Ok(handle) => Starting::Walking(handle),
            Err(e) => Starting::unavailable(format_args!("no thread: {e}")),
        }
    }

    /// Watches the folder `dir` that appeared under `root` (created, or
    /// moved in), and every folder in it.
    pub fn watch_tree(&mut self, root: &Path, dir: &Path) {
        let Starting::Ready { watcher, complete, .. } = self else { return };
        match watcher.watch(dir, RecursiveMode::NonRecursive) {
            Ok(()) => *complete = watch_folders_under(watcher, root, dir, !*complete) && *complete,
            Err(e) if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) => {
                if *complete {
                    log::warn!("cannot watch {}: {e} (fs.inotify.max_user_watches)", dir.display());
                }
                *complete = false;
            }
            Err(e) => log::debug!("cannot watch {}: {e}", dir.display()),
        }
    }

    /// The walk that set the watch up, if it is still to be taken (by the
    /// first reconciliation, or forgotten).
    pub fn take_walk(&mut self) -> Option<Scan> {
        match self {
            Starting::Ready { walk, .. } => walk.take(),
            _ => None,
        }
    }

    /// True while [`take_walk`](Self::take_walk) has a walk to give.
    pub fn has_walk(&self) -> bool {
        matches!(self, Starting::Ready { walk: Some(_), .. })
    }

    /// True once every folder is watched: then a walk made earlier is
    /// as good as one made now, with what the watcher reports since.
    pub fn watching(&self) -> bool {
        matches!(self, Starting::Ready { complete: true, .. })
    }

    /// Waits until the watch is in place (or known to be unavailable).
    pub fn ready(&mut self) {
        let Starting::Walking(_) = self else { return };
        let Starting::Walking(handle) = std::mem::replace(self, Starting::Without) else { return };
        let waited = std::time::Instant::now();
        let joined = handle.join();
        log::debug!("file watcher ready (waited {:?} for it)", waited.elapsed());
        *self = match joined {
            Ok(Ok((watcher, complete, walk))) => Starting::Ready { watcher, complete, walk },
            Ok(Err(e)) => Starting::unavailable(e),
            Err(_) => Starting::unavailable("its set-up panicked"),
        };
    }

    /// No watcher, for the reason `why`, which is logged.
    fn unavailable(why: impl std::fmt::Display) -> Starting {
        log::warn!("file watcher unavailable ({why}); relying on the periodic rescan");
        Starting::Without
    }
}

/// True for a rename whose two names the watcher paired (old, new).
fn is_rename(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Modify(ModifyKind::Name(RenameMode::Both)))
}

/// True for a write to a file's data, or a file created: its writer holds
/// it open (a close follows when it is done). A copy that writes in large
/// pieces (`cp`'s copy_file_range) shows its first write only when that
/// piece is done, long after the create.
fn is_write(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Modify(ModifyKind::Data(_)) | EventKind::Create(CreateKind::File))
}

/// True when a file written to was closed: its writer is done with it.
fn is_closed_after_write(kind: &EventKind) -> bool {
    matches!(kind, EventKind::Access(AccessKind::Close(AccessMode::Write)))
}

/// True for events that may mean a change of content or of the tree.
/// Opening or reading a file (which the client itself does when hashing
/// and uploading) is not one; closing a file written to is.
fn matters(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::DataChange;

    #[test]
    fn reads_are_not_changes() {
        assert!(!matters(&EventKind::Access(AccessKind::Open(AccessMode::Any))));
        assert!(!matters(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(matters(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(matters(&EventKind::Create(CreateKind::File)));
        assert!(matters(&EventKind::Modify(ModifyKind::Any)));
    }

    #[test]
    fn a_write_or_a_new_file_means_its_writer_holds_it_open() {
        assert!(is_write(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(is_write(&EventKind::Create(CreateKind::File)));
        assert!(!is_write(&EventKind::Create(CreateKind::Folder)));
        assert!(!is_write(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(!is_write(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
    }

    #[test]
    fn only_a_close_after_writing_is_a_file_done() {
        assert!(is_closed_after_write(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(!is_closed_after_write(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(!is_closed_after_write(&EventKind::Modify(ModifyKind::Any)));
    }
}
