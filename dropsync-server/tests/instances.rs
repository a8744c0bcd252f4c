//! Several server instances on one PostgreSQL database and one S3 bucket
//! (issue 18), with real processes: three instances, clients on different
//! ones. An edit through instance 1 reaches a client of instance 3 (the
//! follower: NOTIFY, then the change log; the content from the bucket); a
//! lock held through instance 1 refuses an upload through instance 2 with
//! 0x0040, and kill -9 of instance 1 mid-upload releases it (PostgreSQL
//! drops a dead connection's advisory locks).
#![allow(clippy::unwrap_used)]

use dropsync_proto::{md5, Frame, StatusCode};
use dropsync_testkit::{
    tree, wait_until, write_file, ClientProc, PgProc, RawPeer, S3Proc, ServerProc, TempDir, DEFAULT_DEADLINE,
};

#[test]
fn three_instances_share_one_namespace() {
    let tmp = TempDir::new("instances");
    let pg = PgProc::start(&tmp.join("pg"));
    let s3 = S3Proc::start("shared");
    let env = S3Proc::env();
    let args = ["--catalog", &pg.url, "--blobs", "s3://shared/c", "--s3-endpoint", &s3.endpoint];
    let mut one = ServerProc::start_with_env(&tmp.join("root1"), &args, &env);
    let two = ServerProc::start_with_env(&tmp.join("root2"), &args, &env);
    let three = ServerProc::start_with_env(&tmp.join("root3"), &args, &env);

    // An edit through instance 1 reaches a client of instance 3.
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::create_dir_all(&b).unwrap();
    let ca = ClientProc::start(&one, &a, 1 << 20, &["--label", "a"]);
    let cb = ClientProc::start(&three, &b, 1 << 20, &["--label", "b"]);
    write_file(&a, "report.txt", b"written through instance 1");
    let arrived = wait_until(DEFAULT_DEADLINE, || {
        tree(&b).get("report.txt").map(Vec::as_slice) == Some(b"written through instance 1")
    });
    assert!(arrived, "a:\n{}\nb:\n{}\nthree:\n{}", ca.log(), cb.log(), three.log());
    // And back, through instance 3 to a client of instance 1.
    write_file(&b, "reply.txt", b"through instance 3");
    assert!(wait_until(DEFAULT_DEADLINE, || a.join("reply.txt").exists()), "{}", one.log());

    // A lock held through instance 1 refuses an upload through instance 2.
    let mut p1 = RawPeer::hello(one.send_port, one.recv_port, [1; 16], "p1");
    p1.receive_metadata();
    let first = b"first chunk of an upload left open";
    assert_eq!(p1.request(&Frame::Chunk { digest: md5(first), name: "locked.bin", payload: first }), StatusCode::OK);
    let mut p2 = RawPeer::hello(two.send_port, two.recv_port, [2; 16], "p2");
    p2.receive_metadata();
    assert_eq!(p2.upload("locked.bin", b"from instance 2", 64), StatusCode::LOCKED, "{}", two.log());

    // kill -9 of instance 1 mid-upload: its locks go with its connection.
    drop(ca);
    one.kill9();
    let freed = wait_until(DEFAULT_DEADLINE, || p2.upload("locked.bin", b"from instance 2", 64) == StatusCode::OK);
    assert!(freed, "{}", two.log());
    assert!(
        wait_until(DEFAULT_DEADLINE, || tree(&b).get("locked.bin").map(Vec::as_slice) == Some(b"from instance 2")),
        "instance 2's commit reaches a client of instance 3:\n{}",
        three.log()
    );

    // Conflicting edits through two instances: b edits offline while a
    // client of instance 2 edits the same file; b comes back through
    // instance 3. Whichever edit ends as the file (b's wins when instance 3
    // had not yet followed c's commit when b reconnected: the client's
    // rule, then the server's stale-change rule, decide), the other is kept
    // as a conflict copy, everywhere: nothing is lost.
    let c = tmp.join("c");
    let cc = ClientProc::start(&two, &c, 1 << 20, &["--label", "c"]);
    assert!(wait_until(DEFAULT_DEADLINE, || tree(&c).contains_key("report.txt")), "{}", cc.log());
    drop(cb);
    write_file(&b, "report.txt", b"b's offline edit");
    write_file(&c, "report.txt", b"c's edit through instance 2");
    let through_c =
        || tree(&tmp.join("c")).get("report.txt").map(Vec::as_slice) == Some(b"c's edit through instance 2");
    assert!(wait_until(DEFAULT_DEADLINE, through_c));
    let _cb = ClientProc::start(&three, &b, 1 << 20, &["--label", "b"]);
    let edits: [&[u8]; 2] = [b"b's offline edit", b"c's edit through instance 2"];
    let settled = wait_until(DEFAULT_DEADLINE, || {
        let (tb, tc) = (tree(&b), tree(&c));
        let current = tb.get("report.txt").map(Vec::as_slice);
        let copy = tb.iter().find(|(k, _)| k.starts_with("report (conflicted copy")).map(|(_, v)| v.as_slice());
        tb == tc && matches!((current, copy), (Some(x), Some(y)) if x != y && edits.contains(&x) && edits.contains(&y))
    });
    assert!(settled, "b: {:?}\nc: {:?}", tree(&b).keys(), tree(&c).keys());
}

#[test]
fn a_content_no_line_names_leaves_the_shared_bucket_and_one_still_named_stays() {
    let tmp = TempDir::new("instances-gc");
    let pg = PgProc::start(&tmp.join("pg"));
    let s3 = S3Proc::start("gc-bucket");
    let env = S3Proc::env();
    let args = [
        "--catalog",
        &pg.url,
        "--blobs",
        "s3://gc-bucket",
        "--s3-endpoint",
        &s3.endpoint,
        "--keep-days",
        "0",
        "--gc-grace-secs",
        "0",
    ];
    let mut one = ServerProc::start_with_env(&tmp.join("root1"), &args, &env);
    let two = ServerProc::start_with_env(&tmp.join("root2"), &args, &env);
    let (a, b) = (tmp.join("a"), tmp.join("b"));
    std::fs::create_dir_all(&b).unwrap();
    let ca = ClientProc::start(&one, &a, 1 << 20, &["--label", "a"]);
    let cb = ClientProc::start(&two, &b, 1 << 20, &["--label", "b"]);
    write_file(&a, "temp.bin", b"short-lived content");
    write_file(&a, "keep.bin", b"content named twice");
    assert!(wait_until(DEFAULT_DEADLINE, || tree(&b).len() == 2), "{}", cb.log());
    // The same content again, through the other instance, at another path.
    write_file(&b, "copy.bin", b"content named twice");
    assert!(wait_until(DEFAULT_DEADLINE, || a.join("copy.bin").exists()), "{}", ca.log());
    std::fs::remove_file(a.join("temp.bin")).unwrap();
    std::fs::remove_file(a.join("keep.bin")).unwrap();
    let deleted = || !b.join("temp.bin").exists() && !b.join("keep.bin").exists();
    assert!(wait_until(DEFAULT_DEADLINE, deleted), "{}", cb.log());
    // Past retention (--keep-days 0, applied at start): instance 1 no longer
    // refers to either content; a stale instance's word that nothing refers
    // to "content named twice" is written into the ledger too.
    drop(ca);
    one.restart();
    let mut db = postgres::Client::connect(&pg.url, postgres::NoTls).unwrap();
    let twice: Vec<u8> = sha(b"content named twice");
    db.execute("INSERT INTO dropsync_gc VALUES ($1, 0) ON CONFLICT (strong) DO UPDATE SET since_ns = 0", &[&twice])
        .unwrap();
    let short = hex(b"short-lived content");
    let collected = wait_until(DEFAULT_DEADLINE, || !s3.keys("gc-bucket").contains(&short));
    assert!(collected, "one:\n{}\ntwo:\n{}", one.log(), two.log());
    assert!(
        wait_until(DEFAULT_DEADLINE, || db
            .query_one("SELECT count(*) FROM dropsync_gc", &[])
            .unwrap()
            .get::<_, i64>(0)
            == 0),
        "the ledger empties"
    );
    assert!(s3.keys("gc-bucket").contains(&hex(b"content named twice")), "still named by copy.bin: it stays");
    assert_eq!(std::fs::read(b.join("copy.bin")).unwrap(), b"content named twice");
}

fn sha(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).to_vec()
}

fn hex(bytes: &[u8]) -> String {
    sha(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
