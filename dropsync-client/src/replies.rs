//! The reply thread: reads the send connection, where only STATUS replies
//! (and keep-alives) arrive, and drives the send side with them.
//!
//! Each reply goes straight into the mux and whatever it unblocks (the
//! next chunk, an ABORT) is sent from here, and an operation that ended is
//! recorded in the shared state before anything else is read. This matters
//! for PROTOCOL.md section 7: an incoming transfer of a path is refused
//! only "until the reply to its FINISHED"; recording that reply here, not
//! whenever the control thread gets to it, keeps a newer version that the
//! server sends right after our upload from being refused.

use std::io;
use std::net::TcpStream;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use dropsync_io::wire::{is_timeout_error, FrameReader, Msg};
use dropsync_proto::StatusCode;

use crate::events::{Event, SessionEvent};
use crate::outgoing::{settle, SendSide};
use crate::state::Ctx;

/// Length of a STATUS frame: type u16, code u16.
const STATUS_LEN: usize = 4;

/// Starts the reply thread of session `session`. It reports each ended
/// operation, and the end of the connection (or a server gone by the send
/// connection's clocks, `Outgoing::check_link`), then ends with the
/// connection.
pub fn spawn(
    mut rx: FrameReader<TcpStream>,
    out: SendSide,
    ctx: Arc<Ctx>,
    events: mpsc::Sender<Event>,
    session: u64,
) -> io::Result<JoinHandle<()>> {
    let post = move |what| events.send(Event::Session { session, what }).is_ok();
    thread::Builder::new().name(format!("replies-{session}")).spawn(move || {
        let mut last_total = 0;
        let reason = loop {
            let code = match rx.read_msg() {
                Ok(Some(Msg::Status(code))) => code,
                Ok(Some(other)) => break format!("server sent {other:?} on the send connection (only STATUS is expected)"),
                Ok(None) => break "server closed the send connection".to_owned(),
                Err(e) if is_timeout_error(&e) => {
                    // Any byte counts: a reply may be arriving slowly.
                    let received = std::mem::replace(&mut last_total, rx.total_read()) != rx.total_read();
                    if let Some(gone) = out.lock().check_link(Instant::now(), received) {
                        break format!("send connection: {gone}");
                    }
                    continue;
                }
                Err(e) => break format!("send connection: {e}"),
            };
            last_total = rx.total_read();
            // Every reply already received is fed in before anything is
            // sent, so what they unblock goes out together (one write for
            // many small files). A STATUS is 4 bytes: with that many
            // buffered, the next message is read without blocking.
            let mut codes = vec![code];
            let mut broken = None;
            while rx.buffered() >= STATUS_LEN {
                match rx.read_msg() {
                    Ok(Some(Msg::Status(code))) => codes.push(code),
                    Ok(Some(other)) => {
                        broken = Some(format!("server sent {other:?} on the send connection (only STATUS is expected)"));
                        break;
                    }
                    Ok(None) => {
                        broken = Some("server closed the send connection".to_owned());
                        break;
                    }
                    Err(e) => {
                        broken = Some(format!("send connection: {e}"));
                        break;
                    }
                }
            }
            let (ended, sent) = {
                let mut out = out.lock();
                let _ = out.check_link(Instant::now(), true);
                let mut ended = Vec::new();
                for code in codes.into_iter().filter(|&c| c != StatusCode::KEEP_ALIVE) {
                    match out.handle_reply(code) {
                        Ok(e) => ended.extend(e),
                        Err(e) => {
                            broken = Some(format!("server broke the protocol: {e}"));
                            break;
                        }
                    }
                }
                let sent = if broken.is_none() { out.pump() } else { Ok(Vec::new()) };
                (ended, sent)
            };
            let mut done: Vec<_> = ended;
            let failed = match sent {
                Ok(more) => {
                    done.extend(more);
                    None
                }
                Err(e) => Some(format!("send connection: {e}")),
            };
            for d in done {
                settle(&ctx, &d);
                if !post(SessionEvent::Done(d)) {
                    return;
                }
            }
            if let Some(reason) = failed.or(broken) {
                break reason;
            }
        };
        post(SessionEvent::Closed { reason });
    })
}
