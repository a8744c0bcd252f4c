//! `server enroll`, `server revoke`, `server clients` and `server
//! fingerprint`: the enrolment list from the command line (README, "Running
//! it for real").
//!
//! They edit `<root>/meta/clients` under a file lock, written whole or not
//! at all, whether or not a server is running; a running server reads the
//! file again within its admin poll (200 ms) and closes the sessions of a
//! revoked client.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Parser;
use dropsync_core::access::{Access, Enrolled, Fingerprint};
use dropsync_io::tls::Identity;

use crate::gate::{enrolled_path, identity_path, read_enrolled};

/// `server enroll [--root DIR] [--read-only] [--label NAME] FINGERPRINT`
#[derive(Parser, Debug)]
#[command(
    name = "server enroll",
    about = "Admits the client with FINGERPRINT (its log and `client fingerprint` show it); from then on the \
             server admits enrolled clients only, over TLS"
)]
struct EnrollArgs {
    /// The server's storage root.
    #[arg(long, default_value = "dropsync-data")]
    root: PathBuf,
    /// It receives everything; its uploads and deletes are refused.
    #[arg(long)]
    read_only: bool,
    /// A name for it, for `server clients`, logs and `server revoke`.
    #[arg(long, default_value = "")]
    label: String,
    /// Its certificate's SHA-256 fingerprint (64 hex digits).
    fingerprint: String,
}

/// `server revoke [--root DIR] WHO`
#[derive(Parser, Debug)]
#[command(name = "server revoke", about = "Removes a client (by fingerprint or label); its sessions close within 1 s")]
struct RevokeArgs {
    /// The server's storage root.
    #[arg(long, default_value = "dropsync-data")]
    root: PathBuf,
    /// A fingerprint, or the label it was enrolled with.
    who: String,
}

/// `server clients [--root DIR]` and `server fingerprint [--root DIR]`
#[derive(Parser, Debug)]
struct RootArgs {
    /// The server's storage root.
    #[arg(long, default_value = "dropsync-data")]
    root: PathBuf,
}

/// Runs one of the enrolment commands if `argv` names one: `Some` with
/// what to print (or the error), `None` otherwise.
pub fn command(argv: &[String]) -> Option<Result<String, String>> {
    let rest = argv.get(1..).unwrap_or_default();
    let result = match argv.get(1).map(String::as_str) {
        Some("enroll") => EnrollArgs::try_parse_from(rest).map(|a| enroll(&a)),
        Some("revoke") => RevokeArgs::try_parse_from(rest).map(|a| revoke(&a.root, &a.who)),
        Some("clients") => RootArgs::try_parse_from(rest).map(|a| clients(&a.root)),
        Some("fingerprint") => RootArgs::try_parse_from(rest).map(|a| fingerprint(&a.root)),
        _ => return None,
    };
    Some(result.unwrap_or_else(|e| Err(e.render().to_string().trim_end().to_owned())))
}

fn enroll(a: &EnrollArgs) -> Result<String, String> {
    let key = Fingerprint::parse(&a.fingerprint)
        .ok_or_else(|| format!("{:?} is not a fingerprint (64 hex digits, as the client logs it)", a.fingerprint))?;
    let access = if a.read_only { Access::ReadOnly } else { Access::ReadWrite };
    edit(&a.root, |list| {
        let first = list.is_empty();
        list.enroll(key, access, &a.label);
        let what = if a.read_only { "read-only" } else { "read-write" };
        let mut msg = format!("enrolled {key} ({what}{})", label_note(&a.label));
        if first {
            msg.push_str("\nsecure mode is on: from now on only enrolled clients get in, over TLS");
        }
        Ok(msg)
    })
}

fn label_note(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!(", {label:?}")
    }
}

fn revoke(root: &Path, who: &str) -> Result<String, String> {
    edit(root, |list| {
        let gone = list.revoke(who);
        if gone.is_empty() {
            return Err(format!("no enrolled client is {who:?} (see `server clients`)"));
        }
        let mut msg = String::new();
        for c in &gone {
            msg.push_str(&format!("revoked {}{}\n", c.fingerprint, label_note(&c.label)));
        }
        if list.is_empty() {
            msg.push_str("nobody is enrolled now: the server speaks the open protocol unless it runs with --require-auth\n");
        }
        Ok(msg.trim_end().to_owned())
    })
}

fn clients(root: &Path) -> Result<String, String> {
    let (list, _) = read_enrolled(&enrolled_path(root))?;
    if list.is_empty() {
        return Ok("nobody is enrolled (open mode unless --require-auth)".into());
    }
    let mut out = String::new();
    for c in list.clients() {
        let what = if c.access == Access::ReadOnly { "ro" } else { "rw" };
        out.push_str(&format!("{}  {what}  {}\n", c.fingerprint, c.label));
    }
    Ok(out.trim_end().to_owned())
}

fn fingerprint(root: &Path) -> Result<String, String> {
    let path = identity_path(root);
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let (id, _) = Identity::load_or_create(&path).map_err(|e| format!("cannot read or make the server's key: {e}"))?;
    Ok(id.fingerprint.to_string())
}

/// Reads the list, changes it with `change` and writes it back, holding
/// the list's lock throughout so that two commands at once both count.
fn edit(root: &Path, change: impl FnOnce(&mut Enrolled) -> Result<String, String>) -> Result<String, String> {
    let path = enrolled_path(root);
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("clients.lock"))
        .and_then(|f| f.lock().map(|()| f))
        .map_err(|e| format!("cannot lock the enrolment list: {e}"))?;
    let (mut list, _) = read_enrolled(&path)?;
    let msg = change(&mut list)?;
    let tmp = path.with_extension("tmp");
    let written = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(list.render().as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| fs::File::open(&dir).and_then(|d| d.sync_all()));
    drop(lock);
    written.map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<String, String> {
        let argv: Vec<String> = std::iter::once("server").chain(args.iter().copied()).map(String::from).collect();
        command(&argv).expect("an enrolment command")
    }

    #[test]
    fn enroll_list_and_revoke_edit_one_file() {
        let dir = std::env::temp_dir().join(format!("ds-enrol-{}", std::process::id()));
        let root = dir.to_str().unwrap();
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        assert!(run(&["clients", "--root", root]).unwrap().contains("nobody"));
        assert!(run(&["enroll", "--root", root, "--label", "laptop", &a]).unwrap().contains("secure mode is on"));
        assert!(!run(&["enroll", "--root", root, "--read-only", &b]).unwrap().contains("secure mode"));
        let listed = run(&["clients", "--root", root]).unwrap();
        assert!(listed.contains(&format!("{a}  rw  laptop")) && listed.contains(&format!("{b}  ro")), "{listed}");
        assert!(run(&["enroll", "--root", root, "xyz"]).unwrap_err().contains("not a fingerprint"));
        assert!(run(&["revoke", "--root", root, "laptop"]).unwrap().contains(&a));
        assert!(run(&["revoke", "--root", root, "laptop"]).unwrap_err().contains("no enrolled client"));
        assert!(run(&["revoke", "--root", root, &b]).unwrap().contains("nobody is enrolled"));
        let fp = run(&["fingerprint", "--root", root]).unwrap();
        assert_eq!(run(&["fingerprint", "--root", root]).unwrap(), fp, "made once, then kept");
        assert!(Fingerprint::parse(&fp).is_some());
        let _ = fs::remove_dir_all(&dir);
    }
}
