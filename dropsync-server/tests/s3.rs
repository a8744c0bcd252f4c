//! Contents in an S3 bucket (issue 18), with the real server and clients, a
//! real PostgreSQL cluster for the catalog and moto's S3 server: contents
//! go to the bucket before the commit that names them (a large one in
//! parts), and a server that lost its local cache fetches them back from
//! the bucket. With the embedded catalog (one instance for sure), a content
//! nothing refers to any more leaves the bucket; with a shared catalog
//! nothing is deleted from it yet (docs/SCALING.md).
#![allow(clippy::unwrap_used)]

use dropsync_testkit::{
    tree, wait_until, write_file, ClientProc, PgProc, S3Proc, ServerProc, TempDir, DEFAULT_DEADLINE,
};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn contents_live_in_the_bucket_and_come_back_from_it() {
    let tmp = TempDir::new("s3-blobs");
    let pg = PgProc::start(&tmp.join("pg"));
    let s3 = S3Proc::start("dropsync-test");
    let root = tmp.join("root");
    let env = S3Proc::env();
    let args = [
        "--catalog",
        &pg.url,
        "--blobs",
        "s3://dropsync-test/contents",
        "--s3-endpoint",
        &s3.endpoint,
        "--keep-days",
        "0",
    ];
    let mut server = ServerProc::start_with_env(&root, &args, &env);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    let small = b"a small file".to_vec();
    let large: Vec<u8> = (0..20u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    write_file(&a, "small.txt", &small);
    write_file(&a, "big/large.bin", &large);
    std::fs::create_dir_all(&b).unwrap();
    let _ca = ClientProc::start(&server, &a, 1 << 20, &["--label", "a"]);
    let cb = ClientProc::start(&server, &b, 1 << 20, &["--label", "b"]);
    assert!(wait_until(DEFAULT_DEADLINE, || tree(&b) == tree(&a) && tree(&b).len() == 2), "{}", server.log());
    let keys = s3.keys("dropsync-test");
    for body in [&small, &large] {
        assert!(keys.contains(&format!("contents/{}", hex(body))), "{keys:?}");
    }

    // A server that lost its local copies fetches them from the bucket.
    drop(cb);
    std::fs::remove_dir_all(root.join("blobs")).unwrap();
    server.restart();
    let c = tmp.join("c");
    let status = ClientProc::run_once(&server, &c, 1 << 20, &["--label", "c"], DEFAULT_DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{}", server.log());
    assert_eq!(tree(&c), tree(&a), "from the bucket, whole and verified");

    assert!(s3.keys("dropsync-test").len() >= 2);
}

#[test]
fn with_the_embedded_catalog_a_content_past_retention_leaves_the_bucket() {
    let tmp = TempDir::new("s3-gc");
    let s3 = S3Proc::start("dropsync-gc");
    let env = S3Proc::env();
    let args = ["--blobs", "s3://dropsync-gc", "--s3-endpoint", &s3.endpoint, "--keep-days", "0"];
    let mut server = ServerProc::start_with_env(&tmp.join("root"), &args, &env);
    let a = tmp.join("a");
    write_file(&a, "gone.txt", b"short-lived");
    write_file(&a, "kept.txt", b"stays");
    let ca = ClientProc::start(&server, &a, 4096, &["--label", "a"]);
    let (gone, kept) = (hex(b"short-lived"), hex(b"stays"));
    assert!(wait_until(DEFAULT_DEADLINE, || s3.keys("dropsync-gc").len() == 2), "{}", server.log());
    std::fs::remove_file(a.join("gone.txt")).unwrap();
    assert!(wait_until(DEFAULT_DEADLINE, || ca.log().contains("deleted gone.txt on the server")), "{}", ca.log());
    // Past retention (--keep-days 0, applied at start): the content goes.
    server.restart();
    assert!(wait_until(DEFAULT_DEADLINE, || s3.keys("dropsync-gc") == [kept.clone()]), "{}", server.log());
    assert!(!s3.keys("dropsync-gc").contains(&gone));
}

#[test]
fn a_ten_second_object_store_outage_costs_retries_never_a_change() {
    let tmp = TempDir::new("s3-outage");
    let pg = PgProc::start(&tmp.join("pg"));
    let s3 = S3Proc::start("outage");
    let target: std::net::SocketAddr = ([127, 0, 0, 1], s3.port).into();
    let proxy = dropsync_testkit::LatencyProxy::start(target, std::time::Duration::ZERO).unwrap();
    let env = S3Proc::env();
    let endpoint = format!("http://127.0.0.1:{}", proxy.port);
    let args = ["--catalog", &pg.url, "--blobs", "s3://outage", "--s3-endpoint", &endpoint];
    let server = ServerProc::start_with_env(&tmp.join("root"), &args, &env);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::create_dir_all(&b).unwrap();
    let ca = ClientProc::start(&server, &a, 4096, &["--label", "a"]);
    let cb = ClientProc::start(&server, &b, 4096, &["--label", "b"]);
    write_file(&a, "before.txt", b"stored before the outage");
    assert!(wait_until(DEFAULT_DEADLINE, || b.join("before.txt").exists()), "{}", server.log());

    // The store goes away for 10 s: the upload made meanwhile is refused
    // (0x0080) and tried again by the client until the store is back.
    proxy.set_down(true);
    let down_at = std::time::Instant::now();
    write_file(&a, "during.txt", b"written while the store was away");
    assert!(wait_until(DEFAULT_DEADLINE, || ca.log().contains("server cannot take during.txt now")), "{}", ca.log());
    // The outage lasts its 10 s whatever happens meanwhile (its length is
    // the scenario, not a wait for something).
    std::thread::sleep(std::time::Duration::from_secs(10).saturating_sub(down_at.elapsed()));
    assert!(!b.join("during.txt").exists(), "nothing committed while the store was away");
    proxy.set_down(false);
    let arrived = wait_until(DEFAULT_DEADLINE, || {
        std::fs::read(b.join("during.txt")).ok().as_deref() == Some(&b"written while the store was away"[..])
    });
    assert!(arrived, "a:\n{}\nserver:\n{}", ca.log(), server.log());
    assert!(s3.keys("outage").contains(&hex(b"written while the store was away")));
    drop(cb);
}
