//! One connection of a session, plain TCP or TLS, with the handle both
//! programs already use for a `TcpStream`: cloned for a reader thread and a
//! writer thread, given read and write timeouts, shut down from a third
//! thread to wake the other two.
//!
//! A TLS connection's state (`rustls::Connection`) is one object that both
//! directions change, so the clones share it behind a lock, which is never
//! held across a blocking socket call: the reader reads the socket first and
//! then hands the bytes over; the writer encrypts under the lock and writes
//! the records after releasing it. Writes to the socket are serialised by a
//! second lock taken before the first, so records leave in the order they
//! were made (the reader takes it too when the peer asked for an answer,
//! such as a key update).

use std::fs::File;
use std::io::{self, Read, Take, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use crate::tls::Fingerprint;

/// Most plaintext encrypted under the lock at once: one write holds the
/// state no longer than it takes to seal this much.
const SEAL_PIECE: usize = 256 * 1024;

/// Room for one socket read of TLS records: a little more than one whole
/// record, on the reader's stack.
const READ_PIECE: usize = 17 * 1024;

/// Largest send buffer a connection keeps between writes; one that grew
/// beyond (a large write) is given back, so that thousands of idle TLS
/// sessions hold no more than this each.
const KEEP_SEND: usize = 32 * 1024;

/// A session connection: a TCP socket, and its TLS state when it has one.
#[derive(Debug)]
pub struct Conn {
    tcp: TcpStream,
    tls: Option<Arc<TlsLink>>,
}

/// What the clones of one TLS connection share.
#[derive(Debug)]
struct TlsLink {
    state: Mutex<rustls::Connection>,
    /// Held from sealing records to their last byte on the socket; holds
    /// the records between the two.
    send: Mutex<Vec<u8>>,
    /// Bytes read from the socket that rustls did not take yet (usually
    /// none: it takes whole reads).
    recv: Mutex<Vec<u8>>,
    /// The fingerprint of the certificate the peer presented, if any.
    peer: Option<Fingerprint>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A TLS failure (a bad record, an alert from the peer) as the I/O error
/// the readers already handle, with rustls' error inside for whoever wants
/// to tell an alert apart (see [`tls_error`]).
fn tls_io(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The rustls error inside `e`, if it is one (an alert from the peer, say).
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// True when `e` is this side refusing the peer's certificate (the
/// server's key gate, `tls::KeyGate`, or a client's pin).
pub fn is_refused_key(e: &io::Error) -> bool {
    matches!(
        tls_error(e),
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
    )
}

/// True when `e` is the peer's TLS alert: after a handshake, how a server
/// that does not admit a client's key says so.
pub fn is_alert(e: &io::Error) -> bool {
    matches!(tls_error(e), Some(rustls::Error::AlertReceived(_)))
}

impl Conn {
    /// A plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Self {
        Self { tcp, tls: None }
    }

    /// A connection whose TLS handshake is complete.
    pub(crate) fn tls(tcp: TcpStream, state: rustls::Connection, peer: Option<Fingerprint>) -> Self {
        let link = TlsLink {
            state: Mutex::new(state),
            send: Mutex::new(Vec::new()),
            recv: Mutex::new(Vec::new()),
            peer,
        };
        Self { tcp, tls: Some(Arc::new(link)) }
    }

    /// Another handle on the same connection (and the same TLS state).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self { tcp: self.tcp.try_clone()?, tls: self.tls.clone() })
    }

    /// The socket, for socket options (keep-alive, the closed-peer check).
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// True when the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The fingerprint of the certificate the peer proved it holds the key
    /// of, on a TLS connection where it presented one.
    pub fn peer_fingerprint(&self) -> Option<Fingerprint> {
        self.tls.as_ref().and_then(|t| t.peer)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp.peer_addr()
    }

    /// True when a read would find bytes now, without waiting: undecrypted
    /// bytes held here, or the socket readable (data, or its end). Only a
    /// hint, for a reader deciding whether more is on its way before it
    /// does work that delays its replies (group commit); TLS plaintext
    /// rustls holds already is not looked at, and so it only makes the
    /// hint say "no" early.
    pub fn input_ready(&self) -> bool {
        if self.tls.as_ref().is_some_and(|t| !lock(&t.recv).is_empty()) {
            return true;
        }
        crate::tcp::readable_now(&self.tcp)
    }

    /// See [`TcpStream::set_read_timeout`].
    pub fn set_read_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp.set_read_timeout(d)
    }

    /// See [`TcpStream::set_write_timeout`].
    pub fn set_write_timeout(&self, d: Option<Duration>) -> io::Result<()> {
        self.tcp.set_write_timeout(d)
    }

    /// See [`TcpStream::set_nodelay`].
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp.set_nodelay(on)
    }

    /// Shuts the socket down, which wakes every thread blocked on it.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.tcp.shutdown(how)
    }

    /// Writes all of `file` (a range of it) to the connection: through the
    /// kernel on a plain one (`io::copy` uses sendfile on a socket), through
    /// the cipher on a TLS one.
    pub fn copy_from(&mut self, file: &mut Take<&File>) -> io::Result<u64> {
        if self.tls.is_none() {
            return io::copy(file, &mut self.tcp);
        }
        // Full records, not io::copy's 8 KiB pieces (a record and a system
        // call each).
        let mut buf = vec![0u8; SEAL_PIECE.min(usize::try_from(file.limit()).unwrap_or(SEAL_PIECE))];
        let mut copied = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => return Ok(copied),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.write_all(&buf[..n])?;
            copied += n as u64;
        }
    }

    fn read_tls(&self, link: &TlsLink, buf: &mut [u8]) -> io::Result<usize> {
        let mut left = lock(&link.recv);
        let mut raw = [0u8; READ_PIECE];
        let mut eof = false;
        loop {
            let answer = {
                let mut state = lock(&link.state);
                if let Err(e) = hand_over(&mut state, &mut left, eof) {
                    drop(state);
                    // Tell the peer why (rustls queued the alert).
                    let _ = self.flush_records(link);
                    return Err(e);
                }
                match state.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    // A TCP close without TLS's close_notify: the
                    // protocol's framing tells a cut message apart.
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                state.wants_write()
            };
            if answer {
                self.flush_records(link)?;
            }
            if eof {
                return Ok(0);
            }
            // Nothing to decrypt: wait for the socket, without the lock.
            let n = (&self.tcp).read(&mut raw)?;
            eof = n == 0;
            left.extend_from_slice(&raw[..n]);
        }
    }

    /// Sends the records the TLS state holds, for the reader (an answer
    /// the peer asked for, such as a key update, or an alert). When the
    /// writer is busy it is left to it: a writer sends what is queued
    /// before it lets go (see [`send_queued`]), and a reader that waited
    /// for a writer stuck on a full socket could wait for ever, with the
    /// peer's reader doing the same.
    fn flush_records(&self, link: &TlsLink) -> io::Result<()> {
        match link.send.try_lock() {
            Ok(mut out) => send_queued(&self.tcp, link, &mut out),
            Err(std::sync::TryLockError::Poisoned(p)) => send_queued(&self.tcp, link, &mut p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Ok(()),
        }
    }

    fn write_tls(&self, link: &TlsLink, buf: &[u8]) -> io::Result<usize> {
        let mut out = lock(&link.send);
        let taken = lock(&link.state).writer().write(&buf[..buf.len().min(SEAL_PIECE)])?;
        send_queued(&self.tcp, link, &mut out)?;
        Ok(taken)
    }
}

/// Sends every record the TLS state holds, under the send lock (`out`),
/// until none is left: records the reader queued meanwhile go too.
fn send_queued(tcp: &TcpStream, link: &TlsLink, out: &mut Vec<u8>) -> io::Result<()> {
    loop {
        out.clear();
        {
            let mut state = lock(&link.state);
            while state.wants_write() {
                state.write_tls(&mut *out)?;
            }
        }
        if out.is_empty() {
            break;
        }
        let mut tcp = tcp;
        tcp.write_all(out)?;
    }
    if out.capacity() > KEEP_SEND {
        *out = Vec::new();
    }
    Ok(())
}

/// Hands the bytes read from the socket to rustls and decrypts what forms
/// whole records, as far as it takes them: it takes a few KiB per call and
/// stops taking once 16 KiB of plaintext wait, so what it leaves stays in
/// `left` for the next turn. `eof` tells it the peer closed.
fn hand_over(state: &mut rustls::Connection, left: &mut Vec<u8>, eof: bool) -> io::Result<()> {
    let mut fed: &[u8] = left;
    let mut result = Ok(());
    while !fed.is_empty() || eof {
        match state.read_tls(&mut fed) {
            Ok(0) => break,
            Ok(_) => {}
            // Backpressure (plaintext waiting): not an error.
            Err(e) if e.kind() == io::ErrorKind::Other => break,
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        if let Err(e) = state.process_new_packets() {
            result = Err(tls_io(e));
            break;
        }
    }
    let taken = left.len() - fed.len();
    left.drain(..taken);
    result
}

impl Read for &Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).read(buf),
            Some(link) => self.read_tls(link, buf),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self).read(buf)
    }
}

impl Write for &Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &self.tls {
            None => (&self.tcp).write(buf),
            Some(link) => self.write_tls(link, buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
