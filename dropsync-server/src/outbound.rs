//! Server → client transfers on a session's receive connection: the
//! META-DATA first, then one queued path at a time, each sent as its state
//! at dequeue time (PROTOCOL.md section 6). Also the thread that reads the
//! client's replies on that connection.

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{RecvTimeoutError, Sender as ReplyTx};
use std::sync::{Arc, PoisonError};

use dropsync_core::meta_server::Catalog;
use dropsync_core::sender::{Outcome, Recorded, ReplyOutcome, SendStep, Sender};
use dropsync_core::wire::{is_timeout_error, FrameReader, Msg};
use dropsync_proto::metadata::EntryState;
use dropsync_proto::name::METADATA_TRANSFER_NAME;
use dropsync_proto::{encode_chunk_header, Frame, StatusCode, ZERO_DIGEST};

use crate::server::Server;
use crate::session::{MetaState, Session};

/// The session cannot be served any more (its connection is gone).
#[derive(Debug)]
pub struct Gone(pub String);

/// Something a transfer reads its bytes from.
trait Source {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

impl Source for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, offset)
    }
}

impl Source for &[u8] {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let start = (offset as usize).min(self.len());
        let n = buf.len().min(self.len() - start);
        buf[..n].copy_from_slice(&self[start..start + n]);
        Ok(n)
    }
}

fn read_full(src: &dyn Source, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read_at(&mut buf[got..], offset + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Serves one job for `session`: the META-DATA if it has not been sent,
/// else one queued path. Returns whether more work is queued.
pub fn serve_next(server: &Server, session: &Session) -> Result<bool, Gone> {
    match send_pending_metadata(server, session)? {
        MetaProgress::NotReady => return Ok(false),
        MetaProgress::JustSent => return Ok(!session.queue.is_empty()),
        MetaProgress::AlreadySent => {}
    }
    if let Some(path) = session.queue.try_pop() {
        serve_path(server, session, &path)?;
    }
    Ok(!session.queue.is_empty())
}

/// Where the META-DATA transfer stands after [`send_pending_metadata`].
#[derive(Debug, PartialEq, Eq)]
pub enum MetaProgress {
    /// The snapshot is not taken yet: send nothing.
    NotReady,
    /// It was sent just now.
    JustSent,
    /// It went out earlier; the queue may be served.
    AlreadySent,
}

/// Sends the META-DATA if it is ready and not sent yet (section 1: the
/// first transfer of every session).
pub fn send_pending_metadata(server: &Server, session: &Session) -> Result<MetaProgress, Gone> {
    let text = {
        let mut state = session.metadata.lock().unwrap_or_else(PoisonError::into_inner);
        match std::mem::replace(&mut *state, MetaState::Sent) {
            MetaState::Pending => {
                *state = MetaState::Pending;
                return Ok(MetaProgress::NotReady);
            }
            MetaState::Ready(text) => text,
            MetaState::Sent => return Ok(MetaProgress::AlreadySent),
        }
    };
    let outcome = send_transfer(server, session, METADATA_TRANSFER_NAME, &text.as_bytes(), text.len() as u64)?;
    log::debug!("{}: META-DATA ({} bytes) sent: {outcome:?}", session.who(), text.len());
    Ok(MetaProgress::JustSent)
}

/// Sends `path` as it is now: its committed content, or a DELETE for a
/// tombstone; skipped when the client already has that version.
pub fn serve_path(server: &Server, session: &Session, path: &str) -> Result<(), Gone> {
    session.set_outgoing(Some(path));
    let result = serve_path_now(server, session, path);
    session.set_outgoing(None);
    result
}

fn serve_path_now(server: &Server, session: &Session, path: &str) -> Result<(), Gone> {
    let lib = &server.library;
    let requested = session.requested.lock().unwrap_or_else(PoisonError::into_inner).remove(path);
    // A blob can vanish between reading the entry and opening it if the
    // path is overwritten meanwhile: then the newer entry is what to send.
    for _ in 0..3 {
        let Some(entry) = lib.catalog.get(path) else { return Ok(()) };
        let has_it = session.seen.lock().unwrap_or_else(PoisonError::into_inner).has_received(path, entry.version);
        if has_it && !requested {
            log::debug!("{}: skip {path:?} version {}: already has it", session.who(), entry.version);
            return Ok(());
        }
        let outcome = if entry.state == EntryState::Deleted {
            let reply = exchange(server, session, &Frame::Delete { digest: ZERO_DIGEST, name: path })?;
            match reply {
                StatusCode::OK | StatusCode::NO_FILE => Outcome::Committed,
                other => Outcome::Refused(other),
            }
        } else {
            let file = match lib.open_content(&entry) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    log::error!("cannot open content of {path:?}: {e}");
                    return Ok(());
                }
            };
            send_transfer(server, session, path, &file, entry.size)?
        };
        match outcome {
            Outcome::Committed => {
                session.seen.lock().unwrap_or_else(PoisonError::into_inner).saw(path, entry.version);
                log::debug!("{}: delivered {path:?} version {}", session.who(), entry.version);
            }
            // 0x0080 (and any other refusal): give up on this path for
            // this client (ASSIGNMENT.md, section 6).
            other => log::info!("{}: gave up sending {path:?}: {other:?}", session.who()),
        }
        return Ok(());
    }
    Ok(())
}

/// Sends one message and waits for its reply.
fn exchange(server: &Server, session: &Session, frame: &Frame<'_>) -> Result<StatusCode, Gone> {
    session.write_out(&frame.to_vec(), server.now_ms()).map_err(|e| Gone(format!("receive connection: {e}")))?;
    wait_reply(server, session)
}

fn wait_reply(server: &Server, session: &Session) -> Result<StatusCode, Gone> {
    let replies = session.replies.lock().unwrap_or_else(PoisonError::into_inner);
    match replies.recv_timeout(server.config.dead_peer) {
        Ok(code) => Ok(code),
        Err(RecvTimeoutError::Timeout) => Err(Gone(format!("no reply within {:?}", server.config.dead_peer))),
        Err(RecvTimeoutError::Disconnected) => Err(Gone("receive connection closed".into())),
    }
}

/// One whole transfer, stop-and-wait per chunk, driven by the core Sender.
/// On shutdown the transfer is ABORTed (section 9).
fn send_transfer(server: &Server, session: &Session, name: &str, src: &dyn Source, size: u64) -> Result<Outcome, Gone> {
    server.active_transfers.fetch_add(1, Ordering::SeqCst);
    let result = drive_sender(server, session, name, src, size);
    server.active_transfers.fetch_sub(1, Ordering::SeqCst);
    result
}

fn drive_sender(server: &Server, session: &Session, name: &str, src: &dyn Source, size: u64) -> Result<Outcome, Gone> {
    let mut sender = Sender::new(size, server.config.chunk_size);
    let mut buf = Vec::new();
    let mut frame = Vec::new();
    loop {
        if server.is_shutting_down() {
            if let Some(outcome) = sender.abort() {
                return Ok(outcome);
            }
        }
        let Some(step) = sender.poll_send() else {
            return Ok(sender.outcome().unwrap_or(Outcome::Aborted));
        };
        frame.clear();
        match step {
            SendStep::Chunk { offset, len } => {
                buf.resize(len as usize, 0);
                let got = read_full(src, &mut buf, offset).unwrap_or(0);
                buf.truncate(got);
                match sender.record_chunk(&buf) {
                    Recorded::Send { digest } => {
                        encode_chunk_header(&digest, name, len, &mut frame);
                        frame.extend_from_slice(&buf);
                    }
                    _ => {
                        log::error!("{name:?}: content changed under a sender");
                        if let Some(outcome) = sender.abort() {
                            return Ok(outcome);
                        }
                        continue;
                    }
                }
            }
            SendStep::Finished { digest } => Frame::Finished { digest, name }.encode(&mut frame),
            SendStep::Abort => Frame::abort(name).encode(&mut frame),
        }
        session.write_out(&frame, server.now_ms()).map_err(|e| Gone(format!("receive connection: {e}")))?;
        let reply = wait_reply(server, session)?;
        match sender.handle_reply(reply) {
            Ok(ReplyOutcome::Continue) => {}
            Ok(ReplyOutcome::Over(outcome)) => return Ok(outcome),
            Err(e) => return Err(Gone(e.to_string())),
        }
    }
}

/// Reads the receive connection: STATUS replies go to the sending side,
/// keep-alives are dropped; sends keep-alives when idle and ends the session
/// when the client falls silent (section 9).
pub fn read_replies(server: &Arc<Server>, session: &Arc<Session>, mut reader: FrameReader<TcpStream>, tx: ReplyTx<StatusCode>) {
    let mut last_heard = server.now_ms();
    let mut last_total = 0;
    let why = loop {
        if session.is_closed() {
            break "session closed".to_string();
        }
        match reader.read_msg() {
            Ok(Some(Msg::Status(StatusCode::KEEP_ALIVE))) => last_heard = server.now_ms(),
            Ok(Some(Msg::Status(code))) => {
                last_heard = server.now_ms();
                if tx.send(code).is_err() {
                    break "sender gone".into();
                }
            }
            Ok(Some(other)) => break format!("unexpected message on the receive connection: {other:?}"),
            Ok(None) => break "client closed the receive connection".into(),
            Err(e) if is_timeout_error(&e) => {
                let now = server.now_ms();
                if reader.total_read() != last_total {
                    last_total = reader.total_read();
                    last_heard = now;
                }
                if now.saturating_sub(last_heard) > server.config.dead_peer.as_millis() as u64 {
                    break format!("nothing received for {:?}", server.config.dead_peer);
                }
                let idle = now.saturating_sub(session.out_last_sent.load(Ordering::Relaxed));
                if idle >= server.config.keepalive.as_millis() as u64 {
                    // Holding the writer lock, so it never lands inside a transfer's message.
                    if session.write_out(&Frame::Status(StatusCode::KEEP_ALIVE).to_vec(), now).is_err() {
                        break "receive connection write failed".into();
                    }
                }
            }
            Err(e) => break format!("receive connection: {e}"),
        }
    };
    drop(tx);
    server.end_session(session, &why);
}
