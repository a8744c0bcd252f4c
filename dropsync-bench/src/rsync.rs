//! An rsync daemon on 127.0.0.1 with a generated config and a free port,
//! for pushes beside dropsync's uploads.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::{run_timed, Proc, Spec};
use crate::R;

/// A running `rsync --daemon --no-detach` with one writable module, `bench`.
pub struct Rsyncd {
    proc: Proc,
    port: u16,
    dest: PathBuf,
    logs: PathBuf,
}

fn id(flag: &str) -> String {
    Command::new("id")
        .arg(flag)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "0".into())
}

/// `rsync --version`'s first line and its checksum list (the first entry is
/// what two such peers negotiate by default).
pub fn version() -> (String, String) {
    let text = Command::new("rsync")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    let first = text.lines().next().unwrap_or("").trim().to_owned();
    let mut lines = text.lines();
    let mut checksums = String::new();
    while let Some(l) = lines.next() {
        if l.trim_start().starts_with("Checksum list") {
            checksums = lines.next().unwrap_or("").trim().to_owned();
        }
    }
    (first, checksums)
}

impl Rsyncd {
    /// Starts the daemon under `work` (its module `work/rsync-dest`),
    /// bounded by `limit`.
    pub fn start(work: &Path, limit: Duration) -> R<Rsyncd> {
        Rsyncd::start_at(work, &work.join("rsync-dest"), limit)
    }

    /// Starts the daemon with its config and logs under `work` and its
    /// module at `dest` (elsewhere: on the disk of the disk rows, which
    /// must be unmountable while the daemon runs).
    pub fn start_at(work: &Path, dest: &Path, limit: Duration) -> R<Rsyncd> {
        let dest = dest.to_path_buf();
        std::fs::create_dir_all(work)?;
        std::fs::create_dir_all(&dest)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let conf = work.join("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = false\nuid = {}\ngid = {}\nmax connections = 4\nlog file = {}\n\n[bench]\n  path = {}\n  read only = false\n",
                id("-u"),
                id("-g"),
                work.join("rsyncd.log").display(),
                dest.display()
            ),
        )?;
        let proc = Proc::start(
            "rsync daemon",
            Spec {
                bin: PathBuf::from("rsync"),
                args: vec![
                    "--daemon".into(),
                    "--no-detach".into(),
                    format!("--config={}", conf.display()),
                    "--address=127.0.0.1".into(),
                    format!("--port={port}"),
                ],
                limit,
                log: work.join("rsyncd.out"),
                read_listening: false,
                time_file: None,
                env: Vec::new(),
            },
        )?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("rsync daemon did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Rsyncd { proc, port, dest, logs: work.to_path_buf() })
    }

    /// Empties the module.
    pub fn clear(&self) -> R<()> {
        let _ = std::fs::remove_dir_all(&self.dest);
        std::fs::create_dir_all(&self.dest)?;
        Ok(())
    }

    /// Pushes `src` (a file, or a folder's contents) into the empty module
    /// with `rsync -a <extra>`; returns the wall time.
    pub fn push(&self, src: &Path, is_dir: bool, extra: &[&str], limit: Duration) -> R<Duration> {
        self.clear()?;
        self.push_onto(src, is_dir, extra, limit)
    }

    /// [`Self::push`] onto what the module holds (B9's steps, with
    /// `--delete`).
    pub fn push_onto(&self, src: &Path, is_dir: bool, extra: &[&str], limit: Duration) -> R<Duration> {
        let mut args = vec!["-a".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut s = src.display().to_string();
        if is_dir {
            s.push('/');
        }
        args.push(s);
        args.push(format!("rsync://127.0.0.1:{}/bench/", self.port));
        let d = run_timed("rsync", "rsync", &args, limit, &self.logs.join("rsync-client.log"))?;
        Ok(d)
    }

    /// Pulls the module's contents into the folder `dest` with `rsync -a
    /// <extra> rsync://…/bench/ DEST/`; returns the wall time.
    pub fn pull(&self, dest: &Path, extra: &[&str], limit: Duration) -> R<Duration> {
        let mut args = vec!["-a".to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("rsync://127.0.0.1:{}/bench/", self.port));
        args.push(format!("{}/", dest.display()));
        run_timed("rsync pull", "rsync", &args, limit, &self.logs.join("rsync-client.log"))
    }

    /// Stops the daemon.
    pub fn stop(&mut self) {
        self.proc.stop();
        let _ = std::fs::remove_dir_all(&self.dest);
    }
}
