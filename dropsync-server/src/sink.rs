//! Where an upload's accepted chunks go: the temp file.
//!
//! For a large upload the writes run on a thread of their own, fed through
//! a short queue: the receiving thread replies to a chunk as soon as that
//! chunk's MD5 checks out (the core receiver computes it with the whole-file
//! MD5 in one pass), and the disk write of chunk N overlaps with the client
//! preparing and sending chunk N+1. Small uploads stay inline: a thread is
//! not worth it for one chunk.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::blobs::TempBlob;
use crate::spawn_named;
use crate::streams::Stream;

/// Chunks of at least this size get a sink thread.
pub const THREADED_MIN_CHUNK: u32 = 256 * 1024;

/// Chunks queued between the receiving thread and the sink thread: enough
/// to overlap, few enough to bound memory (this many chunk buffers).
const QUEUE: usize = 2;

/// Most sink threads one connection runs at once (a client sends at most
/// `--parallel 8` large files at a time by default). Uploads beyond are
/// written inline: a peer that opens hundreds of large transfers gets no
/// more threads or chunk buffers than this (section 9's limits).
pub const MAX_THREADS_PER_CONNECTION: usize = 8;

/// The sink threads of one connection: a count shared with each thread,
/// which gives its place back when it ends.
#[derive(Debug, Clone, Default)]
pub struct SinkThreads(Arc<AtomicUsize>);

/// One place among a connection's sink threads, held by the thread.
struct Place(Arc<AtomicUsize>);

impl SinkThreads {
    fn take(&self) -> Option<Place> {
        if self.0.fetch_add(1, Ordering::SeqCst) < MAX_THREADS_PER_CONNECTION {
            Some(Place(self.0.clone()))
        } else {
            self.0.fetch_sub(1, Ordering::SeqCst);
            None
        }
    }

    /// Sink threads running now.
    #[cfg(test)]
    fn running(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

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
    /// A sink for an upload whose first chunk is `first_len` bytes, on a
    /// thread of its own if it is large and the connection has a place
    /// among its `threads`. The thread tells `stream` what it wrote (an
    /// inline sink is never streamed).
    pub fn open(temp: TempBlob, first_len: u32, threads: &SinkThreads, stream: Option<Arc<Stream>>) -> Self {
        if first_len < THREADED_MIN_CHUNK {
            return Sink::Inline(temp);
        }
        let Some(place) = threads.take() else {
            return Sink::Inline(temp);
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (spare_tx, spare) = mpsc::sync_channel::<Vec<u8>>(QUEUE + 1);
        // The temp file moves into the thread (and is removed with it if the
        // thread cannot start).
        let spawned = spawn_named("sink", move || {
            let _place = place;
            let mut temp = temp;
            for buf in rx {
                temp.append(&buf)?;
                if let Some(s) = &stream {
                    s.wrote(buf.len());
                }
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

    /// True when a thread of its own writes it.
    pub fn is_threaded(&self) -> bool {
        matches!(self, Sink::Threaded { .. })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::BlobStore;

    #[test]
    fn a_connection_gets_at_most_its_share_of_sink_threads() {
        let root = std::env::temp_dir().join(format!("dropsync-sink-{}", std::process::id()));
        let store = BlobStore::open(&root).unwrap();
        let threads = SinkThreads::default();
        let sinks: Vec<Sink> = (0..MAX_THREADS_PER_CONNECTION + 3)
            .map(|_| Sink::open(store.temp().unwrap(), THREADED_MIN_CHUNK, &threads, None))
            .collect();
        let threaded = sinks.iter().filter(|s| matches!(s, Sink::Threaded { .. })).count();
        assert_eq!(threaded, MAX_THREADS_PER_CONNECTION);
        assert_eq!(threads.running(), MAX_THREADS_PER_CONNECTION);
        // Each finished sink gives its place back.
        for sink in sinks {
            let mut sink = sink;
            sink.append(b"data").unwrap();
            drop(sink.finish().unwrap());
        }
        assert_eq!(threads.running(), 0);
        assert!(matches!(Sink::open(store.temp().unwrap(), THREADED_MIN_CHUNK, &threads, None), Sink::Threaded { .. }));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
