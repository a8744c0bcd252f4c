//! A change refused because the server's disk is full syncs by itself once
//! space is freed (issue 17), with the real binaries: the server's root is
//! on a small tmpfs this test mounts, filled up; the upload is refused with
//! 0x0080, which the client tries again with a backoff, and once the filler
//! is removed the file reaches the other client without anyone restarting
//! anything. Needs root, to mount (the CI runs as root); it fails, saying
//! so, without.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use dropsync_testkit::{tree, wait_until, write_file, ClientProc, ServerProc, TempDir, DEFAULT_DEADLINE};

/// A tmpfs of a few MiB mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, mib: u32) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a tmpfs, which needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn an_upload_refused_for_a_full_disk_syncs_by_itself_once_space_is_freed() {
    let tmp = TempDir::new("disk-full");
    let disk = SmallDisk::mount(&tmp.join("vol"), 4);
    let filler = disk.0.join("filler");
    let server = ServerProc::start(&disk.0.join("root"), &[]);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::create_dir_all(&b).unwrap();
    let ca = ClientProc::start(&server, &a, 1 << 20, &["--label", "a"]);
    let cb = ClientProc::start(&server, &b, 1 << 20, &["--label", "b"]);
    assert!(wait_until(DEFAULT_DEADLINE, || cb.log().contains("connected")));
    // Leave well under the 2 MiB file's room.
    std::fs::write(&filler, vec![0u8; 3 << 20]).unwrap();
    let body: Vec<u8> = (0..2u32 << 20).map(|i| (i % 253) as u8).collect();
    write_file(&a, "report.pdf", &body);
    let refused = wait_until(DEFAULT_DEADLINE, || ca.log().contains("server cannot take report.pdf now"));
    assert!(refused, "a:\n{}\nserver:\n{}", ca.log(), server.log());
    assert!(!b.join("report.pdf").exists());
    std::fs::remove_file(&filler).unwrap();
    let arrived = wait_until(DEFAULT_DEADLINE, || tree(&b).get("report.pdf") == Some(&body));
    assert!(arrived, "b never got it once space was freed:\na:\n{}\nserver:\n{}", ca.log(), server.log());
    drop(server);
    drop(disk);
}
