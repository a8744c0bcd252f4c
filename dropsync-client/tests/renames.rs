//! COPY [ext] with the real binaries (issue 19, B7): a file renamed, moved
//! with its folder, or copied in one client's folder reaches the other
//! client without its bytes crossing the wire in either direction; a client
//! that cannot copy locally is sent the file; `--no-copy` uploads whole.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::converge;
use dropsync_testkit::{http_get, wait_until, ClientProc, ServerProc, TempDir, DEFAULT_DEADLINE};

/// 3 MiB: several chunks, far more than the messages a COPY takes.
const SIZE: usize = 3 << 20;

fn content(seed: u32) -> Vec<u8> {
    (0..SIZE as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8).collect()
}

/// The server's counter `name` (`dropsync_<name>_total`) from /metrics.
fn counter(port: u16, name: &str) -> u64 {
    let (status, text) = http_get(port, "/metrics");
    assert_eq!(status, 200);
    let key = format!("dropsync_{name}_total ");
    text.lines().find_map(|l| l.strip_prefix(&key)).map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

struct Two {
    tmp: TempDir,
    server: ServerProc,
    port: u16,
    a: ClientProc,
    b: ClientProc,
}

impl Two {
    fn start(tag: &str, b_args: &[&str]) -> Self {
        let tmp = TempDir::new(tag);
        let server = ServerProc::start(&tmp.join("server"), &["--http", "127.0.0.1:0"]);
        let port = server.http_port.unwrap();
        let start = |name: &str, extra: &[&str]| {
            let mut args = vec!["--label", name];
            args.extend_from_slice(extra);
            ClientProc::start(&server, &tmp.join(name), 1 << 20, &args)
        };
        let a = start("a", &[]);
        let b = start("b", b_args);
        assert!(wait_until(DEFAULT_DEADLINE, || a.log().contains("reconciled") && b.log().contains("reconciled")));
        Two { tmp, server, port, a, b }
    }

    fn dir(&self, name: &str) -> std::path::PathBuf {
        self.tmp.join(name)
    }

    fn converged(&self, what: &str, ok: impl Fn(&std::collections::BTreeMap<String, Vec<u8>>) -> bool) {
        converge(&[&self.dir("a"), &self.dir("b")], &[&self.a, &self.b], what, ok);
    }
}

/// Waits until every file under `dirs` was last written more than the
/// client's racy window (2 s, `scan::RACY_WINDOW`) ago: before, a stat
/// proves nothing about content, and a rename is sent whole.
fn past_racy_window(dirs: &[&Path]) {
    let racy = std::time::Duration::from_millis(2100);
    let settled = || {
        dirs.iter().all(|d| {
            dropsync_testkit::tree(d).keys().all(|name| {
                let modified = std::fs::metadata(d.join(name)).and_then(|m| m.modified()).unwrap();
                modified.elapsed().is_ok_and(|age| age > racy)
            })
        })
    };
    assert!(wait_until(DEFAULT_DEADLINE, settled));
}

/// The inode of the file at `path`: the same after a rename, a new one
/// for a copy.
fn inode(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn put(dir: &Path, name: &str, bytes: &[u8]) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_renamed_file_reaches_the_other_client_without_its_bytes() {
    let t = Two::start("renames-file", &[]);
    let data = content(1);
    put(&t.dir("a"), "big.bin", &data);
    t.converged("big.bin on both", |f| f.get("big.bin") == Some(&data));
    past_racy_window(&[&t.dir("a"), &t.dir("b")]);
    let (bytes_in, bytes_out) = (counter(t.port, "bytes_in"), counter(t.port, "bytes_out"));
    let b_file = inode(&t.dir("b").join("big.bin"));
    std::fs::rename(t.dir("a").join("big.bin"), t.dir("a").join("moved.bin")).unwrap();
    t.converged("moved.bin alone on both", |f| f.len() == 1 && f.get("moved.bin") == Some(&data));
    // The COPY and the DELETE of its source came together: b renamed its
    // file rather than copying it.
    assert_eq!(inode(&t.dir("b").join("moved.bin")), b_file, "{}\n{}\n{}", t.a.log(), t.b.log(), t.server.log());
    assert!(t.b.log().contains("received moved.bin: big.bin renamed"), "{}", t.b.log());
    assert_eq!(counter(t.port, "copies_in"), 1, "{}", t.a.log());
    assert!(wait_until(DEFAULT_DEADLINE, || counter(t.port, "copies_out") == 1), "{}\n{}", t.b.log(), t.server.log());
    assert_eq!(counter(t.port, "bytes_in"), bytes_in, "nothing uploaded:\n{}", t.a.log());
    assert_eq!(counter(t.port, "bytes_out"), bytes_out, "nothing delivered:\n{}", t.b.log());
    assert!(t.a.log().contains("uploaded moved.bin as a copy of big.bin"), "{}", t.a.log());
    drop(t.server);
}

#[test]
fn a_folder_moved_and_a_file_copied_go_as_copies_too() {
    let t = Two::start("renames-folder", &[]);
    let (x, y) = (content(2), content(3));
    put(&t.dir("a"), "docs/x.bin", &x);
    put(&t.dir("a"), "docs/sub/y.bin", &y);
    t.converged("docs on both", |f| f.len() == 2);
    past_racy_window(&[&t.dir("a"), &t.dir("b")]);
    let bytes_in = counter(t.port, "bytes_in");
    let b_files = [inode(&t.dir("b").join("docs/x.bin")), inode(&t.dir("b").join("docs/sub/y.bin"))];
    std::fs::rename(t.dir("a").join("docs"), t.dir("a").join("papers")).unwrap();
    t.converged("papers on both", |f| {
        f.len() == 2 && f.get("papers/x.bin") == Some(&x) && f.get("papers/sub/y.bin") == Some(&y)
    });
    let renamed = [inode(&t.dir("b").join("papers/x.bin")), inode(&t.dir("b").join("papers/sub/y.bin"))];
    assert_eq!(renamed, b_files, "b renamed its files:\n{}", t.b.log());
    assert!(!t.dir("b").join("docs").exists(), "the emptied folder went too");
    assert_eq!(counter(t.port, "bytes_in"), bytes_in, "nothing uploaded:\n{}", t.a.log());
    assert!(wait_until(DEFAULT_DEADLINE, || counter(t.port, "copies_out") == 2), "{}", t.b.log());
    // A copy (a new file with the bytes of one in sync) is compared, not
    // trusted by name, and only from 16 MiB on: a 3 MiB copy is uploaded.
    std::fs::copy(t.dir("a").join("papers/x.bin"), t.dir("a").join("x-copy.bin")).unwrap();
    t.converged("the copy on both", |f| f.get("x-copy.bin") == Some(&x));
    assert!(counter(t.port, "bytes_in") > bytes_in);
}

#[test]
fn a_large_copy_is_compared_and_goes_as_a_copy() {
    let t = Two::start("renames-copy", &[]);
    let big: Vec<u8> = (0..17u32 << 20).map(|i| (i.wrapping_mul(2_246_822_519) >> 24) as u8).collect();
    put(&t.dir("a"), "video.mkv", &big);
    t.converged("video on both", |f| f.get("video.mkv").is_some_and(|v| v.len() == big.len()));
    past_racy_window(&[&t.dir("a"), &t.dir("b")]);
    let bytes_in = counter(t.port, "bytes_in");
    std::fs::copy(t.dir("a").join("video.mkv"), t.dir("a").join("video (copy).mkv")).unwrap();
    t.converged("both videos on both", |f| f.len() == 2 && f.get("video (copy).mkv").is_some_and(|v| *v == big));
    assert_eq!(counter(t.port, "bytes_in"), bytes_in, "nothing uploaded:\n{}", t.a.log());
    assert!(wait_until(DEFAULT_DEADLINE, || counter(t.port, "copies_out") == 1), "{}", t.b.log());
}

#[test]
fn a_client_whose_source_changed_is_sent_the_file_and_no_copy_uploads_whole() {
    let t = Two::start("renames-fallback", &[]);
    let data = content(4);
    put(&t.dir("a"), "f.bin", &data);
    t.converged("f.bin on both", |f| f.get("f.bin") == Some(&data));
    past_racy_window(&[&t.dir("a"), &t.dir("b")]);
    // b stops; its f.bin changes while it is away, so when it is back the
    // COPY the server sends it cannot be made from its f.bin.
    let Two { tmp, server, port, a, mut b } = t;
    b.terminate();
    let mine = content(5);
    put(&tmp.join("b"), "f.bin", &mine);
    std::fs::rename(tmp.join("a").join("f.bin"), tmp.join("a").join("g.bin")).unwrap();
    assert!(wait_until(DEFAULT_DEADLINE, || counter(port, "copies_in") == 1), "{}", a.log());
    let b = ClientProc::start(&server, &tmp.join("b"), 1 << 20, &["--label", "b"]);
    let t = Two { tmp, server, port, a, b };
    t.converged("g.bin on both, b's change kept", |f| {
        f.get("g.bin") == Some(&data) && f.values().any(|v| *v == mine)
    });
    // A client with --no-copy sends a rename whole.
    let Two { tmp, server, port, a, b } = t;
    drop(a);
    let a = ClientProc::start(&server, &tmp.join("a"), 1 << 20, &["--label", "a", "--no-copy"]);
    assert!(wait_until(DEFAULT_DEADLINE, || a.log().contains("reconciled")));
    let bytes_in = counter(port, "bytes_in");
    std::fs::rename(tmp.join("a").join("g.bin"), tmp.join("a").join("h.bin")).unwrap();
    let t = Two { tmp, server, port, a, b };
    t.converged("h.bin on both", |f| f.get("h.bin") == Some(&data));
    assert!(counter(t.port, "bytes_in") >= bytes_in + SIZE as u64, "uploaded whole:\n{}", t.a.log());
}
