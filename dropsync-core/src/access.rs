//! Who may connect and what they may change (docs/PROTOCOL.md, "Secure
//! mode"): the list of enrolled clients, each known by the fingerprint of
//! its key's certificate and read-write or read-only, and the one rule
//! that admits a connection or refuses it.
//!
//! The list is a text file the server keeps beside its META-DATA, which
//! `server enroll` and `server revoke` edit and the running server reads
//! again when it changes:
//!
//! ```text
//! # dropsync enrolled clients: fingerprint, rw or ro, label
//! 3f5a…(64 hex digits)…<TAB>rw<TAB>laptop
//! ```

use std::fmt;

use dropsync_proto::{ClientId, StatusCode};

/// The first line of the enrolment file.
pub const ENROLLED_HEADER: &str = "# dropsync enrolled clients: fingerprint, rw or ro, label";

/// Longest label kept for an enrolled client, in bytes.
pub const MAX_LABEL: usize = 64;

/// The SHA-256 of a certificate's DER bytes: how a server or a client is
/// known (as Syncthing's device ids are). Written as 64 lowercase hex
/// digits; read with or without a `sha256:` prefix, `:` separators and in
/// either case, so that a copy from any tool's display works.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Reads a fingerprint as written by [`Display`](fmt::Display) or by
    /// common tools; `None` unless it is exactly 32 bytes of hex.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text.strip_prefix("sha256:").or_else(|| text.strip_prefix("SHA256:")).unwrap_or(text);
        dropsync_proto::digest::bytes_from_hex(&text.replace(':', "")).map(Self)
    }

    /// The first 16 hex digits, for log lines.
    pub fn short(&self) -> String {
        self.to_string()[..16].to_owned()
    }

    /// The client id of a session authenticated by this key: the first 16
    /// bytes. Pairing by it, rather than by the id a peer claims in HELLO,
    /// is what keeps a session from being taken over without the key.
    pub fn client_id(&self) -> ClientId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.0[..16]);
        id
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = String::with_capacity(64);
        dropsync_proto::digest::push_hex(&self.0, &mut hex);
        f.write_str(&hex)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.short())
    }
}

/// What an admitted client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Uploads, deletes and requests.
    ReadWrite,
    /// Requests only; it receives everything.
    ReadOnly,
}

impl Access {
    /// The reply to the first message of an upload or to a DELETE from a
    /// client with this access, when it is refused: a read-only client's
    /// changes get 0x0040, as if the file were locked, which every client
    /// already handles by keeping its change and counting it as not
    /// accepted (PROTOCOL.md section 7).
    pub fn refuses_change(self) -> Option<StatusCode> {
        match self {
            Access::ReadWrite => None,
            Access::ReadOnly => Some(StatusCode::LOCKED),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Access::ReadWrite => "rw",
            Access::ReadOnly => "ro",
        }
    }
}

/// One enrolled client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enrollee {
    /// Its certificate's fingerprint.
    pub fingerprint: Fingerprint,
    /// What it may do.
    pub access: Access,
    /// A name for people (may be empty).
    pub label: String,
}

/// Why a connection is refused before it sees anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Secure mode, and the connection is not TLS.
    Plaintext,
    /// Secure mode, and the peer presented no certificate.
    NoKey,
    /// Secure mode, and the peer's key is not enrolled (or was revoked).
    NotEnrolled,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Plaintext => "plaintext connection; this server admits enrolled clients over TLS only",
            Refusal::NoKey => "TLS without a client key; this server admits enrolled clients only",
            Refusal::NotEnrolled => "client key not enrolled",
        })
    }
}

/// The enrolled clients.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Enrolled {
    clients: Vec<Enrollee>,
}

/// A line of the enrolment file that cannot be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct BadEnrollment {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong with it.
    pub why: &'static str,
}

impl Enrolled {
    /// Reads the enrolment file. Comments and blank lines are skipped; a
    /// line that is not `fingerprint<TAB>rw|ro<TAB>label` is an error (the
    /// server then keeps the list it had, and says so, rather than admit or
    /// drop clients on a file it cannot read).
    pub fn parse(text: &str) -> Result<Self, BadEnrollment> {
        let mut clients: Vec<Enrollee> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why| BadEnrollment { line: i + 1, why };
            let mut fields = line.splitn(3, '\t');
            let fingerprint =
                fields.next().and_then(Fingerprint::parse).ok_or_else(|| bad("not a fingerprint (64 hex digits)"))?;
            let access = match fields.next() {
                Some("rw") => Access::ReadWrite,
                Some("ro") => Access::ReadOnly,
                _ => return Err(bad("access is neither rw nor ro")),
            };
            let label = sanitize_label(fields.next().unwrap_or(""));
            clients.retain(|c| c.fingerprint != fingerprint);
            clients.push(Enrollee { fingerprint, access, label });
        }
        Ok(Self { clients })
    }

    /// The file's text: what [`parse`](Self::parse) reads back.
    pub fn render(&self) -> String {
        let mut out = format!("{ENROLLED_HEADER}\n");
        for c in &self.clients {
            out.push_str(&format!("{}\t{}\t{}\n", c.fingerprint, c.access.word(), c.label));
        }
        out
    }

    /// True when nobody is enrolled (the assignment's open protocol, unless
    /// `--require-auth`).
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The enrolled clients, in the order they were enrolled.
    pub fn clients(&self) -> &[Enrollee] {
        &self.clients
    }

    /// The entry of `key`, if enrolled.
    pub fn get(&self, key: &Fingerprint) -> Option<&Enrollee> {
        self.clients.iter().find(|c| &c.fingerprint == key)
    }

    /// Enrols `key` (again, with new access and label, if it was).
    pub fn enroll(&mut self, key: Fingerprint, access: Access, label: &str) {
        self.clients.retain(|c| c.fingerprint != key);
        self.clients.push(Enrollee { fingerprint: key, access, label: sanitize_label(label) });
    }

    /// Revokes the clients that `who` names: a fingerprint, or a label.
    /// Returns those revoked.
    pub fn revoke(&mut self, who: &str) -> Vec<Enrollee> {
        let key = Fingerprint::parse(who);
        let (gone, kept) = self.clients.drain(..).partition(|c| Some(c.fingerprint) == key || c.label == who);
        self.clients = kept;
        gone
    }

    /// Secure mode: the server admits enrolled clients only. It is on once
    /// anyone is enrolled, or when the operator asks for it.
    pub fn secure(&self, require_auth: bool) -> bool {
        require_auth || !self.is_empty()
    }

    /// The rule of admission, checked when a connection's handshake is
    /// done, before it may send or receive any message: in the open mode
    /// everyone gets read-write (the assignment's protocol); in secure mode
    /// only a TLS connection from an enrolled key, with that key's access.
    pub fn admit(&self, require_auth: bool, tls: bool, key: Option<&Fingerprint>) -> Result<Access, Refusal> {
        if !self.secure(require_auth) {
            return Ok(Access::ReadWrite);
        }
        if !tls {
            return Err(Refusal::Plaintext);
        }
        let key = key.ok_or(Refusal::NoKey)?;
        self.get(key).map(|c| c.access).ok_or(Refusal::NotEnrolled)
    }
}

/// A label as kept: tabs, newlines and other control characters become
/// `_`, and it is cut to [`MAX_LABEL`] bytes on a character boundary.
pub fn sanitize_label(label: &str) -> String {
    let mut out = String::new();
    for ch in label.trim().chars().map(|c| if c.is_control() { '_' } else { c }) {
        if out.len() + ch.len_utf8() > MAX_LABEL {
            break;
        }
        out.push(ch);
    }
    out.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(b: u8) -> Fingerprint {
        Fingerprint([b; 32])
    }

    #[test]
    fn fingerprints_read_back_in_every_common_spelling() {
        let k = Fingerprint(core::array::from_fn(|i| (i * 7) as u8));
        let hex = k.to_string();
        assert_eq!(hex.len(), 64);
        assert_eq!(Fingerprint::parse(&hex), Some(k));
        assert_eq!(Fingerprint::parse(&format!("sha256:{}", hex.to_uppercase())), Some(k));
        let colons: Vec<String> = k.0.iter().map(|b| format!("{b:02X}")).collect();
        assert_eq!(Fingerprint::parse(&colons.join(":")), Some(k));
        assert_eq!(Fingerprint::parse(&hex[..62]), None);
        assert_eq!(Fingerprint::parse(&format!("{hex}0")), None);
        assert_eq!(Fingerprint::parse(&hex.replace('0', "g")), None);
        assert_eq!(k.client_id(), k.0[..16]);
    }

    #[test]
    fn open_mode_admits_everyone_and_secure_mode_only_enrolled_tls_keys() {
        let mut list = Enrolled::default();
        assert_eq!(list.admit(false, false, None), Ok(Access::ReadWrite));
        assert_eq!(list.admit(true, false, None), Err(Refusal::Plaintext));
        assert_eq!(list.admit(true, true, None), Err(Refusal::NoKey));
        assert_eq!(list.admit(true, true, Some(&key(1))), Err(Refusal::NotEnrolled));
        list.enroll(key(1), Access::ReadOnly, "phone");
        assert_eq!(list.admit(false, false, Some(&key(1))), Err(Refusal::Plaintext), "enrolling turns secure mode on");
        assert_eq!(list.admit(false, true, Some(&key(1))), Ok(Access::ReadOnly));
        assert_eq!(list.admit(false, true, Some(&key(2))), Err(Refusal::NotEnrolled));
    }

    #[test]
    fn revoke_by_fingerprint_or_label_and_enrol_again_replaces() {
        let mut list = Enrolled::default();
        list.enroll(key(1), Access::ReadWrite, "a");
        list.enroll(key(2), Access::ReadWrite, "b");
        list.enroll(key(1), Access::ReadOnly, "a2");
        assert_eq!(list.clients().len(), 2);
        assert_eq!(list.get(&key(1)).map(|c| c.access), Some(Access::ReadOnly));
        assert_eq!(list.revoke("b").len(), 1);
        assert_eq!(list.revoke(&key(1).to_string()).len(), 1);
        assert!(list.is_empty());
        assert!(list.revoke("nobody").is_empty());
    }

    #[test]
    fn bad_lines_are_errors_with_their_number() {
        let text = format!("{ENROLLED_HEADER}\n\n{}\trw\tok\nnonsense\n", key(1));
        assert_eq!(Enrolled::parse(&text), Err(BadEnrollment { line: 4, why: "not a fingerprint (64 hex digits)" }));
        let text = format!("{}\tadmin\tx\n", key(1));
        assert_eq!(Enrolled::parse(&text).map_err(|e| e.why), Err("access is neither rw nor ro"));
    }

    #[test]
    fn labels_cannot_break_the_file() {
        let mut list = Enrolled::default();
        list.enroll(key(3), Access::ReadWrite, "tab\there\nnewline");
        let back = Enrolled::parse(&list.render()).unwrap();
        assert_eq!(back, list);
        assert_eq!(back.clients()[0].label, "tab_here_newline");
        list.enroll(key(4), Access::ReadWrite, &"é".repeat(100));
        assert!(list.get(&key(4)).unwrap().label.len() <= MAX_LABEL);
    }

    proptest! {
        #[test]
        fn any_list_reads_back_as_rendered(entries in prop::collection::vec((any::<[u8; 32]>(), any::<bool>(), ".{0,80}"), 0..8)) {
            let mut list = Enrolled::default();
            for (k, ro, label) in &entries {
                list.enroll(Fingerprint(*k), if *ro { Access::ReadOnly } else { Access::ReadWrite }, label);
            }
            prop_assert_eq!(Enrolled::parse(&list.render()).unwrap(), list);
        }

        #[test]
        fn parsing_any_text_never_panics(text in ".{0,400}") {
            let _ = Enrolled::parse(&text);
            let _ = Fingerprint::parse(&text);
        }
    }
}
