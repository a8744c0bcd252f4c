//! Secure mode's TLS (docs/PROTOCOL.md, "Secure mode"): TLS 1.3 only,
//! rustls with the aws-lc-rs provider (no OpenSSL; the X25519+ML-KEM
//! hybrid key exchange preferred), and no certificate authorities. Each program has one key with a self-signed certificate,
//! made on first use; peers know each other by the certificate's SHA-256
//! fingerprint, ssh-style: the client pins the server's, the server looks
//! the client's up in its enrolment list. TLS proves the peer holds the
//! key of the certificate it shows (its CertificateVerify signature),
//! which is checked here with the provider's algorithms.
//!
//! Both programs honour `SSLKEYLOGFILE` (rustls' `KeyLogFile`), so that a
//! capture can be decrypted in Wireshark.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::conn::Conn;
pub use dropsync_core::access::Fingerprint;

/// The first byte of a TLS handshake record (a ClientHello), which is no
/// message type of the protocol: how a server port tells TLS from plain.
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The server name a client sends. Certificates are pinned, not checked
/// against names, so it is only a label.
const SERVER_NAME: &str = "dropsync";

/// The fingerprint of a certificate: SHA-256 of its DER bytes.
pub fn fingerprint_of(cert: &[u8]) -> Fingerprint {
    Fingerprint(Sha256::digest(cert).into())
}

/// Seeds the crypto library's random generator on a thread of its own,
/// at start, so that the first handshake does not wait for it (about 30 ms
/// of CPU; `make bench`'s B3 saw it).
pub fn warm_up() {
    let _ = std::thread::Builder::new().name("tls-warm-up".into()).spawn(|| {
        let _ = provider().secure_random.fill(&mut [0u8; 16]);
    });
}

/// aws-lc-rs' provider with AES-128-GCM first: a third fewer AES rounds
/// than AES-256-GCM (its default first), which B1 in secure mode feels,
/// and as sound for this use; the server picks its own first choice among
/// what the client offers.
fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites = vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256];
    Arc::new(p)
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// A key and its self-signed certificate.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    /// The certificate's fingerprint, by which peers know this identity.
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.fingerprint.short())
    }
}

impl Identity {
    /// Makes a new key (ECDSA P-256) and a self-signed certificate for it.
    pub fn create() -> io::Result<Self> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()]).map_err(io::Error::other)?;
        let pem = format!("{}{}", made.signing_key.serialize_pem(), made.cert.pem());
        Self::parse(pem.as_bytes()).map_err(io::Error::other)
    }

    /// Reads an identity file: a PEM private key and a PEM certificate. An
    /// error says what is missing or wrong; nothing in it panics.
    pub fn parse(pem: &[u8]) -> Result<Self, String> {
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
        let cert = CertificateDer::from_pem_slice(pem).map_err(|e| format!("no certificate: {e}"))?;
        provider().key_provider.load_private_key(key.clone_key()).map_err(|e| format!("unusable private key: {e}"))?;
        let fingerprint = fingerprint_of(&cert);
        Ok(Self { cert, key, fingerprint })
    }

    fn pem(&self) -> String {
        let block = |tag: &str, der: &[u8]| {
            let mut out = format!("-----BEGIN {tag}-----\n");
            for line in base64(der).as_bytes().chunks(64) {
                out.push_str(&String::from_utf8_lossy(line));
                out.push('\n');
            }
            out.push_str(&format!("-----END {tag}-----\n"));
            out
        };
        format!("{}{}", block("PRIVATE KEY", self.key.secret_der()), block("CERTIFICATE", &self.cert))
    }

    /// Reads the identity at `path`, or makes one and keeps it there
    /// (readable by its owner only, written whole or not at all). `true`
    /// with a new one. Two processes making one at once (a client and
    /// `client fingerprint`) end with the same: the first link wins, and
    /// the other reads it.
    pub fn load_or_create(path: &Path) -> io::Result<(Self, bool)> {
        let read = |path: &Path| -> io::Result<Self> {
            let pem = fs::read(path)?;
            Self::parse(&pem).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
        };
        match read(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            other => return other.map(|id| (id, false)),
        }
        let id = Self::create()?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(id.pem().as_bytes())?;
        f.sync_all()?;
        let linked = fs::hard_link(&tmp, path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    fs::File::open(dir).and_then(|d| d.sync_all())?;
                }
                Ok((id, true))
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => read(path).map(|id| (id, false)),
            Err(e) => Err(e),
        }
    }
}

/// Standard base64 with padding (PEM's), for writing the identity file.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group.iter().enumerate().fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The three signature methods both verifiers share: the peer's
/// handshake signature checked with the provider's algorithms (`self.algs`);
/// only which certificate is acceptable differs between them.
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}

/// Decides whether a client key may complete a handshake: the server's
/// enrolment rule, looked up at each handshake so that an enrolment or a
/// revocation counts from the next connection on.
pub type KeyGate = Arc<dyn Fn(&Fingerprint) -> bool + Send + Sync>;

/// The server's side: its identity and the gate for client keys.
#[derive(Debug, Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

#[derive(Debug)]
struct ClientKeys {
    gate: GateDebug,
    algs: WebPkiSupportedAlgorithms,
}

struct GateDebug(KeyGate);

impl fmt::Debug for GateDebug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyGate")
    }
}

impl ClientCertVerifier for ClientKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// A client without a key may finish the handshake; the admission rule
    /// (`Enrolled::admit`) then refuses it in secure mode, and admits it in
    /// the open mode, where TLS still hides the traffic.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if (self.gate.0)(&fingerprint_of(end_entity)) {
            Ok(ClientCertVerified::assertion())
        } else {
            // Sent to the client as an access_denied alert.
            Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
        }
    }

    signature_checks!();
}

impl ServerTls {
    /// A TLS 1.3 server configuration for `identity`, admitting client keys
    /// that `gate` lets through.
    pub fn new(identity: &Identity, gate: KeyGate) -> io::Result<Self> {
        let verifier = Arc::new(ClientKeys { gate: GateDebug(gate), algs: algorithms() });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(io::Error::other)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
            .map_err(io::Error::other)?;
        config.key_log = Arc::new(rustls::KeyLogFile::new());
        // No resumption: every connection proves its key afresh.
        config.send_tls13_tickets = 0;
        Ok(Self { config: Arc::new(config) })
    }

    /// Completes the server side of a handshake on `tcp` by `deadline`
    /// (a peer that stalls or drips bytes is cut off then).
    pub fn accept(&self, tcp: TcpStream, deadline: Instant) -> io::Result<Conn> {
        let state = rustls::ServerConnection::new(self.config.clone()).map_err(io::Error::other)?;
        let mut state = rustls::Connection::Server(state);
        handshake(&tcp, &mut state, deadline)?;
        let peer = state.peer_certificates().and_then(|c| c.first()).map(|c| fingerprint_of(c));
        Ok(Conn::tls(tcp, state, peer))
    }
}

impl ServerTls {
    /// Feeds `input` to a new server-side handshake as if a peer had sent
    /// it, with no socket: what the fuzz target `tls_handshake` drives.
    /// `Err` with the first error; nothing in it panics.
    pub fn feed_handshake(&self, input: &[u8]) -> Result<(), String> {
        let mut state = rustls::ServerConnection::new(self.config.clone()).map_err(|e| e.to_string())?;
        let mut rest = input;
        while !rest.is_empty() {
            match state.read_tls(&mut rest) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
            state.process_new_packets().map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            while state.wants_write() {
                state.write_tls(&mut out).map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// What the client expects of the server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pin {
    /// Exactly this fingerprint.
    Known(Fingerprint),
    /// Whatever it is, the first time (the caller keeps it, so that every
    /// later connection requires it).
    FirstUse,
}

#[derive(Debug)]
struct ServerKey {
    pin: Pin,
    algs: WebPkiSupportedAlgorithms,
    /// The fingerprint the server showed, whether it matched or not.
    seen: Mutex<Option<Fingerprint>>,
}

impl ServerCertVerifier for ServerKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let shown = fingerprint_of(end_entity);
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(shown);
        match self.pin {
            Pin::Known(want) if want != shown => {
                Err(rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure))
            }
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    signature_checks!();
}

/// Why a client's handshake failed, told apart for its log.
#[derive(Debug)]
pub enum ConnectError {
    /// The server showed another certificate than the pinned one.
    WrongServer {
        /// The fingerprint it showed.
        shown: Fingerprint,
    },
    /// Anything else: the socket, a timeout, a TLS error.
    Io(io::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::WrongServer { shown } => write!(f, "the server's certificate has fingerprint {shown}"),
            ConnectError::Io(e) => write!(f, "{e}"),
        }
    }
}

/// The client's side of one connection: its identity and the pin.
pub struct ClientTls<'a> {
    /// This client's key and certificate, presented to the server (none:
    /// no client certificate, which only tests of refusals want).
    pub identity: Option<&'a Identity>,
    /// The server's expected fingerprint.
    pub pin: Pin,
}

impl ClientTls<'_> {
    /// Completes the client side of a handshake on `tcp` by `deadline`;
    /// with the connection, the server's fingerprint.
    pub fn connect(&self, tcp: TcpStream, deadline: Instant) -> Result<(Conn, Fingerprint), ConnectError> {
        let verifier = Arc::new(ServerKey { pin: self.pin, algs: algorithms(), seen: Mutex::new(None) });
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::Io(io::Error::other(e)))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone());
        let mut config = match self.identity {
            Some(id) => builder
                .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
                .map_err(|e| ConnectError::Io(io::Error::other(e)))?,
            None => builder.with_no_client_auth(),
        };
        config.key_log = Arc::new(rustls::KeyLogFile::new());
        config.resumption = rustls::client::Resumption::disabled();
        let name = ServerName::try_from(SERVER_NAME).map_err(|e| ConnectError::Io(io::Error::other(e)))?;
        let state =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| ConnectError::Io(io::Error::other(e)))?;
        let mut state = rustls::Connection::Client(state);
        let done = handshake(&tcp, &mut state, deadline);
        let seen = *verifier.seen.lock().unwrap_or_else(PoisonError::into_inner);
        match (done, seen) {
            (Ok(()), Some(shown)) => Ok((Conn::tls(tcp, state, Some(shown)), shown)),
            (Ok(()), None) => Err(ConnectError::Io(io::Error::other("the server showed no certificate"))),
            (Err(_), Some(shown)) if matches!(self.pin, Pin::Known(want) if want != shown) => {
                Err(ConnectError::WrongServer { shown })
            }
            (Err(e), _) => Err(ConnectError::Io(e)),
        }
    }
}

/// Drives a handshake on a blocking socket until it is done, one record
/// read at a time so that the deadline holds however the peer drips.
fn handshake(tcp: &TcpStream, state: &mut rustls::Connection, deadline: Instant) -> io::Result<()> {
    let mut sock = tcp;
    loop {
        while state.wants_write() {
            state.write_tls(&mut sock)?;
        }
        if !state.is_handshaking() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake not done in time"));
        }
        tcp.set_read_timeout(Some(left))?;
        tcp.set_write_timeout(Some(left))?;
        let mut buf = [0u8; 4096];
        let n = sock.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed during the TLS handshake"));
        }
        let mut fed = &buf[..n];
        while !fed.is_empty() {
            state.read_tls(&mut fed)?;
            if let Err(e) = state.process_new_packets() {
                // Tell the peer why (rustls queued the alert), then fail.
                while state.wants_write() {
                    if state.write_tls(&mut sock).is_err() {
                        break;
                    }
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::Duration;

    #[test]
    fn base64_matches_the_standard_alphabet_and_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn an_identity_reads_back_from_its_file_and_bad_files_are_errors() {
        let id = Identity::create().unwrap();
        let back = Identity::parse(id.pem().as_bytes()).unwrap();
        assert_eq!(back.fingerprint, id.fingerprint);
        assert!(Identity::parse(b"").is_err());
        assert!(Identity::parse(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    fn deadline() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    /// Runs a server handshake on one thread and a client's on this one.
    fn connect(
        server: &Identity,
        gate: KeyGate,
        client: &Identity,
        pin: Pin,
    ) -> (io::Result<Conn>, Result<(Conn, Fingerprint), ConnectError>) {
        let (c, s) = pair();
        let tls = ServerTls::new(server, gate).unwrap();
        let t = std::thread::spawn(move || tls.accept(s, deadline()));
        let got = ClientTls { identity: Some(client), pin }.connect(c, deadline());
        (t.join().unwrap(), got)
    }

    #[test]
    fn pinned_peers_talk_both_ways_and_know_each_others_keys() {
        let (server, client) = (Identity::create().unwrap(), Identity::create().unwrap());
        let want = client.fingerprint;
        let (s, c) = connect(&server, Arc::new(move |k| *k == want), &client, Pin::Known(server.fingerprint));
        let (s, (c, shown)) = (s.unwrap(), c.unwrap());
        assert_eq!(shown, server.fingerprint);
        assert_eq!(s.peer_fingerprint(), Some(client.fingerprint));
        // Large writes from a second handle while this one reads.
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let (mut w, big) = (c.try_clone().unwrap(), big.clone());
            std::thread::spawn(move || w.write_all(&big).unwrap())
        };
        let mut got = vec![0u8; big.len()];
        (&s).read_exact(&mut got).unwrap();
        writer.join().unwrap();
        assert!(got == big);
        (&s).write_all(b"back").unwrap();
        let mut four = [0u8; 4];
        (&c).read_exact(&mut four).unwrap();
        assert_eq!(&four, b"back");
        s.shutdown(std::net::Shutdown::Both).unwrap();
        assert_eq!((&c).read(&mut four).unwrap(), 0, "a closed peer is end of stream");
    }

    #[test]
    fn a_server_with_another_key_is_refused_and_named() {
        let (server, client, other) = (Identity::create().unwrap(), Identity::create().unwrap(), Identity::create().unwrap());
        let (_, c) = connect(&server, Arc::new(|_| true), &client, Pin::Known(other.fingerprint));
        match c {
            Err(ConnectError::WrongServer { shown }) => assert_eq!(shown, server.fingerprint),
            other => panic!("expected a wrong-server error, got {other:?}"),
        }
    }

    #[test]
    fn a_key_the_gate_refuses_gets_no_connection() {
        let (server, client) = (Identity::create().unwrap(), Identity::create().unwrap());
        let (s, c) = connect(&server, Arc::new(|_| false), &client, Pin::FirstUse);
        assert!(s.is_err(), "the server refuses the key");
        // TLS 1.3: the client finishes first and hears the refusal on its
        // first read.
        if let Ok((c, _)) = c {
            let mut b = [0u8; 1];
            let e = (&c).read(&mut b).unwrap_err();
            assert!(matches!(crate::conn::tls_error(&e), Some(rustls::Error::AlertReceived(_))), "{e}");
        }
    }

    #[test]
    fn a_silent_peer_is_cut_off_at_the_deadline() {
        let server = Identity::create().unwrap();
        let (_c, s) = pair();
        let tls = ServerTls::new(&server, Arc::new(|_| true)).unwrap();
        let e = tls.accept(s, Instant::now() + Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut), "{e}");
    }
}
