//! Benchmark data: incompressible pseudo-random bytes (splitmix64, fast
//! enough that making 1 GiB costs well under a second of CPU), and trees
//! linked or copied into each run's folder.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::Path;

use crate::R;

/// splitmix64: small, fast, and good enough that nothing compresses it.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }

    /// `n` random bytes.
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// Writes `size` random bytes to `path`.
pub fn random_file(path: &Path, size: u64, rng: &mut Rng) -> R<()> {
    let mut f = File::create(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(())
}

/// `dirs` folders of `per_dir` files of `size` random bytes each.
pub fn small_tree(root: &Path, dirs: usize, per_dir: usize, size: usize, rng: &mut Rng) -> R<()> {
    let mut buf = vec![0u8; size];
    for d in 0..dirs {
        let dir = root.join(format!("d{d:03}"));
        fs::create_dir_all(&dir)?;
        for i in 0..per_dir {
            rng.fill(&mut buf);
            fs::write(dir.join(format!("f{i:03}.bin")), &buf)?;
        }
    }
    Ok(())
}

/// Recreates the tree at `from` under `to` with hard links (the clients
/// only read what they upload), copying where linking fails.
pub fn link_tree(from: &Path, to: &Path) -> R<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            link_tree(&src, &dst)?;
        } else if fs::hard_link(&src, &dst).is_err() {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// True if the two files have the same bytes.
pub fn same_content(a: &Path, b: &Path) -> R<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = read_full(&mut fa, &mut ba)?;
        let m = read_full(&mut fb, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> R<usize> {
    let mut got = 0;
    while got < buf.len() {
        let n = f.read(&mut buf[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

/// Regular files of exactly `size` bytes under `root` (a server's storage
/// after an upload: each distinct content is stored once).
pub fn count_files_of_size(root: &Path, size: u64) -> usize {
    let Ok(rd) = fs::read_dir(root) else { return 0 };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files_of_size(&e.path(), size),
            Ok(t) if t.is_file() => usize::from(e.metadata().is_ok_and(|m| m.len() == size)),
            _ => 0,
        })
        .sum()
}
