//! The reply thread: reads the send connection, where only STATUS replies
//! (and keep-alives) arrive, and hands them to the send thread
//! (`send_thread.rs`), which owns everything that writes. Replies already
//! received are handed over together, so what they unblock goes out in one
//! write. Anything but a STATUS breaks the protocol and ends the session.

use std::io;
use dropsync_io::conn::Conn;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Instant;

use dropsync_io::wire::{is_timeout_error, FrameReader, Msg};

use crate::events::{Event, SessionEvent};
use crate::send_thread::Command;

/// Length of a STATUS frame: type u16, code u16.
const STATUS_LEN: usize = 4;

/// Starts the reply thread of session `session`; it ends with the
/// connection (reporting why) or with the send thread.
pub fn spawn(
    mut rx: FrameReader<Conn>,
    send: mpsc::Sender<Command>,
    events: mpsc::Sender<Event>,
    session: u64,
) -> io::Result<JoinHandle<()>> {
    let post = move |what| {
        let _ = events.send(Event::Session { session, what });
    };
    thread::Builder::new().name(format!("replies-{session}")).spawn(move || {
        let mut last_total = 0;
        let reason = loop {
            let first = match rx.read_msg() {
                Ok(Some(Msg::Status(code))) => code,
                Ok(Some(other)) => break format!("server sent {other:?} on the send connection (only STATUS is expected)"),
                Ok(None) => break "server closed the send connection".to_owned(),
                Err(e) if is_timeout_error(&e) => {
                    // Any byte counts: a reply may be arriving slowly.
                    let heard = std::mem::replace(&mut last_total, rx.total_read()) != rx.total_read();
                    if heard && send.send(Command::Replies { codes: Vec::new(), at: Instant::now() }).is_err() {
                        return;
                    }
                    continue;
                }
                Err(e) => break format!("send connection: {e}"),
            };
            last_total = rx.total_read();
            // A STATUS is 4 bytes: with that many buffered, the next
            // message is read without blocking.
            let mut codes = vec![first];
            let mut broken = None;
            while rx.buffered() >= STATUS_LEN {
                match rx.read_msg() {
                    Ok(Some(Msg::Status(code))) => codes.push(code),
                    Ok(Some(other)) => {
                        broken = Some(format!("server sent {other:?} on the send connection (only STATUS is expected)"));
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        broken = Some(format!("send connection: {e}"));
                        break;
                    }
                }
            }
            if send.send(Command::Replies { codes, at: Instant::now() }).is_err() {
                // The send thread is gone: so is the session.
                return;
            }
            if let Some(reason) = broken {
                break reason;
            }
        };
        post(SessionEvent::Closed { reason });
    })
}
