//! META-DATA at scale: load, save (commit through the journal, full
//! compaction), lookups and reconciliation at 1,000,000 paths. Prints
//! numbers; a benchmark, not a test (`cargo bench -p dropsync-core`).
#![allow(clippy::disallowed_methods, clippy::needless_range_loop, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::time::Instant;

use dropsync_core::meta_server::{Catalog, Change, MemCatalog};
use dropsync_core::reconcile::{reconcile, Content, ServerSide};
use dropsync_io::dir_storage::DirStorage;
use dropsync_proto::md5;

const N: usize = 1_000_000;

fn path(i: usize) -> String {
    format!("projects/p{:03}/src/module_{:04}/file_{i:07}.rs", i % 1000, (i / 1000) % 10_000)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("dropsync-bench-meta-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // Build a 1M-entry table through the real journaled catalog.
    let cat = MemCatalog::open(DirStorage::new(&dir).expect("dir")).expect("open");
    let digests: Vec<[u8; 16]> = (0..N).map(|i| md5(&i.to_le_bytes())).collect();
    // A SHA-256 stands in the server's store beside each MD5 (its length is
    // what matters here, not its value).
    let strong = |i: usize| {
        let mut s = [0u8; 32];
        s[..16].copy_from_slice(&digests[i]);
        s
    };
    let t = Instant::now();
    for i in 0..10_000 {
        cat.commit(&path(i), Change::File { md5: digests[i], size: i as u64, mtime_ns: 1, strong: strong(i) }).expect("commit");
    }
    let per_commit = t.elapsed().as_secs_f64() / 10_000.0;
    println!("commit (journal append + fdatasync): {:.1} µs each", per_commit * 1e6);
    // The rest goes in through a snapshot written directly, then a compaction.
    let mut entries = HashMap::with_capacity(N);
    for i in 0..N {
        let p = path(i);
        entries.insert(
            p.clone(),
            dropsync_proto::metadata::Entry {
                version: i as u64 + 1,
                md5: digests[i],
                size: i as u64,
                mtime_ns: 1_700_000_000_000_000_000 + i as i64,
                state: dropsync_proto::metadata::EntryState::File,
                path: p,
                strong: Some(strong(i)),
            },
        );
    }
    let table = dropsync_core::meta_server::ServerMeta::from_entries(entries);
    let mut store = dropsync_core::store::JournaledStore::open(DirStorage::new(&dir).expect("dir")).expect("open").0;
    let t = Instant::now();
    store.compact(table.entries()).expect("compact");
    println!("save (full snapshot, {} entries): {:.2} s", N, t.elapsed().as_secs_f64());
    let size = std::fs::metadata(dir.join("metadata")).expect("snapshot").len();
    println!("snapshot file size: {:.1} MB ({:.0} B/entry)", size as f64 / 1e6, size as f64 / N as f64);
    drop(table);

    let t = Instant::now();
    let cat = MemCatalog::open(DirStorage::new(&dir).expect("dir")).expect("load");
    println!("load ({} entries): {:.2} s", cat.len(), t.elapsed().as_secs_f64());

    let t = Instant::now();
    let lookups = 1_000_000;
    for i in 0..lookups {
        black_box(cat.get(&path((i * 7919) % N)));
    }
    println!("lookup: {:.0} ns each (through the catalog mutex)", t.elapsed().as_nanos() as f64 / lookups as f64);

    let t = Instant::now();
    let (text, _) = cat.snapshot(None);
    println!("render META-DATA for a client: {:.2} s, {:.1} MB", t.elapsed().as_secs_f64(), text.len() as f64 / 1e6);
    drop(text);

    let t = Instant::now();
    for i in 0..10_000 {
        cat.commit(&path(i), Change::Delete { mtime_ns: 2 }).expect("commit");
    }
    println!("commit at 1M entries: {:.1} µs each", t.elapsed().as_secs_f64() / 10_000.0 * 1e6);

    // Reconcile 1M paths: a tenth changed on each side.
    let mut server = HashMap::with_capacity(N);
    let mut base = HashMap::with_capacity(N);
    let mut local = HashMap::with_capacity(N);
    for i in 0..N {
        let c = Content { md5: digests[i], size: i as u64 };
        let p = path(i);
        base.insert(p.clone(), c);
        let other = Content { md5: digests[(i + 1) % N], size: 0 };
        server.insert(p.clone(), ServerSide::File(if i % 10 == 1 { other } else { c }));
        local.insert(p, if i % 10 == 2 { other } else { c });
    }
    let t = Instant::now();
    let plan = reconcile(&server, &base, &local, true);
    println!("reconcile {} paths: {:.2} s ({} actions)", N, t.elapsed().as_secs_f64(), plan.len());

    let _ = std::fs::remove_dir_all(&dir);
}
