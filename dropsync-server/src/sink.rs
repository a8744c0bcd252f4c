//! Where an upload's accepted chunks go: the temp file.
//!
//! For a large upload the writes run on a thread of their own, fed through
//! a short queue: the receiving thread replies to a chunk as soon as that
//! chunk's MD5 checks out (the core receiver computes it with the whole-file
//! MD5 in one pass), and the disk write of chunk N overlaps with the client
//! preparing and sending chunk N+1. Small uploads stay inline: a thread is
//! not worth it for one chunk.

use std::io;
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::thread::JoinHandle;


use crate::blobs::TempBlob;
use crate::spawn_named;

/// Chunks of at least this size get a sink thread.
pub const THREADED_MIN_CHUNK: u32 = 256 * 1024;

/// Chunks queued between the receiving thread and the sink thread: enough
/// to overlap, few enough to bound memory (this many chunk buffers).
const QUEUE: usize = 2;

/// An upload's destination.
pub enum Sink {
    /// Written on the receiving thread.
    Inline(TempBlob),
    /// Written on a sink thread.
    Threaded {
        /// Full buffers to the sink thread.
        tx: SyncSender<Vec<u8>>,
        /// Empty buffers back, for reuse (no allocation per chunk).
        spare: Receiver<Vec<u8>>,
        /// The sink thread, which hands the temp file back.
        thread: JoinHandle<io::Result<TempBlob>>,
    },
    /// The sink thread could not start; the upload fails at its first
    /// write (answered 0x0080) rather than at random later.
    Failed(io::Error),
}

impl Sink {
    /// A sink for an upload whose first chunk is `first_len` bytes.
    pub fn open(temp: TempBlob, first_len: u32) -> Self {
        if first_len < THREADED_MIN_CHUNK {
            return Sink::Inline(temp);
        }
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (spare_tx, spare) = mpsc::sync_channel::<Vec<u8>>(QUEUE + 1);
        // The temp file moves into the thread (and is removed with it if the
        // thread cannot start).
        let spawned = spawn_named("sink", move || {
            let mut temp = temp;
            for buf in rx {
                temp.append(&buf)?;
                let _ = spare_tx.try_send(buf);
            }
            Ok(temp)
        });
        match spawned {
            Ok(thread) => Sink::Threaded { tx, spare, thread },
            Err(e) => {
                log::error!("cannot start a sink thread: {e}");
                Sink::Failed(e)
            }
        }
    }

    /// Appends an accepted chunk.
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        match self {
            Sink::Inline(temp) => temp.append(payload),
            Sink::Threaded { tx, spare, .. } => {
                let mut buf = spare.try_recv().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(payload);
                tx.send(buf).map_err(|_| io::Error::other("the sink thread stopped (disk error)"))
            }
            Sink::Failed(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }
    }

    /// A buffer to read the next chunk of a threaded upload into (one the
    /// sink thread is done with, when there is one; its length is whatever
    /// it was, so resizing it to the next chunk writes nothing). `None` for
    /// an inline sink, which is fed from the reader's own buffer.
    pub fn buffer(&mut self) -> Option<Vec<u8>> {
        match self {
            Sink::Threaded { spare, .. } => Some(spare.try_recv().unwrap_or_default()),
            Sink::Inline(_) | Sink::Failed(_) => None,
        }
    }

    /// Appends an accepted chunk read into a buffer from
    /// [`buffer`](Self::buffer), handing the buffer itself to the sink
    /// thread (no copy).
    pub fn append_owned(&mut self, buf: Vec<u8>) -> io::Result<()> {
        match self {
            Sink::Threaded { tx, .. } => {
                tx.send(buf).map_err(|_| io::Error::other("the sink thread stopped (disk error)"))
            }
            _ => self.append(&buf),
        }
    }

    /// Waits for everything to be written; returns the temp file.
    pub fn finish(self) -> io::Result<TempBlob> {
        match self {
            Sink::Inline(temp) => Ok(temp),
            Sink::Threaded { tx, thread, .. } => {
                drop(tx);
                thread.join().map_err(|_| io::Error::other("the sink thread panicked"))?
            }
            Sink::Failed(e) => Err(e),
        }
    }
}
