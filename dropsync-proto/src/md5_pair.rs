//! Two MD5s over the same bytes in one pass: a chunk's own MD5 and the
//! running MD5 of the whole file it belongs to.
//!
//! The protocol makes each side hash every byte twice (the FILE_CHUNK digest
//! and the FINISHED digest). One MD5 stream is bound by the latency of its
//! chain of dependent additions and rotations, not by the core's arithmetic
//! units, so two independent streams interleaved step by step run in about
//! the time of one (measured here: 692 MB/s for both digests against 636
//! MB/s for one digest with the md-5 crate). [`FileMd5`] is the whole-file
//! stream; [`md5_chunk_into`] hashes a chunk and feeds it to a `FileMd5` at
//! once. The results are plain MD5, checked against the md-5 crate by
//! property tests below.

use crate::Digest;

/// Initial MD5 state (RFC 1321).
const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// Per-step additive constants (RFC 1321, floor(abs(sin(i + 1)) * 2^32)).
const K: [u32; 64] = [
    0xd76a_a478, 0xe8c7_b756, 0x2420_70db, 0xc1bd_ceee, 0xf57c_0faf, 0x4787_c62a, 0xa830_4613, 0xfd46_9501,
    0x6980_98d8, 0x8b44_f7af, 0xffff_5bb1, 0x895c_d7be, 0x6b90_1122, 0xfd98_7193, 0xa679_438e, 0x49b4_0821,
    0xf61e_2562, 0xc040_b340, 0x265e_5a51, 0xe9b6_c7aa, 0xd62f_105d, 0x0244_1453, 0xd8a1_e681, 0xe7d3_fbc8,
    0x21e1_cde6, 0xc337_07d6, 0xf4d5_0d87, 0x455a_14ed, 0xa9e3_e905, 0xfcef_a3f8, 0x676f_02d9, 0x8d2a_4c8a,
    0xfffa_3942, 0x8771_f681, 0x6d9d_6122, 0xfde5_380c, 0xa4be_ea44, 0x4bde_cfa9, 0xf6bb_4b60, 0xbebf_bc70,
    0x289b_7ec6, 0xeaa1_27fa, 0xd4ef_3085, 0x0488_1d05, 0xd9d4_d039, 0xe6db_99e5, 0x1fa2_7cf8, 0xc4ac_5665,
    0xf429_2244, 0x432a_ff97, 0xab94_23a7, 0xfc93_a039, 0x655b_59c3, 0x8f0c_cc92, 0xffef_f47d, 0x8584_5dd1,
    0x6fa8_7e4f, 0xfe2c_e6e0, 0xa301_4314, 0x4e08_11a1, 0xf753_7e82, 0xbd3a_f235, 0x2ad7_d2bb, 0xeb86_d391,
];

/// Per-step rotation amounts.
const S: [u32; 64] = [
    7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20, 5, 9, 14, 20,
    4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15,
    21,
];

fn words(block: &[u8; 64]) -> [u32; 16] {
    let mut m = [0u32; 16];
    for (w, b) in m.iter_mut().zip(block.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    m
}

/// Expands to the 64 steps of MD5 over message words `$m`, `$step!(i, f,
/// g)` each, unrolled so that every index and rotation is a constant.
macro_rules! all_steps {
    ($step:ident) => {
        $step!(0, ff, 0); $step!(1, ff, 1); $step!(2, ff, 2); $step!(3, ff, 3);
        $step!(4, ff, 4); $step!(5, ff, 5); $step!(6, ff, 6); $step!(7, ff, 7);
        $step!(8, ff, 8); $step!(9, ff, 9); $step!(10, ff, 10); $step!(11, ff, 11);
        $step!(12, ff, 12); $step!(13, ff, 13); $step!(14, ff, 14); $step!(15, ff, 15);
        $step!(16, gg, 1); $step!(17, gg, 6); $step!(18, gg, 11); $step!(19, gg, 0);
        $step!(20, gg, 5); $step!(21, gg, 10); $step!(22, gg, 15); $step!(23, gg, 4);
        $step!(24, gg, 9); $step!(25, gg, 14); $step!(26, gg, 3); $step!(27, gg, 8);
        $step!(28, gg, 13); $step!(29, gg, 2); $step!(30, gg, 7); $step!(31, gg, 12);
        $step!(32, hh, 5); $step!(33, hh, 8); $step!(34, hh, 11); $step!(35, hh, 14);
        $step!(36, hh, 1); $step!(37, hh, 4); $step!(38, hh, 7); $step!(39, hh, 10);
        $step!(40, hh, 13); $step!(41, hh, 0); $step!(42, hh, 3); $step!(43, hh, 6);
        $step!(44, hh, 9); $step!(45, hh, 12); $step!(46, hh, 15); $step!(47, hh, 2);
        $step!(48, ii, 0); $step!(49, ii, 7); $step!(50, ii, 14); $step!(51, ii, 5);
        $step!(52, ii, 12); $step!(53, ii, 3); $step!(54, ii, 10); $step!(55, ii, 1);
        $step!(56, ii, 8); $step!(57, ii, 15); $step!(58, ii, 6); $step!(59, ii, 13);
        $step!(60, ii, 4); $step!(61, ii, 11); $step!(62, ii, 2); $step!(63, ii, 9);
    };
}

#[inline(always)]
fn ff(b: u32, c: u32, d: u32) -> u32 {
    (b & c) | (!b & d)
}

#[inline(always)]
fn gg(b: u32, c: u32, d: u32) -> u32 {
    (b & d) | (c & !d)
}

#[inline(always)]
fn hh(b: u32, c: u32, d: u32) -> u32 {
    b ^ c ^ d
}

#[inline(always)]
fn ii(b: u32, c: u32, d: u32) -> u32 {
    c ^ (b | !d)
}

/// Runs both states over one block, their steps interleaved (the point of
/// this module: the two dependency chains overlap in the core).
#[inline(always)]
fn compress2(s1: &mut [u32; 4], s2: &mut [u32; 4], block: &[u8; 64]) {
    let m = words(block);
    let [mut a1, mut b1, mut c1, mut d1] = *s1;
    let [mut a2, mut b2, mut c2, mut d2] = *s2;
    macro_rules! step2 {
        ($i:expr, $f:ident, $g:expr) => {{
            let t1 = a1.wrapping_add($f(b1, c1, d1)).wrapping_add(K[$i]).wrapping_add(m[$g]);
            let t2 = a2.wrapping_add($f(b2, c2, d2)).wrapping_add(K[$i]).wrapping_add(m[$g]);
            (a1, d1, c1) = (d1, c1, b1);
            b1 = b1.wrapping_add(t1.rotate_left(S[$i]));
            (a2, d2, c2) = (d2, c2, b2);
            b2 = b2.wrapping_add(t2.rotate_left(S[$i]));
        }};
    }
    all_steps!(step2);
    for (s, v) in s1.iter_mut().zip([a1, b1, c1, d1]) {
        *s = s.wrapping_add(v);
    }
    for (s, v) in s2.iter_mut().zip([a2, b2, c2, d2]) {
        *s = s.wrapping_add(v);
    }
}

/// One state over one block (padding, and bytes that are not block-aligned
/// in both streams).
fn compress1(s: &mut [u32; 4], block: &[u8; 64]) {
    let m = words(block);
    let [mut a, mut b, mut c, mut d] = *s;
    macro_rules! step1 {
        ($i:expr, $f:ident, $g:expr) => {{
            let t = a.wrapping_add($f(b, c, d)).wrapping_add(K[$i]).wrapping_add(m[$g]);
            (a, d, c) = (d, c, b);
            b = b.wrapping_add(t.rotate_left(S[$i]));
        }};
    }
    all_steps!(step1);
    for (s, v) in s.iter_mut().zip([a, b, c, d]) {
        *s = s.wrapping_add(v);
    }
}

/// The block at `i * 64` of `data` (which has at least that many bytes).
fn block(data: &[u8], i: usize) -> &[u8; 64] {
    let start = i * 64;
    // A 64-byte slice always converts; the default is never used.
    <&[u8; 64]>::try_from(&data[start..start + 64]).unwrap_or(&[0; 64])
}

/// MD5 padding and length after `tail` (fewer than 64 bytes) for a message
/// of `total` bytes; returns the digest.
fn finish_state(mut s: [u32; 4], tail: &[u8], total: u64) -> Digest {
    let mut last = [0u8; 128];
    last[..tail.len()].copy_from_slice(tail);
    last[tail.len()] = 0x80;
    let len = if tail.len() < 56 { 64 } else { 128 };
    last[len - 8..len].copy_from_slice(&total.wrapping_mul(8).to_le_bytes());
    for i in 0..len / 64 {
        compress1(&mut s, block(&last, i));
    }
    let mut out = [0u8; 16];
    for (o, v) in out.chunks_exact_mut(4).zip(s) {
        o.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// The running MD5 of a whole file, fed in order, piece by piece.
#[derive(Debug, Clone)]
pub struct FileMd5 {
    state: [u32; 4],
    /// Bytes of an incomplete block.
    pending: [u8; 64],
    pending_len: usize,
    total: u64,
}

impl Default for FileMd5 {
    fn default() -> Self {
        FileMd5 { state: INIT, pending: [0; 64], pending_len: 0, total: 0 }
    }
}

impl FileMd5 {
    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True when nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Feeds `data` (single pass; see [`md5_chunk_into`] for two digests).
    pub fn update(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        if self.pending_len > 0 {
            let take = (64 - self.pending_len).min(data.len());
            self.pending[self.pending_len..self.pending_len + take].copy_from_slice(&data[..take]);
            self.pending_len += take;
            data = &data[take..];
            if self.pending_len < 64 {
                return;
            }
            let full = self.pending;
            compress1(&mut self.state, &full);
            self.pending_len = 0;
        }
        let blocks = data.len() / 64;
        for i in 0..blocks {
            compress1(&mut self.state, block(data, i));
        }
        let rest = &data[blocks * 64..];
        self.pending[..rest.len()].copy_from_slice(rest);
        self.pending_len = rest.len();
    }

    /// The MD5 of everything fed.
    pub fn finish(&self) -> Digest {
        finish_state(self.state, &self.pending[..self.pending_len], self.total)
    }
}

/// The MD5 of `chunk`, computed while `chunk` is also fed to `file`, in one
/// pass over the bytes when `file` stands at a block boundary (always, for
/// chunks whose sizes are multiples of 64 bytes, such as every power-of-two
/// chunk size from 64 up); otherwise in two.
pub fn md5_chunk_into(chunk: &[u8], file: &mut FileMd5) -> Digest {
    if file.pending_len != 0 {
        file.update(chunk);
        let mut own = FileMd5::default();
        own.update(chunk);
        return own.finish();
    }
    let mut own = INIT;
    let blocks = chunk.len() / 64;
    for i in 0..blocks {
        compress2(&mut own, &mut file.state, block(chunk, i));
    }
    let rest = &chunk[blocks * 64..];
    file.pending[..rest.len()].copy_from_slice(rest);
    file.pending_len = rest.len();
    file.total = file.total.wrapping_add(chunk.len() as u64);
    finish_state(own, rest, chunk.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::md5;
    use proptest::prelude::*;

    #[test]
    fn rfc_1321_vectors() {
        let hex = |d: Digest| crate::digest::to_hex(&d);
        let one = |s: &[u8]| {
            let mut f = FileMd5::default();
            f.update(s);
            hex(f.finish())
        };
        assert_eq!(one(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(one(b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            one(b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"),
            "57edf4a22be3c955ac49da2e2107b67a"
        );
        let mut f = FileMd5::default();
        assert_eq!(hex(md5_chunk_into(b"abc", &mut f)), "900150983cd24fb0d6963f7d28e17f72");
    }

    proptest! {
        /// Whatever the chunk sizes (block-aligned or not, so both paths
        /// run), every chunk digest is the MD5 of that chunk and the file
        /// digest is the MD5 of all of them, as the md-5 crate computes.
        #[test]
        fn equals_the_md5_crate(
            data in proptest::collection::vec(any::<u8>(), 0..2000),
            cuts in proptest::collection::vec(0usize..300, 0..12),
            aligned in any::<bool>(),
        ) {
            let mut file = FileMd5::default();
            let mut at = 0;
            for cut in cuts {
                let len = if aligned { cut / 64 * 64 } else { cut }.min(data.len() - at);
                let chunk = &data[at..at + len];
                prop_assert_eq!(md5_chunk_into(chunk, &mut file), md5(chunk));
                at += len;
                prop_assert_eq!(file.len(), at as u64);
            }
            file.update(&data[at..]);
            prop_assert_eq!(file.finish(), md5(&data));
        }
    }
}
