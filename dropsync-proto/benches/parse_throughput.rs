//! Parser throughput on large FILE_CHUNK frames: prints MB/s. A benchmark,
//! not a test: run with `cargo bench -p dropsync-proto`.
#![allow(clippy::disallowed_methods, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use dropsync_proto::md5_pair::{md5_chunk_into, FileMd5};
use dropsync_proto::{md5, parse, parse_head, Frame};

fn main() {
    for &size in &[64 * 1024usize, 1024 * 1024, 16 * 1024 * 1024] {
        let payload = vec![0xa5u8; size];
        let bytes = Frame::Chunk { digest: md5(&payload), name: "bench/file.bin", payload: &payload }.to_vec();
        let rounds = (2usize << 30) / size; // parse 2 GiB of frames
        let start = Instant::now();
        for _ in 0..rounds {
            let (frame, used) = parse(black_box(&bytes)).expect("valid").expect("complete");
            black_box((frame, used));
        }
        let secs = start.elapsed().as_secs_f64();
        let mbs = (rounds * bytes.len()) as f64 / secs / 1e6;
        let start = Instant::now();
        for _ in 0..rounds {
            black_box(parse_head(black_box(&bytes)).expect("valid"));
        }
        let head_ns = start.elapsed().as_nanos() as f64 / rounds as f64;
        // For scale: what checking the chunk digest costs per byte.
        let md5_rounds = (256usize << 20) / size;
        let start = Instant::now();
        for _ in 0..md5_rounds {
            black_box(md5(black_box(&payload)));
        }
        let md5_mbs = (md5_rounds * size) as f64 / start.elapsed().as_secs_f64() / 1e6;
        // Both digests a side needs (chunk and whole file) in one pass.
        let mut file = FileMd5::default();
        let start = Instant::now();
        for _ in 0..md5_rounds {
            black_box(md5_chunk_into(black_box(&payload), &mut file));
        }
        let pair_mbs = (md5_rounds * size) as f64 / start.elapsed().as_secs_f64() / 1e6;
        black_box(file.finish());
        println!(
            "chunk {:>9} B: parse {:>12.0} MB/s ({:.0} ns/frame, header-only {:.0} ns); md5 of payload {:.0} MB/s; chunk + whole-file md5 in one pass {:.0} MB/s",
            size,
            mbs,
            secs * 1e9 / rounds as f64,
            head_ns,
            md5_mbs,
            pair_mbs
        );
    }
}
