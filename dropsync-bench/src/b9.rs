//! B9 (issue 19): `git checkout TAG` in A's folder on a real disk (the
//! ext4 image of `disk.rs`), hundreds of files created, edited and deleted
//! at once across nested folders, until B's folder equals A's; beside it,
//! the same checkout in a second clone followed by `rsync -a --delete`
//! into an rsync daemon's module on the same disk and from there into a
//! third folder.
//!
//! The repository is generated here (deterministic): a tree of about 3,000
//! text files of 200 B to 40 KiB in about 150 nested folders (tag v0), then
//! four tags each editing, creating and deleting 350 to 800 files, some in
//! new folders, some folders emptied. Generated rather than cloned so the
//! bench needs no network and measures the same history everywhere.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};

use crate::data::Rng;
use crate::procs::Proc;
use crate::rsync::Rsyncd;
use crate::stats::Figure;
use crate::sys;
use crate::{
    finish_run, note_err, run_timed, start_client, start_client_with, start_server, wait_ready, Cfg, Results, Row, R,
};

/// The checkouts timed, in order, after the folders start at v0.
const STEPS: [&str; 5] = ["v1", "v2", "v3", "v4", "v0"];
/// Each step's rows: dropsync, rsync, ratio.
const STEP_KEYS: [[&str; 3]; 5] = [
    ["b9_s1_dropsync", "b9_s1_rsync", "b9_s1_ratio"],
    ["b9_s2_dropsync", "b9_s2_rsync", "b9_s2_ratio"],
    ["b9_s3_dropsync", "b9_s3_rsync", "b9_s3_ratio"],
    ["b9_s4_dropsync", "b9_s4_rsync", "b9_s4_ratio"],
    ["b9_s5_dropsync", "b9_s5_rsync", "b9_s5_ratio"],
];
/// Tags made after v0.
const TAGS: usize = 4;
/// Files at v0.
const BASE_FILES: usize = 3000;
/// How often B's folder is compared with the expected tree while the
/// clock runs (each look is a walk of about 3,000 entries: about 3 ms).
const POLL: Duration = Duration::from_millis(20);
/// Bound on one step.
const STEP_WITHIN: Duration = Duration::from_secs(180);
/// Names at the top of a folder that are not compared: the clients'
/// state, git's, and the ignore file that keeps `.git` out of the sync.
const NOT_COMPARED: [&str; 3] = [".dropsync", ".git", ".syncignore"];
/// The ignore file written in A's folder (the pattern anchored at the
/// root matches the folder and everything under it).
const SYNCIGNORE: &str = "/.git\n";

/// Each file's size and MD5, by `/`-separated path.
type Manifest = BTreeMap<String, (u64, [u8; 16])>;

/// B9's rows: per step dropsync, rsync and their ratio; then the totals.
pub(crate) fn rows(_cfg: &Cfg) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut from = "v0";
    for (to, [ours, theirs, ratio]) in STEPS.iter().zip(STEP_KEYS) {
        rows.push(Row::new(
            "B9",
            ours,
            format!("git checkout {from} → {to} in A's folder (ext4): until B's folder equals it, s"),
            "s",
        ));
        rows.push(Row::new(
            "B9",
            theirs,
            format!("… {from} → {to}: checkout, rsync -a --delete A → rsyncd, rsyncd → B, s"),
            "s",
        ));
        rows.push(
            Row::new("B9", ratio, format!("… {from} → {to}: dropsync ÷ rsync time (run by run)"), "×")
                .target("≤ 1.5×", |v| v <= 1.5),
        );
        from = to;
    }
    rows.push(Row::new("B9", "b9_dropsync", format!("all {} checkouts, dropsync, s", STEPS.len()), "s"));
    rows.push(Row::new("B9", "b9_rsync", format!("all {} checkouts, rsync, s", STEPS.len()), "s"));
    rows.push(
        Row::new("B9", "b9_ratio", "all checkouts: dropsync ÷ rsync time (run by run)", "×")
            .target("≤ 1.5×", |v| v <= 1.5),
    );
    rows.push(
        Row::new("B9", "b9_step_median", "median over the steps of dropsync ÷ rsync (run by run)", "×")
            .target("≤ 1.5×", |v| v <= 1.5),
    );
    rows.push(Row::new("B9", "b9_git", "of dropsync's total: git checkout itself, s", "s"));
    rows
}

// ------------------------------------------------------------- the history

const WORDS: [&str; 24] = [
    "fn", "let", "mut", "self", "impl", "struct", "match", "return", "if", "else", "for", "in", "pub", "use", "mod",
    "where", "loop", "break", "Some", "None", "Ok", "Err", "value", "index",
];

fn text(rng: &mut Rng, size: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 64);
    while out.len() < size {
        let words = 3 + rng.next_u64() % 9;
        out.extend_from_slice(&b"    "[..(rng.next_u64() % 5) as usize]);
        for w in 0..words {
            if w > 0 {
                out.push(b' ');
            }
            match rng.next_u64() % 6 {
                0 => out.extend_from_slice(format!("x{}", rng.next_u64() % 10_000).as_bytes()),
                _ => out.extend_from_slice(WORDS[(rng.next_u64() % WORDS.len() as u64) as usize].as_bytes()),
            }
        }
        out.extend_from_slice(b";\n");
    }
    out
}

/// Log-uniform between 200 B and 40 KiB, as source files are.
fn file_size(rng: &mut Rng) -> usize {
    let u = (rng.next_u64() % 1_000_000) as f64 / 1e6;
    (200.0 * (40_960.0f64 / 200.0).powf(u)) as usize
}

fn pick<'a, T>(rng: &mut Rng, v: &'a [T]) -> &'a T {
    &v[(rng.next_u64() % v.len() as u64) as usize]
}

/// The generated repository: its folder and each tag's manifest.
pub(crate) struct Repo {
    dir: PathBuf,
    tags: BTreeMap<String, Manifest>,
    /// Per tag after v0: (edited, created, deleted) against the tag before.
    changes: Vec<(usize, usize, usize)>,
}

fn manifest(files: &BTreeMap<String, Vec<u8>>) -> Manifest {
    files.iter().map(|(p, c)| (p.clone(), (c.len() as u64, Md5::digest(c).into()))).collect()
}

fn git(dir: &Path, args: &[&str]) -> R<String> {
    let mut all =
        vec!["-C", dir.to_str().ok_or("path not UTF-8")?, "-c", "user.name=bench", "-c", "user.email=bench@localhost"];
    all.extend_from_slice(args);
    Ok(sys::run("git", &all, 120)?)
}

impl Repo {
    /// Generates the history in `dir` (on the scratch tmpfs).
    pub(crate) fn make(dir: &Path) -> R<Repo> {
        let mut rng = Rng::new(0xb9);
        fs::create_dir_all(dir)?;
        git(dir, &["init", "-q", "-b", "main"])?;
        let mut dirs: Vec<String> = Vec::new();
        for top in ["src", "lib", "docs", "tests", "tools", "assets", "crates"] {
            dirs.push(top.to_owned());
            for s in 0..(2 + rng.next_u64() % 5) {
                let sub = format!("{top}/mod{s:02}");
                dirs.push(sub.clone());
                for p in 0..(rng.next_u64() % 5) {
                    let part = format!("{sub}/part{p:02}");
                    dirs.push(part.clone());
                    if rng.next_u64().is_multiple_of(3) {
                        dirs.push(format!("{part}/deep"));
                    }
                }
            }
        }
        let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut serial = 0usize;
        while files.len() < BASE_FILES {
            let d = pick(&mut rng, &dirs).clone();
            let size = file_size(&mut rng);
            files.insert(format!("{d}/file{serial:05}.rs"), text(&mut rng, size));
            serial += 1;
        }
        let mut repo = Repo { dir: dir.to_path_buf(), tags: BTreeMap::new(), changes: Vec::new() };
        repo.commit(&BTreeMap::new(), &files, "v0")?;
        for t in 1..=TAGS {
            let mut next = files.clone();
            let names: Vec<String> = next.keys().cloned().collect();
            let (edits, creates, deletes) =
                (250 + rng.next_u64() % 300, 50 + rng.next_u64() % 100, 50 + rng.next_u64() % 100);
            let mut edited = 0;
            for _ in 0..edits {
                let name = pick(&mut rng, &names).clone();
                let Some(old) = next.get(&name) else { continue };
                // Rewrite a stretch of it, and sometimes add to its end.
                let mut c = old.clone();
                let at = (rng.next_u64() % c.len().max(1) as u64) as usize;
                let cut = ((c.len() - at) / 2).min(4096);
                let len = 40 + (rng.next_u64() % 2000) as usize;
                c.splice(at..at + cut, text(&mut rng, len));
                if rng.next_u64().is_multiple_of(3) {
                    let more = text(&mut rng, 200);
                    c.extend_from_slice(&more);
                }
                if next.get(&name) != Some(&c) {
                    edited += 1;
                    next.insert(name, c);
                }
            }
            // A few new folders each time, the rest in existing ones.
            for k in 0..3 {
                dirs.push(format!("{}/new{t}x{k}", pick(&mut rng, &dirs).clone()));
            }
            for _ in 0..creates {
                let d = pick(&mut rng, &dirs).clone();
                let size = file_size(&mut rng);
                next.insert(format!("{d}/file{serial:05}.rs"), text(&mut rng, size));
                serial += 1;
            }
            // Scattered deletes, and one folder emptied.
            let mut deleted = 0;
            for _ in 0..deletes {
                deleted += usize::from(next.remove(pick(&mut rng, &names)).is_some());
            }
            // A folder two levels down or deeper, so that it holds tens of
            // files, not a whole top-level tree.
            let deep: Vec<String> = dirs.iter().filter(|d| d.matches('/').count() >= 2).cloned().collect();
            let gone = format!("{}/", pick(&mut rng, &deep));
            let before = next.len();
            next.retain(|p, _| !p.starts_with(&gone));
            deleted += before - next.len();
            let created = next.keys().filter(|k| !files.contains_key(*k)).count();
            repo.changes.push((edited, created, deleted));
            repo.commit(&files, &next, &format!("v{t}"))?;
            files = next;
        }
        Ok(repo)
    }

    /// Writes `next` over `prev` in the work tree, commits it and tags it.
    fn commit(&mut self, prev: &BTreeMap<String, Vec<u8>>, next: &BTreeMap<String, Vec<u8>>, tag: &str) -> R<()> {
        for gone in prev.keys().filter(|k| !next.contains_key(*k)) {
            fs::remove_file(self.dir.join(gone))?;
        }
        for (p, c) in next {
            if prev.get(p) != Some(c) {
                let path = self.dir.join(p);
                fs::create_dir_all(path.parent().ok_or("no parent")?)?;
                fs::write(path, c)?;
            }
        }
        git(&self.dir, &["add", "-A"])?;
        git(&self.dir, &["commit", "-q", "-m", tag])?;
        git(&self.dir, &["tag", tag])?;
        self.tags.insert(tag.to_owned(), manifest(next));
        Ok(())
    }

    /// A one-line description for the notes.
    fn describe(&self) -> String {
        let v0 = self.tags.get("v0").map_or(0, |m| m.len());
        let steps: Vec<String> = self
            .changes
            .iter()
            .enumerate()
            .map(|(k, (e, c, d))| format!("v{}: {e} edited, {c} created, {d} deleted", k + 1))
            .collect();
        let back = match (self.tags.get("v0"), self.tags.get(&format!("v{TAGS}"))) {
            (Some(a), Some(b)) => {
                let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(v)).count()
                    + b.keys().filter(|k| !a.contains_key(*k)).count();
                format!("; v{TAGS} → v0: {changed} files differ")
            }
            _ => String::new(),
        };
        format!("B9 repository (generated): v0 has {v0} files; {}{back}", steps.join("; "))
    }
}

// -------------------------------------------------------------- comparing

fn walk(root: &Path, rel: &str, out: &mut BTreeMap<String, u64>) -> std::io::Result<()> {
    for e in fs::read_dir(root.join(rel))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if rel.is_empty() && NOT_COMPARED.contains(&name.as_str()) {
            continue;
        }
        let path = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let t = e.file_type()?;
        if t.is_dir() {
            walk(root, &path, out)?;
        } else {
            // Not a regular file: never equal (its size cannot match).
            out.insert(path, if t.is_file() { e.metadata()?.len() } else { u64::MAX });
        }
    }
    Ok(())
}

/// True when the files under `root` (empty folders aside) are exactly
/// `want`: the same paths and sizes first (cheap), then the same bytes.
fn matches(root: &Path, want: &Manifest) -> bool {
    let mut have = BTreeMap::new();
    if walk(root, "", &mut have).is_err() || have.len() != want.len() {
        return false;
    }
    if !have.iter().zip(want).all(|((p, s), (q, (t, _)))| p == q && s == t) {
        return false;
    }
    want.iter().all(|(p, (_, md5))| fs::read(root.join(p)).is_ok_and(|c| Md5::digest(&c).as_slice() == md5))
}

fn wait_matches(root: &Path, want: &Manifest, within: Duration) -> R<Duration> {
    let t0 = Instant::now();
    loop {
        if matches(root, want) {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            return Err(format!("{} does not match after {} s", root.display(), within.as_secs()).into());
        }
        std::thread::sleep(POLL);
    }
}

// ----------------------------------------------------------------- the run

fn checkout(cfg: &Cfg, folder: &Path, tag: &str, log: &Path) -> R<Duration> {
    let args: Vec<String> =
        ["-C", &folder.display().to_string(), "checkout", "-q", tag].iter().map(|s| s.to_string()).collect();
    run_timed("git checkout", "git", &args, cfg.limit, log)
}

/// Makes the repository (once), then runs B9's runs on `cfg`'s disk;
/// `scratch` (tmpfs) holds the repository and the rsync daemon's files.
pub(crate) fn run_all(cfg: &Cfg, res: &mut Results, scratch: &Path) {
    let t = Instant::now();
    let repo = match Repo::make(&scratch.join("data").join("b9-repo")) {
        Ok(r) => r,
        Err(e) => {
            note_err(res, format!("B9 run 1: making the repository: {e}"));
            return;
        }
    };
    let described = repo.describe();
    eprintln!("bench: {described} (made in {:.1} s)", t.elapsed().as_secs_f64());
    res.notes.push(described);
    for i in 0..cfg.runs {
        if let Err(e) = run(cfg, res, &repo, scratch, i) {
            note_err(res, format!("B9 run {}: {e}", i + 1));
        }
    }
}

fn run(cfg: &Cfg, res: &mut Results, repo: &Repo, scratch: &Path, i: usize) -> R<()> {
    let phase = format!("B9 run {}", i + 1);
    let dir = crate::run_dir(cfg, "b9", i)?;
    let (fa, fb, ra, rb) = (dir.join("A"), dir.join("B"), dir.join("rsync-A"), dir.join("rsync-B"));
    let gitlog = dir.join("git.out");
    let src = repo.dir.display().to_string();
    let out = (|| -> R<Vec<(f64, f64, f64)>> {
        for a in [&fa, &ra] {
            sys::run("git", &["clone", "-q", "--no-checkout", &src, &a.display().to_string()], 120)?;
            checkout(cfg, a, "v0", &gitlog)?;
            fs::write(a.join(".syncignore"), SYNCIGNORE)?;
        }
        fs::create_dir_all(&fb)?;
        fs::create_dir_all(&rb)?;
        let v0 = repo.tags.get("v0").ok_or("no v0")?;
        let (mut server, s, r) = start_server(cfg, &dir, &[])?;
        let mut cb: Proc = start_client(cfg, &dir, "client-b", (s, r), &fb, false)?;
        // The delete guard counts the deletes of the last minute together:
        // a few checkouts in a row trip it, and it holds them for the user.
        let no_guard = ["--no-delete-guard".to_string()];
        let mut ca: Proc = start_client_with(cfg, &dir, "client-a", (s, r), &fa, false, &no_guard)?;
        wait_ready(res, &phase, &cb);
        wait_ready(res, &phase, &ca);
        let first = wait_matches(&fb, v0, cfg.limit)?;
        eprintln!("{phase}: B's folder at v0 after {:.1} s (first sync, not timed)", first.as_secs_f64());

        let mut rsyncd = Rsyncd::start_at(&scratch.join("rsyncd-b9"), &dir.join("rsync-module"), cfg.limit * 8)?;
        let push = ["--delete", "--exclude=/.git", "--exclude=/.syncignore"];
        rsyncd.push_onto(&ra, true, &push, cfg.limit)?;
        rsyncd.pull(&rb, &["--delete"], cfg.limit)?;
        if !matches(&rb, v0) {
            return Err("rsync's B folder is not at v0 after the first push and pull".into());
        }

        let mut steps = Vec::new();
        for tag in STEPS {
            let want = repo.tags.get(tag).ok_or("no such tag")?;
            let t0 = Instant::now();
            let git_d = checkout(cfg, &fa, tag, &gitlog)?;
            wait_matches(&fb, want, STEP_WITHIN)?;
            let ours = t0.elapsed().as_secs_f64();

            let t1 = Instant::now();
            checkout(cfg, &ra, tag, &gitlog)?;
            rsyncd.push_onto(&ra, true, &push, cfg.limit)?;
            rsyncd.pull(&rb, &["--delete"], cfg.limit)?;
            let theirs = t1.elapsed().as_secs_f64();
            if !matches(&rb, want) {
                return Err(format!("rsync's B folder does not match {tag}").into());
            }
            eprintln!(
                "{phase}: checkout {tag}: dropsync {ours:.2} s (git {:.2} s), rsync {theirs:.2} s",
                git_d.as_secs_f64()
            );
            steps.push((ours, theirs, git_d.as_secs_f64()));
        }
        rsyncd.stop();
        ca.stop();
        cb.stop();
        server.stop();
        Ok(steps)
    })();
    finish_run(res, &phase, &dir);
    let steps = out?;
    let mut ratios = Figure::default();
    for ((ours, theirs, _), [k_ours, k_theirs, k_ratio]) in steps.iter().zip(STEP_KEYS) {
        res.push(k_ours, *ours);
        res.push(k_theirs, *theirs);
        res.push(k_ratio, ours / theirs);
        ratios.push(ours / theirs);
    }
    let ours: f64 = steps.iter().map(|s| s.0).sum();
    let theirs: f64 = steps.iter().map(|s| s.1).sum();
    res.push("b9_dropsync", ours);
    res.push("b9_rsync", theirs);
    res.push("b9_ratio", ours / theirs);
    res.push("b9_step_median", ratios.median().unwrap_or(f64::NAN));
    res.push("b9_git", steps.iter().map(|s| s.2).sum());
    Ok(())
}
