//! B2 over slower links (issue 19's streaming sync): the same A → B sync as
//! B2, with each client behind a link held to [`RATE`] each way (a paced
//! proxy pair per client, `proxy.rs`), so that the links, not this
//! machine's two cores, are what bounds it. Streaming deliveries (the
//! default: B receives the file while A uploads it) against store and
//! forward (`--no-streaming`: B's download starts once A's upload is
//! committed), one after the other in each run, in turns.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::time::Instant;

use crate::proxy::ProxyPair;
use crate::{data, finish_run, run_dir, start_client, start_server, until_arrived, wait_ready, Cfg, Results, Row, MB, MIB, R};

/// Bytes a second each way on each client's link.
const RATE: u64 = 50_000_000;
/// The file's size: 5.4 s a hop at [`RATE`].
const SIZE: u64 = 256 * MIB;

/// Its rows, in B2's group.
pub(crate) fn rows() -> Vec<Row> {
    let size = SIZE / MIB;
    let rate = RATE as f64 / MB;
    vec![
        Row::new("B2", "b2l_stream", format!("A → B, {size} MiB, each client behind a {rate:.0} MB/s link, streaming (default), s"), "s"),
        Row::new("B2", "b2l_store", "… the same with --no-streaming (store and forward), s", "s"),
        Row::new("B2", "b2l_gain", "… store and forward ÷ streaming, time (run by run)", "×"),
        Row::new("B2", "b2l_upload", "… of which A's upload (store and forward: until A logs it done), s", "s"),
    ]
}

/// One run: both ways of delivering, in turns from run to run.
pub(crate) fn run(cfg: &Cfg, res: &mut Results, big: &Path, i: usize) -> R<()> {
    let mut streamed = None;
    let mut stored = None;
    let mut upload = None;
    let order: [bool; 2] = if i.is_multiple_of(2) { [true, false] } else { [false, true] };
    for streaming in order {
        let (secs, uploaded) = one(cfg, res, big, i, streaming)?;
        if streaming {
            streamed = Some(secs);
        } else {
            stored = Some(secs);
            upload = uploaded;
        }
    }
    let (Some(s), Some(f)) = (streamed, stored) else { return Ok(()) };
    let up = upload.map_or("?".to_owned(), |u| format!("{u:.2} s"));
    eprintln!("B2 link run {}: streaming {s:.2} s, store and forward {f:.2} s ({:.2}×; its upload {up})", i + 1, f / s);
    res.push("b2l_stream", s);
    res.push("b2l_store", f);
    res.push("b2l_gain", f / s);
    if let Some(u) = upload {
        res.push("b2l_upload", u);
    }
    Ok(())
}

/// A → B through the paced links, the server streaming or not: seconds
/// from the file's arrival in A's folder until it is whole in B's, and
/// until A logged its upload done.
fn one(cfg: &Cfg, res: &mut Results, big: &Path, i: usize, streaming: bool) -> R<(f64, Option<f64>)> {
    let tag = if streaming { "b2ls" } else { "b2lf" };
    let phase = format!("B2 link run {} ({})", i + 1, if streaming { "streaming" } else { "store and forward" });
    let dir = run_dir(cfg, tag, i)?;
    let (fa, fb, stage) = (dir.join("A"), dir.join("B"), dir.join("stage"));
    for d in [&fa, &fb, &stage] {
        fs::create_dir_all(d)?;
    }
    let staged = stage.join("part.bin");
    io::copy(&mut File::open(big)?.take(SIZE), &mut File::create(&staged)?)?;
    let out = (|| -> R<(f64, Option<f64>)> {
        let extra: &[&str] = if streaming { &[] } else { &["--no-streaming"] };
        let (mut server, s, r) = start_server(cfg, &dir, extra)?;
        let (pa, pb) = (ProxyPair::start_paced((s, r), RATE)?, ProxyPair::start_paced((s, r), RATE)?);
        let mut cb = start_client(cfg, &dir, "client-b", pb.ports(), &fb, false)?;
        let mut ca = start_client(cfg, &dir, "client-a", pa.ports(), &fa, false)?;
        wait_ready(res, &phase, &cb);
        wait_ready(res, &phase, &ca);
        let target = fb.join("part.bin");
        let t0 = Instant::now();
        fs::rename(&staged, fa.join("part.bin"))?;
        let (secs, uploaded) = until_arrived(&target, SIZE, &ca.log, "part.bin", t0, cfg.limit)?;
        ca.stop();
        cb.stop();
        server.stop();
        drop((pa, pb));
        // A's file is the staged one, moved in and left as it was.
        if !data::same_content(&fa.join("part.bin"), &target)? {
            return Err("B's copy differs from the original".into());
        }
        Ok((secs, uploaded))
    })();
    finish_run(res, &phase, &dir);
    out
}
