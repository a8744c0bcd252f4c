//! The client's half of secure mode (docs/PROTOCOL.md, "Secure mode"): its
//! own key, made on first run and kept in `.dropsync/identity.pem`, and the
//! server's fingerprint it pins, ssh-style, in `.dropsync/server-fingerprint`:
//! given with `--server-fingerprint`, or taken on first use when the user
//! asks for that with `--trust-first-use`. Once a fingerprint is pinned,
//! every connection is TLS to that key and nothing else: a pinned client
//! never falls back to the plain protocol.
//!
//! `client fingerprint FOLDER` prints this client's fingerprint, which the
//! server's `server enroll` takes.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use dropsync_io::tls::{Fingerprint, Identity, Pin};

use crate::paths::STATE_DIR;

/// This client's key and certificate, in its state folder.
const IDENTITY_FILE: &str = "identity.pem";

/// The pinned server fingerprint, in its state folder.
const PIN_FILE: &str = "server-fingerprint";

/// This client's key and what it expects of the server's.
#[derive(Debug)]
pub struct Trust {
    /// Presented to the server on every TLS connection.
    pub identity: Identity,
    /// `None`: the plain protocol (nothing pinned, nothing asked for).
    pin: Mutex<Option<Pin>>,
    pin_file: PathBuf,
}

impl Trust {
    /// Reads or makes this client's key in `root`'s state folder and works
    /// out the pin: the flag's (then kept), else the one kept, else first
    /// use when asked for, else none.
    pub fn prepare(root: &Path, flag: Option<Fingerprint>, first_use: bool) -> Result<Self, String> {
        let state = root.join(STATE_DIR);
        let (identity, new) = Identity::load_or_create(&state.join(IDENTITY_FILE))
            .map_err(|e| format!("cannot read or make this client's key: {e}"))?;
        let fp = identity.fingerprint;
        log::info!(
            "this client's fingerprint: {fp}{}; a server in secure mode admits it after `server enroll {fp}`",
            if new { " (new key)" } else { "" }
        );
        let pin_file = state.join(PIN_FILE);
        let kept = match fs::read_to_string(&pin_file) {
            Ok(text) => Some(Fingerprint::parse(&text).ok_or_else(|| {
                format!("{} holds no fingerprint; remove it, or pin with --server-fingerprint", pin_file.display())
            })?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("cannot read {}: {e}", pin_file.display())),
        };
        let pin = match (flag, kept) {
            (Some(given), kept) => {
                if kept.is_some_and(|k| k != given) {
                    log::warn!("--server-fingerprint replaces the fingerprint pinned before in {}", pin_file.display());
                }
                if kept != Some(given) {
                    keep(&pin_file, given).map_err(|e| format!("cannot write {}: {e}", pin_file.display()))?;
                }
                Some(Pin::Known(given))
            }
            (None, Some(k)) => Some(Pin::Known(k)),
            (None, None) if first_use => Some(Pin::FirstUse),
            (None, None) => None,
        };
        if pin.is_some() {
            dropsync_io::tls::warm_up();
        }
        Ok(Self { identity, pin: Mutex::new(pin), pin_file })
    }

    /// What the next connection expects of the server; `None` for plain.
    pub fn pin(&self) -> Option<Pin> {
        *self.pin.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records the fingerprint the server showed: on first use it becomes
    /// the pin, kept for every later connection and run.
    pub fn shown(&self, server: Fingerprint) -> io::Result<()> {
        let mut pin = self.pin.lock().unwrap_or_else(PoisonError::into_inner);
        if *pin == Some(Pin::FirstUse) {
            keep(&self.pin_file, server)?;
            log::warn!("pinned the server's fingerprint {server} on first use (--trust-first-use); check it against the server's log");
            *pin = Some(Pin::Known(server));
        }
        Ok(())
    }
}

/// Writes the pin file whole or not at all.
fn keep(path: &Path, fp: Fingerprint) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp)?;
    f.write_all(format!("{fp}\n").as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

/// `client fingerprint FOLDER`: prints this client's fingerprint, making
/// its key (and the state folder) if it has none yet, so that it can be
/// enrolled before the client first runs. `None` for any other command line.
pub fn command(args: &[String]) -> Option<Result<String, String>> {
    let [_, word, folder] = args else { return None };
    if word != "fingerprint" {
        return None;
    }
    if folder.starts_with('-') {
        return Some(Err("usage: client fingerprint FOLDER (prints this client's key fingerprint, making the key if \
                         needed, for `server enroll`)"
            .into()));
    }
    let state = Path::new(folder).join(STATE_DIR);
    Some(
        fs::create_dir_all(&state)
            .map_err(|e| format!("cannot create {}: {e}", state.display()))
            .and_then(|()| Identity::load_or_create(&state.join(IDENTITY_FILE)).map_err(|e| e.to_string()))
            .map(|(id, _)| id.fingerprint.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ds-trust-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join(STATE_DIR)).unwrap();
        dir
    }

    #[test]
    fn nothing_pinned_and_nothing_asked_is_plain_and_the_key_stays() {
        let root = folder("plain");
        let t = Trust::prepare(&root, None, false).unwrap();
        assert_eq!(t.pin(), None);
        let again = Trust::prepare(&root, None, false).unwrap();
        assert_eq!(again.identity.fingerprint, t.identity.fingerprint);
        let _ = fs::remove_dir_all(&root);
    }

    #[test]
    fn first_use_pins_what_the_server_shows_for_every_later_run() {
        let root = folder("tofu");
        let t = Trust::prepare(&root, None, true).unwrap();
        assert_eq!(t.pin(), Some(Pin::FirstUse));
        let server = Fingerprint([7; 32]);
        t.shown(server).unwrap();
        assert_eq!(t.pin(), Some(Pin::Known(server)));
        t.shown(Fingerprint([8; 32])).unwrap();
        assert_eq!(t.pin(), Some(Pin::Known(server)), "a pin is never replaced by what a server shows");
        let later = Trust::prepare(&root, None, false).unwrap();
        assert_eq!(later.pin(), Some(Pin::Known(server)), "pinned for good: no plain fallback");
        let flag = Fingerprint([9; 32]);
        assert_eq!(Trust::prepare(&root, Some(flag), false).unwrap().pin(), Some(Pin::Known(flag)));
        assert_eq!(Trust::prepare(&root, None, false).unwrap().pin(), Some(Pin::Known(flag)));
        fs::write(root.join(STATE_DIR).join(PIN_FILE), "garbage").unwrap();
        assert!(Trust::prepare(&root, None, false).unwrap_err().contains("holds no fingerprint"));
        let _ = fs::remove_dir_all(&root);
    }
}
