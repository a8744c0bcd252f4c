//! Who gets in (docs/PROTOCOL.md, "Secure mode"): the server's TLS
//! identity, the enrolment list it reads from `<root>/meta/clients` (and
//! reads again when `server enroll` or `server revoke` changes it), and the
//! admission of each connection by core's rule (`Enrolled::admit`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use dropsync_core::access::{Access, Enrolled, Refusal};
use dropsync_io::conn::Conn;
use dropsync_io::tls::{Fingerprint, Identity, ServerTls};

use crate::server::Server;
use crate::spawn_named;

/// How often the running server looks at the enrolment file: a revoked
/// client's sessions close within this and the time it takes to end them
/// (the issue asks for 1 s).
pub const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The enrolment list, under the storage root.
pub fn enrolled_path(root: &Path) -> PathBuf {
    root.join("meta").join("clients")
}

/// The server's key and certificate, under the storage root.
pub fn identity_path(root: &Path) -> PathBuf {
    root.join("meta").join("identity.pem")
}

/// Reads the enrolment list at `path`; a missing file is an empty list.
pub fn read_enrolled(path: &Path) -> Result<(Enrolled, String), String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let list = Enrolled::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((list, text))
}

/// The server's half of secure mode.
pub struct Gate {
    /// The TLS configuration both ports use.
    pub tls: ServerTls,
    /// This server's certificate fingerprint, which clients pin.
    pub fingerprint: Fingerprint,
    require_auth: bool,
    list: Arc<RwLock<Enrolled>>,
    path: PathBuf,
    /// The file's text when last read, to see a change.
    last_text: Mutex<String>,
}

impl Gate {
    /// Reads (or makes, `true`) the identity and reads the enrolment list.
    pub fn open(root: &Path, require_auth: bool) -> Result<(Self, bool), String> {
        let meta = root.join("meta");
        std::fs::create_dir_all(&meta).map_err(|e| format!("cannot create {}: {e}", meta.display()))?;
        let (identity, created) = Identity::load_or_create(&identity_path(root))
            .map_err(|e| format!("cannot read or make the server's key: {e}"))?;
        let path = enrolled_path(root);
        let (list, text) = read_enrolled(&path)?;
        let list = Arc::new(RwLock::new(list));
        let seen = list.clone();
        // Checked at every handshake: a key that is not admitted hears an
        // access_denied alert and sees nothing else.
        let gate = Arc::new(move |key: &Fingerprint| {
            let list = seen.read().unwrap_or_else(PoisonError::into_inner);
            list.admit(require_auth, true, Some(key)).is_ok()
        });
        let tls = ServerTls::new(&identity, gate).map_err(|e| format!("cannot set up TLS: {e}"))?;
        let gate = Self {
            tls,
            fingerprint: identity.fingerprint,
            require_auth,
            list,
            path,
            last_text: Mutex::new(text),
        };
        Ok((gate, created))
    }

    /// Core's admission rule for a connection whose handshake is done.
    pub fn admit(&self, conn: &Conn) -> Result<Access, Refusal> {
        self.admit_key(conn.is_tls(), conn.peer_fingerprint().as_ref())
    }

    /// The same for a session's connection, by what it showed.
    pub fn admit_key(&self, tls: bool, key: Option<&Fingerprint>) -> Result<Access, Refusal> {
        self.list.read().unwrap_or_else(PoisonError::into_inner).admit(self.require_auth, tls, key)
    }

    /// True when only enrolled clients get in.
    pub fn secure(&self) -> bool {
        self.list.read().unwrap_or_else(PoisonError::into_inner).secure(self.require_auth)
    }

    /// How many clients are enrolled.
    pub fn enrolled(&self) -> usize {
        self.list.read().unwrap_or_else(PoisonError::into_inner).clients().len()
    }

    /// Reads the list again if its file changed. `Ok(true)` when the list
    /// in force changed; a file that cannot be read leaves the old list in
    /// force (an error, for the log).
    pub fn reload(&self) -> Result<bool, String> {
        let mut last = self.last_text.lock().unwrap_or_else(PoisonError::into_inner);
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", self.path.display())),
        };
        if *last == text {
            return Ok(false);
        }
        *last = text.clone();
        let list = Enrolled::parse(&text)
            .map_err(|e| format!("{}: {e}; the list read before stays in force", self.path.display()))?;
        let mut cur = self.list.write().unwrap_or_else(PoisonError::into_inner);
        let changed = *cur != list;
        *cur = list;
        Ok(changed)
    }
}

/// Starts the thread that reads the enrolment list again when it changes
/// and ends the sessions it no longer admits as they are (a revoked key,
/// a plaintext or keyless session once the first client is enrolled, a
/// client whose access changed: it reconnects with the new one).
pub fn start_watch(server: Arc<Server>) -> io::Result<()> {
    spawn_named("gate", move || {
        while !server.shutting_down.load(Ordering::SeqCst) {
            std::thread::sleep(WATCH_EVERY);
            match server.gate.reload() {
                Ok(true) => enforce(&server),
                Ok(false) => {}
                Err(e) => log::error!("enrolment list: {e}"),
            }
        }
    })
    .map(drop)
}

fn enforce(server: &Server) {
    log::info!(
        "enrolment list changed: {} client(s); {}",
        server.gate.enrolled(),
        if server.gate.secure() { "secure mode" } else { "open mode" }
    );
    for s in server.all_sessions() {
        match server.gate.admit_key(s.tls, s.key.as_ref()) {
            Ok(access) if access == s.access => {}
            Ok(_) => server.end_session(&s, "its access changed; it reconnects with the new one"),
            Err(why) => server.end_session(&s, &format!("no longer admitted: {why}")),
        }
    }
}
