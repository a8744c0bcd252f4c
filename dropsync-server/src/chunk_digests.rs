//! The chunk MD5s of contents uploaded lately, by content (their strong
//! digest, never their MD5), so that delivering a content to the other
//! clients does not hash it again: the upload's FILE_CHUNK digests were
//! checked against its bytes as they arrived, and a delivery in chunks of
//! the same size sends the same digests (issue 19, B2: the sender hashed
//! every chunk again, 31 % of its CPU, and was the slower end of the
//! delivery). A content uploaded in chunks of another size, or not kept
//! here (restarted, or pushed out by newer ones), is hashed as before.
//!
//! A blob spoilt on the disk since goes out with the digests of what was
//! uploaded: the receiver finds the chunk that differs, where before it
//! found the whole-file digest that differs. Either way it keeps nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};

use dropsync_proto::metadata::Strong;
use dropsync_proto::Digest;

/// At most this many digests are kept in all (16 MiB of them, and a few
/// dozen bytes per content beside): the chunks of the last terabyte
/// uploaded, at 1 MiB chunks. A content of one chunk is not kept: its
/// chunk's MD5 is the file's, which the delivery knows anyway.
const MAX_KEPT: usize = 1 << 20;

/// The chunk MD5s of one content, cut in chunks of one size.
#[derive(Debug, PartialEq, Eq)]
pub struct Digests {
    chunk: u32,
    size: u64,
    list: Vec<Digest>,
}

impl Digests {
    /// The MD5 of the `len` bytes at `offset`, when they are one of the
    /// chunks listed.
    pub fn of(&self, offset: u64, len: u32) -> Option<Digest> {
        let chunk = u64::from(self.chunk);
        if chunk == 0 || !offset.is_multiple_of(chunk) || offset >= self.size {
            return None;
        }
        if u64::from(len) != chunk.min(self.size - offset) {
            return None;
        }
        self.list.get(usize::try_from(offset / chunk).ok()?).copied()
    }
}

/// An upload's chunks as they are checked: their digests, while they all
/// have the size of the first (the last may be shorter).
#[derive(Debug, Default)]
pub struct ChunkList {
    chunk: u32,
    list: Vec<Digest>,
    /// A chunk of another size came, or a last one was followed by more,
    /// or there were too many: nothing is kept.
    spoilt: bool,
    /// The size of a chunk shorter than the first: it must be the last.
    short: Option<u32>,
}

impl ChunkList {
    /// A chunk of `len` bytes with MD5 `digest` checked out.
    pub fn checked(&mut self, digest: &Digest, len: usize) {
        if self.spoilt {
            return;
        }
        let Ok(len) = u32::try_from(len) else { return self.spoil() };
        if self.short.is_some() || self.list.len() >= MAX_KEPT || len == 0 {
            return self.spoil();
        }
        if self.list.is_empty() {
            self.chunk = len;
        } else if len > self.chunk {
            return self.spoil();
        } else if len < self.chunk {
            self.short = Some(len);
        }
        self.list.push(*digest);
    }

    fn spoil(&mut self) {
        self.spoilt = true;
        self.list = Vec::new();
    }

    /// The digests of a whole file of `size` bytes, when its chunks were
    /// all of one size but the last.
    pub fn finish(self, size: u64) -> Option<Digests> {
        if self.spoilt || self.list.len() < 2 {
            return None;
        }
        let full = u64::from(self.chunk) * (self.list.len() as u64 - 1);
        let last = u64::from(self.short.unwrap_or(self.chunk));
        (full + last == size).then_some(Digests { chunk: self.chunk, size, list: self.list })
    }
}

/// The digests kept, oldest out first.
#[derive(Debug, Default)]
pub struct ChunkDigests {
    kept: Mutex<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    by_content: HashMap<Strong, Arc<Digests>>,
    order: VecDeque<Strong>,
    count: usize,
}

impl ChunkDigests {
    /// Keeps the chunk digests of `content`.
    pub fn keep(&self, content: Strong, digests: Digests) {
        let mut k = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if k.by_content.contains_key(&content) {
            return;
        }
        k.count += digests.list.len();
        k.by_content.insert(content, Arc::new(digests));
        k.order.push_back(content);
        while k.count > MAX_KEPT {
            let Some(old) = k.order.pop_front() else { break };
            if let Some(d) = k.by_content.remove(&old) {
                k.count -= d.list.len();
            }
        }
    }

    /// The chunk digests kept of `content`.
    pub fn get(&self, content: &Strong) -> Option<Arc<Digests>> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).by_content.get(content).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dropsync_proto::md5;
    use proptest::prelude::*;

    fn list_of(data: &[u8], cuts: &[usize]) -> ChunkList {
        let mut l = ChunkList::default();
        let mut at = 0;
        for &n in cuts {
            l.checked(&md5(&data[at..at + n]), n);
            at += n;
        }
        l
    }

    proptest! {
        /// Kept from an upload in chunks of one size, the digests are those
        /// a sender in chunks of that size would compute, and none other.
        #[test]
        fn the_digests_kept_are_the_chunks_a_sender_of_that_size_sends(
            data in proptest::collection::vec(any::<u8>(), 2..600),
            chunk in 1u32..100,
            other in 1u32..100,
        ) {
            let cuts: Vec<usize> = data.chunks(chunk as usize).map(<[u8]>::len).collect();
            let kept = list_of(&data, &cuts).finish(data.len() as u64);
            if cuts.len() < 2 {
                prop_assert!(kept.is_none(), "one chunk is not kept");
                return Ok(());
            }
            let d = kept.expect("uniform chunks are kept");
            let size = data.len() as u64;
            for try_chunk in [chunk, other] {
                let mut offset = 0u64;
                while offset < size {
                    let len = u64::from(try_chunk).min(size - offset) as u32;
                    let want = md5(&data[offset as usize..(offset + u64::from(len)) as usize]);
                    if let Some(got) = d.of(offset, len) {
                        prop_assert_eq!(got, want);
                    } else {
                        prop_assert!(try_chunk != chunk, "chunk at {} of the upload's size not found", offset);
                    }
                    offset += u64::from(len);
                }
            }
        }
    }

    #[test]
    fn uneven_chunks_keep_nothing() {
        let data = [7u8; 30];
        assert!(list_of(&data, &[10, 5, 15]).finish(30).is_none(), "a short chunk before the last");
        assert!(list_of(&data, &[10, 20]).finish(30).is_none(), "a longer one");
        assert!(list_of(&data, &[10, 10]).finish(30).is_none(), "fewer bytes than the file");
        assert!(list_of(&data, &[10, 10, 10]).finish(30).is_some());
        assert!(ChunkList::default().finish(0).is_none(), "an empty file has no chunk");
        assert!(list_of(&data, &[30]).finish(30).is_none(), "one chunk: its MD5 is the file's");
    }

    #[test]
    fn the_oldest_go_first_past_the_limit() {
        let kept = ChunkDigests::default();
        let big = |n: usize| Digests { chunk: 1, size: n as u64, list: vec![[0; 16]; n] };
        kept.keep([1; 32], big(MAX_KEPT / 2));
        kept.keep([2; 32], big(MAX_KEPT / 2));
        assert!(kept.get(&[1; 32]).is_some() && kept.get(&[2; 32]).is_some());
        kept.keep([3; 32], big(1));
        assert!(kept.get(&[1; 32]).is_none(), "the oldest went");
        assert!(kept.get(&[2; 32]).is_some() && kept.get(&[3; 32]).is_some());
    }
}
