//! `--http` (issue 20): `/metrics` read by the real Prometheus text parser
//! (Python's `prometheus_client`) as a scripted session uploads and
//! deletes, `/healthz`, and the status page rendered by headless Chromium
//! with real clients connected. The tools are Debian packages that
//! `.ci/run` installs; a test that needs a missing one fails and says so.
//!
//! `DROPSYNC_SCREENSHOT=FILE` makes the status page test save a screenshot
//! there too (a relative FILE from the workspace root): docs/status-page.png
//! was made with `DROPSYNC_SCREENSHOT=docs/status-page.png cargo test -p
//! dropsync-server --test http`.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dropsync_proto::{md5, Frame, StatusCode};
use dropsync_testkit::{
    http_get, wait_for, wait_until, write_file, ClientProc, RawPeer, ServerProc, TempDir, DEFAULT_DEADLINE,
};

/// How long an outside tool (Python, Chromium) may run.
const TOOL_DEADLINE: Duration = Duration::from_secs(90);

fn http_server(tmp: &TempDir) -> (ServerProc, u16) {
    let server = ServerProc::start(&tmp.join("root"), &["--http", "127.0.0.1:0"]);
    let port = server.http_port.expect("the listening line names the HTTP address");
    (server, port)
}

/// Runs `cmd` with `input` on its stdin, within [`TOOL_DEADLINE`]; its exit
/// status, stdout and stderr.
fn run_tool(mut cmd: Command, input: &str) -> (bool, String, String) {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap_or_else(|e| {
            panic!("cannot start {cmd:?}: {e}");
        });
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut status = None;
    let finished = wait_until(TOOL_DEADLINE, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = writer.join();
    let (stdout, stderr) = (reader.join().unwrap(), err_reader.join().unwrap());
    assert!(finished, "{cmd:?} did not finish within {TOOL_DEADLINE:?}; stderr:\n{stderr}");
    (status.is_some_and(|s| s.success()), stdout, stderr)
}

/// Debian's python3 (where `python3-prometheus-client` installs), before
/// whatever `python3` comes first on PATH (a pyenv shim, say).
fn python() -> Command {
    let p = if Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
    Command::new(p)
}

/// Parses Prometheus text with `prometheus_client`'s parser: each sample as
/// `name{label=value,...}` (labels sorted) to its value. Fails the test if
/// the parser is missing or rejects the text.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    const SCRIPT: &str = r#"
import sys
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError as e:
    sys.exit("MISSING: %s" % e)
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join("%s=%s" % kv for kv in sorted(s.labels.items()))
        print("%s{%s}\t%r" % (s.name, labels, s.value))
"#;
    let mut cmd = python();
    cmd.arg("-c").arg(SCRIPT);
    let (ok, out, err) = run_tool(cmd, text);
    assert!(
        !err.contains("MISSING"),
        "Python's prometheus_client is missing ({err}): apt-get install python3-prometheus-client (.ci/run does)"
    );
    assert!(ok, "prometheus_client rejected /metrics: {err}\n--- text ---\n{text}");
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or_else(|_| panic!("bad value in {l:?}", l = (k, v)))))
        .collect()
}

fn value(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no sample {key} in {m:#?}"))
}

#[test]
fn healthz_answers_and_a_slow_scraper_does_not_hold_it_up() {
    let tmp = TempDir::new("http-health");
    let (_server, port) = http_server(&tmp);
    assert_eq!(http_get(port, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(port, "/nowhere").0, 404);
    // A connection that never sends its request holds one worker (for at
    // most the request timeout); the next request is answered meanwhile.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = Instant::now();
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
}

#[test]
fn without_http_the_server_opens_no_http_port() {
    let tmp = TempDir::new("http-off");
    let server = ServerProc::start(&tmp.join("root"), &[]);
    assert_eq!(server.http_port, None);
    assert!(!server.log().contains("status page"), "{}", server.log());
}

#[test]
fn metrics_parse_and_count_a_scripted_session() {
    let tmp = TempDir::new("http-metrics");
    let (server, port) = http_server(&tmp);
    let before = parse_metrics(&http_get(port, "/metrics").1);
    assert_eq!(value(&before, "dropsync_clients_connected{}"), 0.0);
    assert_eq!(value(&before, "dropsync_files_in_total{}"), 0.0);

    let mut a = RawPeer::hello(server.send_port, server.recv_port, [7; 16], "scripted");
    a.receive_metadata();
    let small = vec![b'a'; 1000];
    let large = vec![b'b'; 5000];
    assert_eq!(a.upload("a.txt", &small, 300), StatusCode::OK);
    assert_eq!(a.upload("dir/b.bin", &large, 4096), StatusCode::OK);
    assert_eq!(a.request(&Frame::Delete { digest: md5(&small), name: "a.txt" }), StatusCode::OK);
    assert_eq!(a.request(&Frame::Delete { digest: md5(b"x"), name: "never.txt" }), StatusCode::NO_FILE);

    // The counters move before each reply goes out; polling only guards
    // against a scrape racing the last one.
    let m = wait_for(DEFAULT_DEADLINE, "the session's counts in /metrics", || {
        let m = parse_metrics(&http_get(port, "/metrics").1);
        (m.get("dropsync_deletes_in_total{}") == Some(&1.0)).then_some(m)
    });
    assert_eq!(value(&m, "dropsync_clients_connected{}"), 1.0);
    assert_eq!(value(&m, "dropsync_sessions_connected{kind=hello}"), 1.0);
    assert_eq!(value(&m, "dropsync_sessions_started_total{kind=hello}"), 1.0);
    assert_eq!(value(&m, "dropsync_sessions_started_total{kind=legacy}"), 0.0);
    assert_eq!(value(&m, "dropsync_bytes_in_total{}"), 6000.0);
    assert_eq!(value(&m, "dropsync_files_in_total{}"), 2.0);
    assert_eq!(value(&m, "dropsync_commits_total{}"), 2.0);
    assert_eq!(value(&m, "dropsync_refusals_total{code=0x0020}"), 1.0);
    assert_eq!(value(&m, "dropsync_commit_duration_seconds_count{}"), 2.0);
    assert_eq!(value(&m, "dropsync_transfers_open{direction=in}"), 0.0);
    assert_eq!(value(&m, "dropsync_locks_held{}"), 0.0);
    assert_eq!(value(&m, "dropsync_paths{}"), 2.0, "one file and one tombstone");
    assert_eq!(value(&m, "dropsync_stored_blobs{}"), 2.0, "the deleted file's content is kept in the history");
    assert_eq!(value(&m, "dropsync_history_versions{}"), 1.0, "the deleted version");
    assert!(value(&m, "dropsync_bytes_out_total{}") > 0.0, "the META-DATA went out");
    assert!(m.keys().any(|k| k.starts_with("dropsync_client_queue_depth{client=scripted#")), "{m:#?}");

    // What a scrape costs (debug build, one client): printed for the record.
    let runs = 20;
    let started = Instant::now();
    for _ in 0..runs {
        assert_eq!(http_get(port, "/metrics").0, 200);
    }
    eprintln!("/metrics: {:?} a scrape over {runs} scrapes", started.elapsed() / runs);
}

/// Runs headless Chromium on `url` with `args`; its stdout. Fails the test
/// if Chromium is not installed.
fn chromium(tmp: &TempDir, url: &str, args: &[&str]) -> String {
    let bin = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            Command::new("sh").arg("-c").arg(format!("command -v {b}")).output().is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| panic!("chromium is missing: apt-get install chromium (.ci/run does)"));
    let mut cmd = Command::new(bin);
    cmd.args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"])
        .arg(format!("--user-data-dir={}", tmp.join("chromium-profile").display()))
        .args(args)
        .arg(url);
    let (ok, out, err) = run_tool(cmd, "");
    assert!(ok, "chromium failed:\n{err}");
    out
}

#[test]
fn the_status_page_lists_the_connected_clients_in_chromium() {
    let tmp = TempDir::new("http-page");
    let (server, port) = http_server(&tmp);
    let (a, b) = (tmp.join("laptop"), tmp.join("desk"));
    write_file(&a, "notes/todo.txt", b"milk, eggs\n");
    write_file(&a, "photos/<beach>.jpg", &[0u8; 150_000]);
    write_file(&b, "report & summary.pdf", &[1u8; 42_000]);
    let _ca = ClientProc::start(&server, &a, 65536, &["--label", "alpha-laptop"]);
    let _cb = ClientProc::start(&server, &b, 65536, &["--label", "beta <desk>"]);
    wait_for(DEFAULT_DEADLINE, "both folders in sync", || {
        let ok = dropsync_testkit::tree(&a).len() == 3 && dropsync_testkit::tree(&b).len() == 3;
        ok.then_some(())
    });
    std::fs::remove_file(a.join("notes/todo.txt")).unwrap();
    let page = wait_for(DEFAULT_DEADLINE, "two clients in sync on the page", || {
        let (_, page) = http_get(port, "/");
        let ready = page.matches("<td class=\"ok\">in sync</td>").count() == 2 && page.contains("deleted");
        ready.then_some(page)
    });
    assert!(page.contains("photos/&lt;beach&gt;.jpg"), "{page}");

    let url = format!("http://127.0.0.1:{port}/");
    let dom = chromium(&tmp, &url, &["--dump-dom"]);
    for label in ["alpha-laptop", "beta &lt;desk&gt;"] {
        assert!(dom.contains(&format!("<td class=\"label\">{label}</td>")), "no client {label} in the DOM:\n{dom}");
    }
    assert!(!dom.contains("<desk>") && !dom.contains("<beach>"), "a name became markup:\n{dom}");
    assert!(dom.contains("report &amp; summary.pdf"), "{dom}");

    if let Ok(shot) = std::env::var("DROPSYNC_SCREENSHOT") {
        // A relative path is taken from the workspace root.
        let shot = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(shot);
        let _ = std::fs::remove_file(&shot);
        chromium(&tmp, &url, &[&format!("--screenshot={}", shot.display()), "--window-size=1200,800"]);
        assert!(wait_until(DEFAULT_DEADLINE, || shot.exists()), "no screenshot at {}", shot.display());
    }
}
