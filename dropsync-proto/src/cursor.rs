//! A bounds-checked reader over a byte slice: every read returns `None` when
//! the input is too short, which the parsers turn into "need more bytes".

use byteorder::{ByteOrder, LittleEndian};

pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    pub(crate) fn u16(&mut self) -> Option<u16> {
        self.take(2).map(LittleEndian::read_u16)
    }

    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4).map(LittleEndian::read_u32)
    }

    pub(crate) fn digest(&mut self) -> Option<[u8; 16]> {
        let mut out = [0u8; 16];
        out.copy_from_slice(self.take(16)?);
        Some(out)
    }
}
