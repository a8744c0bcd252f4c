//! Looking at the synced folder: walking it, stat-ing files, and hashing a
//! file only when its stat says it may have changed since it was last seen.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dropsync_core::meta_client::LocalSeen;
use dropsync_core::reconcile::Content;
use dropsync_proto::digest::finish;
use dropsync_proto::Md5;

use crate::paths::{child_name, name_for, Unsyncable};

/// A file whose modification time is this close to now is hashed even if
/// its stat matches what was recorded: a write in the same clock tick as the
/// one recorded would leave mtime and size unchanged (git's "racy clean"
/// problem). Older files are trusted by stat alone.
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Read buffer for hashing.
const HASH_BUFFER: usize = 256 * 1024;

/// How often a file that changes while it is hashed is hashed again before
/// the caller is told it is unstable (and tries again once it is quiet).
const HASH_ATTEMPTS: usize = 3;

/// errno for "a component of the path is not a folder".
const ENOTDIR: i32 = libc::ENOTDIR;

/// The part of a file's stat that tells whether it changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStat {
    /// Modification time, ns since the epoch.
    pub mtime_ns: i64,
    /// Size in bytes.
    pub size: u64,
}

impl FileStat {
    /// The stat of a file's metadata.
    pub fn of(md: &fs::Metadata) -> Self {
        FileStat { mtime_ns: md.mtime().saturating_mul(1_000_000_000).saturating_add(md.mtime_nsec()), size: md.size() }
    }

    /// The stat recorded with what was seen of a file.
    pub fn of_seen(seen: &LocalSeen) -> Self {
        FileStat { mtime_ns: seen.mtime_ns, size: seen.content.size }
    }
}

/// What is at a path, without following a symlink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// Nothing.
    Absent,
    /// A regular file.
    File(FileStat),
    /// A folder.
    Dir,
    /// A symlink (never followed, never synced).
    Symlink,
    /// A socket, FIFO or device: not synced.
    Special,
}

impl Probe {
    /// What metadata (of a path not followed, or of an open handle) says
    /// is there.
    fn of(md: &fs::Metadata) -> Self {
        let t = md.file_type();
        if t.is_file() {
            Probe::File(FileStat::of(md))
        } else if t.is_dir() {
            Probe::Dir
        } else if t.is_symlink() {
            Probe::Symlink
        } else {
            Probe::Special
        }
    }
}

/// Looks at `path` without following symlinks.
pub fn probe(path: &Path) -> io::Result<Probe> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Probe::of(&md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Probe::Absent),
        // A file where a folder of the path should be: nothing is at the path.
        Err(e) if e.raw_os_error() == Some(ENOTDIR) => Ok(Probe::Absent),
        Err(e) => Err(e),
    }
}

/// True when `seen` still describes a file with `stat` and may be trusted
/// without hashing: same mtime and size, and not modified within
/// [`RACY_WINDOW`] of `now`.
pub fn seen_is_current(seen: Option<LocalSeen>, stat: FileStat, now: SystemTime) -> bool {
    let Some(seen) = seen else { return false };
    if seen.mtime_ns != stat.mtime_ns || seen.content.size != stat.size {
        return false;
    }
    let now_ns = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64);
    now_ns.saturating_sub(stat.mtime_ns) > RACY_WINDOW.as_nanos() as i64
}

/// MD5 and size of everything `reader` yields.
pub fn hash_reader(reader: &mut impl Read) -> io::Result<Content> {
    let mut hasher = Md5::default();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut size = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        io::Write::write_all(&mut hasher, &buf[..n])?;
        size += n as u64;
    }
    Ok(Content { md5: finish(hasher), size })
}

/// What [`read_local`] found.
#[derive(Debug)]
pub enum Local {
    /// No regular file there (absent, a folder, a symlink, ...).
    NotAFile(Probe),
    /// The file, open, with its content and the stat it had while hashed.
    File {
        /// Its content and stat.
        seen: LocalSeen,
        /// The file, open for reading (an upload reads from this handle).
        file: Option<File>,
    },
    /// It kept changing while being hashed: try again once it is quiet.
    Unstable,
    /// The file, open but not hashed ([`open_unhashed`]), with the stat of
    /// the open handle.
    Unhashed {
        /// Its stat when opened.
        stat: FileStat,
        /// The file, open for reading.
        file: File,
    },
}

/// The file at `path`, opened without reading it: for an upload that
/// hashes the file as it sends it. The stat is the open handle's, so it
/// describes the file the upload reads.
///
/// It opens first and asks the handle what it is (one stat, not two):
/// `O_NOFOLLOW` refuses a symlink, and `O_NONBLOCK` keeps a FIFO from
/// blocking the open; anything but a regular file is closed again.
pub fn open_unhashed(path: &Path) -> io::Result<Local> {
    let opened = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK).open(path);
    let file = match opened {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Local::NotAFile(Probe::Symlink)),
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENOTDIR) => {
            return Ok(Local::NotAFile(Probe::Absent))
        }
        Err(e) => return Err(e),
    };
    Ok(match Probe::of(&file.metadata()?) {
        Probe::File(stat) => Local::Unhashed { stat, file },
        other => Local::NotAFile(other),
    })
}


/// The content of the file at `path`: `seen` when its stat still matches
/// (see [`seen_is_current`]), else hashed, with the stat taken before and
/// after hashing to make sure the content is one consistent version.
pub fn read_local(path: &Path, seen: Option<LocalSeen>, now: SystemTime) -> io::Result<Local> {
    for _ in 0..HASH_ATTEMPTS {
        let stat = match probe(path)? {
            Probe::File(stat) => stat,
            other => return Ok(Local::NotAFile(other)),
        };
        if let Some(seen) = seen.filter(|_| seen_is_current(seen, stat, now)) {
            return Ok(Local::File { seen, file: None });
        }
        let mut file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let before = FileStat::of(&file.metadata()?);
        let content = hash_reader(&mut file)?;
        let after = FileStat::of(&file.metadata()?);
        if before == after && content.size == after.size && probe(path)? == Probe::File(after) {
            return Ok(Local::File { seen: LocalSeen { mtime_ns: after.mtime_ns, content }, file: Some(file) });
        }
    }
    Ok(Local::Unstable)
}

/// Remembers which unsyncable paths were already reported, so each is
/// logged once, not at every rescan, and how often each unreadable file
/// failed, so that a file that cannot be read is warned about once (then
/// at the 10th, 100th, ... failure, with the count), not every 5 s for ever.
#[derive(Debug, Default)]
pub struct Notes {
    said: HashSet<String>,
    unreadable: HashMap<String, u64>,
}

impl Notes {
    /// Logs `what` about `path` the first time only.
    pub fn once(&mut self, path: &Path, what: &str) {
        if self.said.insert(path.display().to_string()) {
            log::info!("not synced: {} ({what})", path.display());
        }
    }

    /// `name` could not be read (it is tried again at each rescan). Returns
    /// whether this failure was logged.
    pub fn unreadable(&mut self, name: &str, e: &io::Error) -> bool {
        let n = self.unreadable.entry(name.to_owned()).or_insert(0);
        *n += 1;
        match *n {
            1 => log::warn!("cannot read {name}: {e}; trying again at each rescan"),
            n if n.checked_ilog10().is_some_and(|p| 10u64.pow(p) == n) => {
                log::warn!("cannot read {name}: {e} ({n} times so far)")
            }
            _ => return false,
        }
        true
    }

    /// `name` was read: if it had failed before, says so once.
    pub fn readable(&mut self, name: &str) {
        if let Some(n) = self.unreadable.remove(name) {
            log::info!("{name} can be read again (after {n} failed attempt(s))");
        }
    }
}

/// Every regular file under `dir` (a folder under `root`) with a valid
/// wire name, in no particular order, and what a stat of it
/// found (`Absent` if it could not be had, `Dir` if a folder took its place
/// since the listing). Symlinks are not followed; unsyncable names and
/// unreadable folders are reported once and skipped. The stat is taken
/// relative to the open folder (`DirEntry::metadata`, an `fstatat`), not by
/// its whole path: at a million files, a second less of path walks in the
/// kernel.
pub fn walk_unsorted(root: &Path, dir: &Path, notes: &mut Notes) -> Vec<(String, Probe)> {
    walk_side_by_side(root, dir, &|_| {}).files(notes)
}

/// A walk of the whole folder ([`walk_unsorted`]), and when it began.
#[derive(Debug)]
pub struct Scan {
    /// When the walk began: the time its stats are judged against (the
    /// racy window of [`seen_is_current`]).
    pub began: SystemTime,
    walked: Walked,
}

impl Scan {
    /// Walks the folder `root` now.
    pub fn now(root: &Path) -> Scan {
        Scan::watching(root, &|_| {})
    }

    /// Walks the folder `root` now, calling `watch` with each folder before
    /// it is listed: a watcher set up so misses nothing the walk did not
    /// see, and lists no folder twice (`watch::Starting::spawn`).
    pub fn watching(root: &Path, watch: &(dyn Fn(&Path) + Sync)) -> Scan {
        let began = SystemTime::now();
        Scan { began, walked: walk_side_by_side(root, root, watch) }
    }

    /// Walks the folder `root` on a thread of its own: a reconnection's
    /// walk runs while the server's META-DATA is on its way (issue 19, B8).
    pub fn spawn(root: &Path) -> io::Result<thread::JoinHandle<Scan>> {
        let root = root.to_path_buf();
        thread::Builder::new().name("scan".into()).spawn(move || Scan::now(&root))
    }

    /// The files found; what cannot be synced is noted in `notes`.
    pub fn files(self, notes: &mut Notes) -> Vec<(String, Probe)> {
        self.walked.files(notes)
    }
}

/// [`walk_unsorted`] by up to [`MAX_WALKERS`] threads, the notes not yet
/// made; `on_folder` is called with each folder before it is listed.
fn walk_side_by_side(root: &Path, dir: &Path, on_folder: &(dyn Fn(&Path) + Sync)) -> Walked {
    let queue = Mutex::new(Folders { waiting: vec![dir.to_path_buf()], busy: 0 });
    let wake = Condvar::new();
    let walkers = thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, MAX_WALKERS);
    thread::scope(|s| {
        let helpers: Vec<_> = (1..walkers)
            .filter_map(|_| thread::Builder::new().name("walk".into()).spawn_scoped(s, || walker(root, &queue, &wake, on_folder)).ok())
            .collect();
        // This thread walks too: with no helper (none could be started),
        // it walks alone.
        let mut walked = walker(root, &queue, &wake, on_folder);
        for h in helpers {
            let more = h.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
            walked.files.extend(more.files);
            walked.notes.extend(more.notes);
        }
        walked
    })
}

/// At most this many threads walk a folder ([`walk_unsorted`]): stat-ing a
/// million files is most of a reconnection's time (issue 19, B8), and the
/// kernel does it side by side on each core.
const MAX_WALKERS: usize = 4;

/// The folders still to list, shared by the walkers, and how many walkers
/// are listing one (and may add more).
struct Folders {
    waiting: Vec<PathBuf>,
    busy: usize,
}

/// What one walker found: files with their stat, and what to note.
#[derive(Debug)]
struct Walked {
    files: Vec<(String, Probe)>,
    notes: Vec<(PathBuf, String)>,
}

impl Walked {
    /// The files; what cannot be synced is noted in `notes` (once each).
    fn files(self, notes: &mut Notes) -> Vec<(String, Probe)> {
        for (path, what) in self.notes {
            notes.once(&path, &what);
        }
        self.files
    }
}

/// Lists folders from `queue` until none is left and no other walker can
/// add one.
fn walker(root: &Path, queue: &Mutex<Folders>, wake: &Condvar, on_folder: &(dyn Fn(&Path) + Sync)) -> Walked {
    let mut walked = Walked { files: Vec::new(), notes: Vec::new() };
    let mut found_folders = Vec::new();
    loop {
        let dir = {
            let mut q = queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(dir) = q.waiting.pop() {
                    q.busy += 1;
                    break dir;
                }
                if q.busy == 0 {
                    wake.notify_all();
                    return walked;
                }
                q = wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // Counted done even should the listing panic, so that the other
        // walkers stop waiting for its folders.
        let done = Done { queue, wake, found: &mut found_folders };
        on_folder(&dir);
        list_folder(
            root,
            &dir,
            done.found,
            &mut |path, what| walked.notes.push((path.to_path_buf(), what.to_owned())),
            &mut |name, path, entry| {
                let md = match entry {
                    Some(entry) => entry.metadata(),
                    None => fs::symlink_metadata(path),
                };
                walked.files.push((name, md.map_or(Probe::Absent, |md| Probe::of(&md))));
            },
        );
        drop(done);
    }
}

/// Hands a walker's folders found to the queue and counts its listing
/// done, when dropped.
struct Done<'a> {
    queue: &'a Mutex<Folders>,
    wake: &'a Condvar,
    found: &'a mut Vec<PathBuf>,
}

impl Drop for Done<'_> {
    fn drop(&mut self) {
        let mut q = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.waiting.append(self.found);
        q.busy -= 1;
        self.wake.notify_all();
    }
}

/// Like [`walk_unsorted`], names only and sorted: no stat per file (the
/// file type comes with the folder listing), for callers that look at each
/// file anyway.
pub fn walk_names(root: &Path, dir: &Path, notes: &mut Notes) -> Vec<String> {
    let mut out = Vec::new();
    each_file(root, dir, notes, |name, _, _| out.push(name));
    out.sort_unstable();
    out
}

/// Calls `found` with the name, path and folder entry of every regular
/// file under `dir` with a valid wire name (see [`walk_unsorted`]). An
/// entry whose name is not NFC is renamed to it first
/// (`names::normalize_on_disk`); it comes without its entry, which names
/// the old name.
fn each_file(root: &Path, dir: &Path, notes: &mut Notes, mut found: impl FnMut(String, &Path, Option<&fs::DirEntry>)) {
    let mut stack = vec![dir.to_path_buf()];
    let mut folders = Vec::new();
    while let Some(dir) = stack.pop() {
        list_folder(root, &dir, &mut folders, &mut |path, what| notes.once(path, what), &mut found);
        stack.append(&mut folders);
    }
}

/// Lists the folder `dir`: each regular file with a valid wire name goes to
/// `found` (see [`each_file`]), each folder in it to `folders`, and what
/// cannot be synced to `note`.
fn list_folder(
    root: &Path,
    dir: &Path,
    folders: &mut Vec<PathBuf>,
    note: &mut dyn FnMut(&Path, &str),
    found: &mut dyn FnMut(String, &Path, Option<&fs::DirEntry>),
) {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("cannot read folder {}: {e}", dir.display());
            }
            return;
        }
    };
    // The names this listing renamed to NFC: the folder's listing may show
    // them again (readdir may or may not return an entry renamed during
    // it), and a name listed twice would be looked at twice.
    let mut renamed_to: HashSet<std::ffi::OsString> = HashSet::new();
    // The folder's own wire name, checked once for all its entries.
    let folder = if dir == root { Some(String::new()) } else { name_for(root, dir).ok() };
    let name_of = |path: &Path| match (&folder, path.file_name()) {
        (Some(folder), Some(child)) => child_name(folder, child),
        _ => name_for(root, path),
    };
    for entry in entries.flatten() {
        if !renamed_to.is_empty() && renamed_to.contains(&entry.file_name()) {
            continue;
        }
        let mut path = entry.path();
        let Ok(kind) = entry.file_type() else { continue };
        let mut named = name_of(&path);
        let mut renamed = false;
        if named == Err(Unsyncable::NotNfc) {
            renamed = true;
            match crate::names::normalize_on_disk(root, &path) {
                Ok(now) => {
                    named = name_of(&now);
                    renamed_to.extend(now.file_name().map(ToOwned::to_owned));
                    path = now;
                }
                Err(e) => named = Err(Unsyncable::BadName(format!("not NFC, and cannot be renamed to it: {e}"))),
            }
        }
        let name = match named {
            Ok(name) => name,
            Err(Unsyncable::Reserved | Unsyncable::Outside) => continue,
            Err(Unsyncable::BadName(why)) => {
                note(&path, &format!("name not allowed: {why}"));
                continue;
            }
            Err(Unsyncable::NotNfc) => {
                note(&path, "name not in NFC");
                continue;
            }
        };
        if kind.is_symlink() {
            note(&path, "symlinks are not followed");
        } else if kind.is_dir() {
            folders.push(path);
        } else if kind.is_file() {
            found(name, &path, (!renamed).then_some(&entry));
        } else {
            note(&path, "not a regular file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreadable_file_is_logged_once_then_at_each_power_of_ten() {
        let mut notes = Notes::default();
        let e = io::Error::from(io::ErrorKind::PermissionDenied);
        let mut logged = Vec::new();
        for attempt in 1..=1000u64 {
            if notes.unreadable("f", &e) {
                logged.push(attempt);
            }
        }
        assert_eq!(logged, [1, 10, 100, 1000]);
        notes.readable("f");
        assert!(notes.unreadable("f", &e), "a new failure after it was readable is logged again");
    }
    use dropsync_proto::md5;

    fn tmp(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("dropsync-scan-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn walk_finds_nested_files_and_skips_state_and_symlinks() {
        let root = tmp("walk");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(root.join(".dropsync/tmp")).unwrap();
        fs::write(root.join("top.txt"), b"1").unwrap();
        fs::write(root.join("a/b/deep.txt"), b"22").unwrap();
        fs::write(root.join(".dropsync/metadata"), b"x").unwrap();
        fs::write(root.join("a\\b"), b"x").unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("link")).unwrap();
        let mut notes = Notes::default();
        let mut found: Vec<(String, Probe)> = walk_unsorted(&root, &root, &mut notes);
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let found: Vec<(String, u64)> = found
            .into_iter()
            .map(|(n, p)| match p {
                Probe::File(s) => (n, s.size),
                other => panic!("{n}: {other:?}"),
            })
            .collect();
        assert_eq!(found, [("a/b/deep.txt".to_owned(), 2), ("top.txt".to_owned(), 1)]);
        assert_eq!(notes.said.len(), 2, "symlink and bad name noted: {:?}", notes.said);
        let sub: Vec<String> = walk_names(&root, &root.join("a"), &mut notes);
        assert_eq!(sub, ["a/b/deep.txt"]);
        assert_eq!(walk_names(&root, &root, &mut notes), ["a/b/deep.txt", "top.txt"]);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn open_unhashed_opens_regular_files_only() {
        let root = tmp("unhashed");
        let p = root.join("f");
        fs::write(&p, b"hello").unwrap();
        let Local::Unhashed { stat, mut file } = open_unhashed(&p).unwrap() else { panic!() };
        assert_eq!(stat, FileStat::of(&fs::metadata(&p).unwrap()));
        assert_eq!(hash_reader(&mut file).unwrap().md5, md5(b"hello"), "readable as a normal file");
        std::os::unix::fs::symlink(&p, root.join("link")).unwrap();
        assert!(matches!(open_unhashed(&root.join("link")).unwrap(), Local::NotAFile(Probe::Symlink)));
        assert!(matches!(open_unhashed(&root).unwrap(), Local::NotAFile(Probe::Dir)));
        assert!(matches!(open_unhashed(&root.join("none")).unwrap(), Local::NotAFile(Probe::Absent)));
        assert!(matches!(open_unhashed(&p.join("x")).unwrap(), Local::NotAFile(Probe::Absent)));
        let fifo = root.join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success(), "mkfifo");
        // Opened without blocking, and not taken for a file.
        assert!(matches!(open_unhashed(&fifo).unwrap(), Local::NotAFile(Probe::Special)));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn read_local_hashes_unless_the_stat_is_old_and_unchanged() {
        let root = tmp("read");
        let p = root.join("f");
        fs::write(&p, b"hello").unwrap();
        let now = SystemTime::now();
        let Local::File { seen, file } = read_local(&p, None, now).unwrap() else { panic!() };
        assert_eq!(seen.content, Content { md5: md5(b"hello"), size: 5 });
        assert!(file.is_some(), "hashed");
        // Fresh file: the racy window forces a hash even with a matching stat.
        let Local::File { file, .. } = read_local(&p, Some(seen), now).unwrap() else { panic!() };
        assert!(file.is_some());
        // Later: the recorded content is trusted, however wrong it is.
        let later = now + RACY_WINDOW * 2;
        let fake = LocalSeen { content: Content { md5: [7; 16], size: 5 }, ..seen };
        let Local::File { seen: got, file } = read_local(&p, Some(fake), later).unwrap() else { panic!() };
        assert_eq!((got, file.is_none()), (fake, true));
        assert!(matches!(read_local(&root.join("none"), None, now).unwrap(), Local::NotAFile(Probe::Absent)));
        assert!(matches!(read_local(&root, None, now).unwrap(), Local::NotAFile(Probe::Dir)));
        assert!(matches!(read_local(&p.join("x"), None, now).unwrap(), Local::NotAFile(Probe::Absent)));
        fs::remove_dir_all(&root).unwrap();
    }
}
