//! No half-copied uploads (issue 17), with the real binaries: a 30 MiB file
//! copied into a watched folder (written piece by piece, as `cp` does) never
//! arrives partial anywhere: the other client only ever sees the whole
//! file, and the server keeps no partial version of it in its history.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Instant;

use common::Net;
use dropsync_testkit::{bin_path, wait_until, ClientProc, DEFAULT_DEADLINE};

#[test]
fn a_30_mib_copy_never_arrives_partial_anywhere() {
    let net = Net::new("copies");
    let (a, b) = (net.folder("a"), net.folder("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    // Chunks of 1 MiB: the many-chunk path is the other tests' business.
    let ca = ClientProc::start(&net.server, &a, 1 << 20, &["--label", "a"]);
    let cb = ClientProc::start(&net.server, &b, 1 << 20, &["--label", "b"]);
    assert!(wait_until(DEFAULT_DEADLINE, || ca.log().contains("connected") && cb.log().contains("connected")));
    let whole: Vec<u8> = (0..30u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let writer = {
        let (path, whole) = (a.join("big.iso"), whole.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(path).unwrap();
            for piece in whole.chunks(64 << 10) {
                f.write_all(piece).unwrap();
            }
        })
    };
    // Watch b while the copy and the sync run: whatever b has at that name
    // is the whole file, never a part of it.
    let target = b.join("big.iso");
    let started = Instant::now();
    let mut looks = 0u32;
    let arrived = wait_until(DEFAULT_DEADLINE, || {
        looks += 1;
        match std::fs::read(&target) {
            Ok(got) => {
                assert!(got.len() == whole.len() && got == whole, "b saw {} of {} bytes", got.len(), whole.len());
                true
            }
            Err(_) => false,
        }
    });
    writer.join().unwrap();
    assert!(
        arrived,
        "the file never arrived on b ({looks} looks, {:?}):\n{}\n{}",
        started.elapsed(),
        ca.log(),
        cb.log()
    );
    let root = net.tmp.join("server");
    let out = Command::new(bin_path("server"))
        .args(["history", "--root", root.to_str().unwrap(), "big.iso"])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listing}");
    let versions: Vec<&str> = listing.lines().filter(|l| l.trim_start().starts_with("version ")).collect();
    assert_eq!(versions.len(), 1, "one version, the whole file: {listing}");
    assert!(versions[0].contains(&format!("{} bytes", whole.len())), "{listing}");
}
