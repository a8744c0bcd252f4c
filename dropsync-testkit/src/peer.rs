//! A scripted raw protocol peer: what a test uses to speak to the real
//! server byte for byte, without the client.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use socket2::{Domain, Socket, Type};
use std::time::Duration;

use dropsync_io::conn::Conn;
use dropsync_io::tls::{ClientTls, Identity, Pin};
use dropsync_io::wire::{FrameReader, Msg};
use dropsync_proto::{md5, Frame, StatusCode};

/// Both connections of one client session.
#[derive(Debug)]
pub struct RawPeer {
    /// Send connection (client → server transfers).
    pub send: Conn,
    /// Reader on the send connection (STATUS replies).
    pub send_rx: FrameReader<Conn>,
    /// Receive connection (server → client transfers).
    pub recv: Conn,
    /// Reader on the receive connection.
    pub recv_rx: FrameReader<Conn>,
    /// Transfers in progress on the receive connection (the server may
    /// interleave several), by name.
    partial: HashMap<String, Vec<u8>>,
    /// Transfers completed while waiting for another one.
    done: VecDeque<(String, Option<Vec<u8>>)>,
}

/// How long a raw peer waits for any single message.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection to 127.0.0.1:`port` from the loopback address `local` (any
/// of 127.0.0.0/8: a second "machine" for tests of per-address rules).
fn connect_from(local: Ipv4Addr, port: u16) -> TcpStream {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((local, 0)).into()).unwrap();
    sock.connect(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into()).unwrap();
    let s: TcpStream = sock.into();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
    s
}

impl RawPeer {
    /// Connects both ports without saying anything.
    pub fn connect_raw(send_port: u16, recv_port: u16) -> Self {
        Self::connect_raw_from(Ipv4Addr::LOCALHOST, send_port, recv_port)
    }

    /// Connects both ports from the loopback address `local` without saying
    /// anything.
    pub fn connect_raw_from(local: Ipv4Addr, send_port: u16, recv_port: u16) -> Self {
        let send = Conn::plain(connect_from(local, send_port));
        let recv = Conn::plain(connect_from(local, recv_port));
        Self::over(send, recv)
    }

    /// Connects both ports over TLS with `identity`'s key (none: no client
    /// certificate), expecting the server's key `pin`, without saying
    /// anything; the handshake's error if it fails.
    pub fn connect_tls(
        send_port: u16,
        recv_port: u16,
        identity: Option<&Identity>,
        pin: Pin,
    ) -> std::io::Result<Self> {
        let one = |port| {
            let tcp = connect_from(Ipv4Addr::LOCALHOST, port);
            let deadline = std::time::Instant::now() + READ_TIMEOUT;
            let conn = ClientTls { identity, pin }.connect(tcp, deadline).map(|(c, _)| c).map_err(|e| std::io::Error::other(e.to_string()))?;
            conn.set_read_timeout(Some(READ_TIMEOUT))?;
            conn.set_write_timeout(None)?;
            Ok::<_, std::io::Error>(conn)
        };
        Ok(Self::over(one(send_port)?, one(recv_port)?))
    }

    /// Over TLS as [`connect_tls`](Self::connect_tls), then HELLO on both
    /// connections; the first error (a refusal shows as the server's alert
    /// or a closed connection).
    pub fn try_tls_hello(
        send_port: u16,
        recv_port: u16,
        identity: Option<&Identity>,
        pin: Pin,
        id: [u8; 16],
        label: &str,
    ) -> std::io::Result<Self> {
        let mut p = Self::connect_tls(send_port, recv_port, identity, pin)?;
        let hello = Frame::Hello { client_id: id, label };
        p.send.write_all(&hello.to_vec())?;
        p.recv.write_all(&hello.to_vec())?;
        for rx in [&mut p.send_rx, &mut p.recv_rx] {
            match rx.read_msg()? {
                Some(Msg::Status(StatusCode::OK)) => {}
                other => return Err(std::io::Error::other(format!("HELLO answered with {other:?}"))),
            }
        }
        Ok(p)
    }

    fn over(send: Conn, recv: Conn) -> Self {
        let send_rx = FrameReader::new(send.try_clone().unwrap());
        let recv_rx = FrameReader::new(recv.try_clone().unwrap());
        Self { send, send_rx, recv, recv_rx, partial: HashMap::new(), done: VecDeque::new() }
    }

    /// Connects, sends HELLO on both connections, checks both OKs. Both
    /// HELLOs go out at once: a connection silent for 1 s is legacy.
    pub fn hello(send_port: u16, recv_port: u16, id: [u8; 16], label: &str) -> Self {
        Self::hello_from(Ipv4Addr::LOCALHOST, send_port, recv_port, id, label)
    }

    /// Like [`hello`](Self::hello), from the loopback address `local`.
    pub fn hello_from(local: Ipv4Addr, send_port: u16, recv_port: u16, id: [u8; 16], label: &str) -> Self {
        let mut p = Self::connect_raw_from(local, send_port, recv_port);
        let hello = Frame::Hello { client_id: id, label };
        p.send.write_all(&hello.to_vec()).unwrap();
        p.recv.write_all(&hello.to_vec()).unwrap();
        assert_eq!(p.send_status(), StatusCode::OK, "HELLO on send connection");
        assert_eq!(p.next_recv_status(), StatusCode::OK, "HELLO on receive connection");
        p
    }

    /// Next STATUS on the send connection, skipping keep-alives.
    pub fn send_status(&mut self) -> StatusCode {
        loop {
            match self.send_rx.read_msg().unwrap() {
                Some(Msg::Status(StatusCode::KEEP_ALIVE)) => continue,
                Some(Msg::Status(c)) => return c,
                other => panic!("expected STATUS on send connection, got {other:?}"),
            }
        }
    }

    fn next_recv_status(&mut self) -> StatusCode {
        loop {
            match self.recv_rx.read_msg().unwrap() {
                Some(Msg::Status(StatusCode::KEEP_ALIVE)) => continue,
                Some(Msg::Status(c)) => return c,
                other => panic!("expected STATUS on receive connection, got {other:?}"),
            }
        }
    }

    /// Sends a frame on the send connection and returns the reply.
    pub fn request(&mut self, frame: &Frame<'_>) -> StatusCode {
        self.send.write_all(&frame.to_vec()).unwrap();
        self.send_status()
    }

    /// Uploads `data` as `name` in chunks of `chunk` bytes; returns the first
    /// non-OK reply, or the reply to FINISHED.
    pub fn upload(&mut self, name: &str, data: &[u8], chunk: usize) -> StatusCode {
        for piece in data.chunks(chunk.max(1)) {
            let st = self.request(&Frame::Chunk { digest: md5(piece), name, payload: piece });
            if st != StatusCode::OK {
                return st;
            }
        }
        self.request(&Frame::Finished { digest: md5(data), name })
    }

    /// Receives one transfer on the receive connection, answering every
    /// message OK. Returns `(name, Some(content))` for a file or
    /// `(name, None)` for a DELETE. Transfers the server interleaves are
    /// reassembled by name and returned in the order they complete.
    pub fn receive_one(&mut self) -> (String, Option<Vec<u8>>) {
        if let Some(done) = self.done.pop_front() {
            return done;
        }
        loop {
            let msg = self.recv_rx.read_msg().unwrap().expect("server closed receive connection");
            match msg {
                Msg::Status(StatusCode::KEEP_ALIVE) => continue,
                Msg::Chunk { digest, len, name } => {
                    let payload = self.recv_rx.read_payload(len).unwrap();
                    assert_eq!(md5(payload), digest, "chunk digest from server");
                    self.partial.entry(name).or_default().extend_from_slice(payload);
                    self.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
                }
                Msg::Named { kind, digest, name } => {
                    self.recv.write_all(&Frame::Status(StatusCode::OK).to_vec()).unwrap();
                    match kind {
                        dropsync_proto::MessageType::Finished => {
                            let data = self.partial.remove(&name).unwrap_or_default();
                            assert_eq!(md5(&data), digest, "whole-file digest of {name}");
                            return (name, Some(data));
                        }
                        dropsync_proto::MessageType::Delete => return (name, None),
                        dropsync_proto::MessageType::Abort => {
                            self.partial.remove(&name);
                        }
                        other => panic!("unexpected {other:?} from server"),
                    }
                }
                other => panic!("unexpected message from server: {other:?}"),
            }
        }
    }

    /// Receives `n` transfers and returns them sorted by name.
    pub fn receive_n(&mut self, n: usize) -> Vec<(String, Option<Vec<u8>>)> {
        let mut all: Vec<_> = (0..n).map(|_| self.receive_one()).collect();
        all.sort();
        all
    }

    /// Receives the META-DATA transfer sent right after pairing.
    pub fn receive_metadata(&mut self) -> String {
        let (name, data) = self.receive_one();
        assert_eq!(name, dropsync_proto::name::METADATA_TRANSFER_NAME);
        String::from_utf8(data.expect("a file")).unwrap()
    }
}

impl RawPeer {
    /// Writes a frame on the send connection without waiting for a reply.
    pub fn send_frame(&mut self, frame: &Frame<'_>) {
        self.send.write_all(&frame.to_vec()).unwrap();
    }

    /// Asserts that nothing but keep-alives arrives on the receive
    /// connection for `quiet` (e.g. the uploader gets no copy of its file).
    pub fn expect_no_transfer(&mut self, quiet: Duration) {
        self.recv.set_read_timeout(Some(quiet)).unwrap();
        let res = loop {
            match self.recv_rx.read_msg() {
                Ok(Some(Msg::Status(StatusCode::KEEP_ALIVE))) => continue,
                other => break other,
            }
        };
        self.recv.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        match res {
            Err(e) if dropsync_io::wire::is_timeout_error(&e) => {}
            other => panic!("expected silence on the receive connection, got {other:?}"),
        }
    }

    /// True once the server has closed the send connection (reads EOF or
    /// an error within the read timeout).
    pub fn send_closed_by_server(&mut self) -> bool {
        loop {
            match self.send_rx.read_msg() {
                Ok(Some(Msg::Status(StatusCode::KEEP_ALIVE))) => continue,
                Ok(None) => return true,
                Err(e) => return !dropsync_io::wire::is_timeout_error(&e),
                Ok(Some(_)) => return false,
            }
        }
    }
}

impl RawPeer {
    /// Reads the next message on the receive connection and answers it
    /// with `code` (e.g. 0x0080 to refuse a transfer); returns its name.
    pub fn answer_next(&mut self, code: StatusCode) -> String {
        loop {
            match self.recv_rx.read_msg().unwrap().expect("server closed receive connection") {
                Msg::Status(StatusCode::KEEP_ALIVE) => continue,
                Msg::Chunk { name, len, .. } => {
                    self.recv_rx.read_payload(len).unwrap();
                    self.recv.write_all(&Frame::Status(code).to_vec()).unwrap();
                    return name;
                }
                Msg::Named { name, .. } => {
                    self.recv.write_all(&Frame::Status(code).to_vec()).unwrap();
                    return name;
                }
                other => panic!("unexpected message from server: {other:?}"),
            }
        }
    }
}
