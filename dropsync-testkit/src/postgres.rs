//! A throwaway PostgreSQL cluster for tests (issue 18): `initdb` into a
//! temp folder and `pg_ctl start` on a free loopback port, stopped
//! (immediately) and removed when dropped. The binaries are Debian's
//! (`/usr/lib/postgresql/<version>/bin`, newest first) or those on PATH; as
//! root, the cluster runs as the `postgres` user, which initdb requires.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running cluster and how to reach it.
#[derive(Debug)]
pub struct PgProc {
    bin: PathBuf,
    data: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `postgres://dropsync@127.0.0.1:<port>/postgres` (trust auth).
    pub url: String,
}

/// The folder holding `initdb` and `pg_ctl`.
fn bin_dir() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).filter(|b| b.join("initdb").exists()).collect())
        .unwrap_or_default();
    versions.sort();
    versions.pop().unwrap_or_default()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// Runs `program args` as the cluster's owner.
fn run_as_owner(bin: &Path, program: &str, args: &[&str]) -> std::process::Output {
    let exe = bin.join(program);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&exe);
        c
    } else {
        Command::new(&exe)
    };
    cmd.args(args).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", exe.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

impl PgProc {
    /// Makes a cluster in `dir/pgdata` and starts it; panics, saying why,
    /// when PostgreSQL is not installed (`.ci/run` installs it).
    pub fn start(dir: &Path) -> Self {
        let bin = bin_dir();
        assert!(
            bin.join("initdb").exists(),
            "PostgreSQL is not installed (apt-get install postgresql; .ci/run does it): no /usr/lib/postgresql/*/bin/initdb"
        );
        std::fs::create_dir_all(dir).unwrap();
        if is_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir).status();
            assert!(ok.is_ok_and(|s| s.success()), "cannot give {} to the postgres user", dir.display());
        }
        let data = dir.join("pgdata");
        let data_s = data.to_str().unwrap().to_owned();
        let out = run_as_owner(&bin, "initdb", &["-D", &data_s, "-A", "trust", "-U", "dropsync", "-E", "UTF8"]);
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        let port = free_port();
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off", dir.display());
        let log = dir.join("postgres.log");
        let out =
            run_as_owner(&bin, "pg_ctl", &["-D", &data_s, "-o", &opts, "-l", log.to_str().unwrap(), "-w", "start"]);
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        let url = format!("postgres://dropsync@127.0.0.1:{port}/postgres");
        let pg = Self { bin, data, port, url };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come up on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        pg
    }

    /// Stops the cluster at once (like a crash) and starts it again on the
    /// same port.
    pub fn restart(&self) {
        let data = self.data.to_str().unwrap();
        // `restart` keeps the options (port, socket folder) of the start,
        // not the log file: without one the server would hold our pipe.
        let log = self.data.with_file_name("postgres.log");
        let log = log.to_str().unwrap();
        let out = run_as_owner(&self.bin, "pg_ctl", &["-D", data, "-l", log, "-m", "immediate", "-w", "restart"]);
        assert!(out.status.success(), "pg_ctl restart failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for PgProc {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap_or_default().to_owned();
        let _ = run_as_owner(&self.bin, "pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
