//! A real disk for the rows that fsync (B1 and B3 on disk, B9): an ext4
//! file system in an image file on the machine's own disk (not a tmpfs),
//! attached to a loop device with direct I/O (so the loop device adds no
//! page cache of its own and a flush reaches the disk under the image) and
//! mounted under the scratch folder. Unmounted, detached and deleted by
//! [`Disk::release`], or by `procs::kill_all_and_clean` on any other exit.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procs;
use crate::sys::{is_root, run};
use crate::R;

/// Where the image goes unless `BENCH_DISK_DIR` says otherwise: on the
/// root file system, which is a disk here.
const DEFAULT_IMAGE_DIR: &str = "/var/tmp";
/// Attempts at unmounting a busy file system before giving up.
const UMOUNT_TRIES: usize = 50;
/// Bound on `mkfs`, `mount` and the like.
const CMD_SECS: u64 = 120;

/// A mounted ext4 image.
pub struct Disk {
    /// Where it is mounted.
    pub mnt: PathBuf,
    /// The loop device (`/dev/loopN`).
    pub dev: String,
    /// What it is, for the table's notes.
    pub describe: String,
    undo: u64,
}

fn mounted(mnt: &Path) -> bool {
    let want = mnt.display().to_string();
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(&want))
}

/// Unmounts `mnt` (lazily if it stays busy), detaches every loop device on
/// `image` and deletes it. Safe to run at any stage of [`Disk::make`].
fn teardown(mnt: &Path, image: &Path) {
    let m = mnt.display().to_string();
    if mounted(mnt) && run("umount", &[&m], CMD_SECS).is_err() {
        std::thread::sleep(Duration::from_millis(500));
        if run("umount", &[&m], CMD_SECS).is_err() {
            let _ = run("umount", &["-l", &m], CMD_SECS);
        }
    }
    let img = image.display().to_string();
    if let Ok(list) = run("losetup", &["-j", &img], 10) {
        for dev in list.lines().filter_map(|l| l.split(':').next()).filter(|d| d.starts_with("/dev/")) {
            let _ = run("losetup", &["-d", dev], 30);
        }
    }
    let _ = fs::remove_file(image);
}

impl Disk {
    /// Makes a `size`-byte ext4 image, attaches and mounts it at `mnt`.
    pub fn make(mnt: &Path, size: u64) -> R<Disk> {
        if !is_root() {
            return Err("mounting an ext4 image needs root".into());
        }
        let dir = std::env::var("BENCH_DISK_DIR").map_or_else(|_| PathBuf::from(DEFAULT_IMAGE_DIR), PathBuf::from);
        let fstype = run("stat", &["-f", "-c", "%T", &dir.display().to_string()], 10)?.trim().to_owned();
        if fstype == "tmpfs" || fstype == "ramfs" {
            return Err(format!("{} is a {fstype}, not a disk (set BENCH_DISK_DIR)", dir.display()).into());
        }
        let avail = run("df", &["-Pk", &dir.display().to_string()], 10)?
            .lines()
            .nth(1)
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024;
        if avail < size + (1 << 30) {
            return Err(format!(
                "{} has {} MiB free; the image needs {} MiB and 1 GiB to spare",
                dir.display(),
                avail >> 20,
                size >> 20
            )
            .into());
        }
        let image = dir.join(format!("dropsync-bench.{}.ext4", std::process::id()));
        // Registered before anything exists, so that every later failure
        // (or a signal) undoes whatever stage was reached.
        let undo = {
            let (mnt, image) = (mnt.to_path_buf(), image.clone());
            procs::at_exit(move || teardown(&mnt, &image))
        };
        let made = (|| -> R<(String, String)> {
            fs::File::create(&image)?.set_len(size)?;
            let img = image.display().to_string();
            // Inode tables and journal written now, not by a background
            // thread in the middle of a measurement.
            run("mkfs.ext4", &["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", &img], CMD_SECS)?;
            let (dev, dio) = match run("losetup", &["--find", "--show", "--direct-io=on", &img], 30) {
                Ok(d) => (d.trim().to_owned(), "direct I/O"),
                Err(_) => (
                    run("losetup", &["--find", "--show", &img], 30)?.trim().to_owned(),
                    "buffered (direct I/O refused)",
                ),
            };
            fs::create_dir_all(mnt)?;
            run("mount", &["-t", "ext4", &dev, &mnt.display().to_string()], CMD_SECS)?;
            let backing = run("df", &["-P", &dir.display().to_string()], 10)?
                .lines()
                .nth(1)
                .and_then(|l| l.split_whitespace().next())
                .unwrap_or("?")
                .to_owned();
            Ok((
                dev,
                format!(
                    "{} GiB ext4 image in {} ({fstype} on {backing}), loop device {dio}, default mount options",
                    size >> 30,
                    dir.display()
                ),
            ))
        })();
        match made {
            Ok((dev, describe)) => Ok(Disk { mnt: mnt.to_path_buf(), dev, describe, undo }),
            Err(e) => {
                procs::undo_now(undo);
                Err(e)
            }
        }
    }

    /// Writes everything out and unmounts and mounts the file system
    /// again, so that nothing written so far is in the page cache: the
    /// next run reads its data from the disk.
    pub fn drop_caches(&self) -> R<()> {
        let m = self.mnt.display().to_string();
        run("sync", &["-f", &m], CMD_SECS)?;
        // A process that has just finished may still be leaving it (the
        // rsync daemon's child for the last transfer, in its module).
        let mut tries = 0;
        while let Err(e) = run("umount", &[&m], CMD_SECS) {
            tries += 1;
            if tries == UMOUNT_TRIES {
                return Err(format!("{e} (tried {UMOUNT_TRIES} times, 100 ms apart)").into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        run("mount", &["-t", "ext4", &self.dev, &m], CMD_SECS)?;
        Ok(())
    }

    /// Unmounts, detaches and deletes the image.
    pub fn release(self) {
        procs::undo_now(self.undo);
    }
}
