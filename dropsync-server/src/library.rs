//! The server's synchronized META-DATA with per-file locks (ASSIGNMENT.md
//! "Synchronization", PROTOCOL.md section 6) on the local disk: the rules
//! are core's `library`; this opens its catalog and blob store.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use dropsync_core::library::WallTime;
use dropsync_core::locks::MemLockTable;
use dropsync_core::meta_server::{Catalog, MemCatalog};
use dropsync_core::CoreError;
use dropsync_io::dir_storage::DirStorage;
use dropsync_proto::metadata::{EntryState, Strong};
use dropsync_proto::Digest;

use crate::blobs::BlobStore;
use crate::clock;

/// Everything the server knows about files, with the rules of section 6
/// (core's `library`): the catalog in `<root>/meta` (or on PostgreSQL),
/// the contents in `<root>/blobs`.
pub type Library = dropsync_core::library::Library<Box<dyn Catalog>, BlobStore>;

/// Opens the storage under `root` (with the catalog on PostgreSQL when
/// `catalog_url` names one) and reconciles the blobs with the META-DATA
/// (adopts an older layout's blobs, removes orphans, reports missing ones).
pub fn open(
    root: &Path,
    catalog_url: Option<&str>,
    remote: Option<crate::s3::Remote>,
    gc_grace: std::time::Duration,
    conflict_copies: bool,
) -> Result<Library, CoreError> {
    let mut blobs = BlobStore::open(root)?;
    let in_bucket = remote.is_some();
    if let Some(r) = remote {
        let gc = catalog_url.map(|url| Arc::new(crate::pg_gc::PgGc::new(url, gc_grace)));
        blobs = blobs.with_remote(r, gc);
    }
    let catalog: Box<dyn Catalog> = match catalog_url {
        Some(url) => Box::new(crate::pg_catalog::PgCatalog::open(url)?),
        None => {
            let local = MemCatalog::open(DirStorage::new(root.join("meta"))?)?;
            adopt_legacy_blobs(&local, &blobs)?;
            Box::new(local)
        }
    };
    let (orphans, missing) = blobs.recover(catalog.contents().into_iter())?;
    if orphans > 0 {
        log::info!("removed {orphans} unreferenced blob(s) left by an interrupted commit or an older layout");
    }
    if !missing.is_empty() {
        log::error!("META-DATA refers to {} missing content blob(s)", missing.len());
    }
    if in_bucket {
        match blobs.sweep_remote(clock::now_ns().div_euclid(1_000_000_000)) {
            Ok(0) => {}
            Ok(n) => log::info!("removed {n} content(s) nothing refers to from the bucket"),
            Err(e) => log::warn!("cannot sweep the bucket for contents nothing refers to (tried at the next start): {e}"),
        }
    }
    // With the catalog on PostgreSQL, locks hold across the instances that
    // share it.
    let locks: Arc<dyn dropsync_core::locks::LockTable> = match catalog_url {
        Some(url) => Arc::new(crate::pg_locks::PgLockTable::new(url)),
        None => Arc::new(MemLockTable::new()),
    };
    Ok(Library::new(catalog, blobs, locks, conflict_copies))
}

/// The wall clock now, for a commit.
pub fn now() -> WallTime {
    WallTime { unix_ns: clock::now_ns() }
}

/// A store written before content was known by SHA-256 keeps blobs under
/// their MD5 and lines without a strong digest: each such file's blob is
/// hashed and adopted under its SHA-256 (`BlobStore::adopt_legacy`), the
/// digests are recorded in the table, and a snapshot makes them durable.
/// Content shared by several paths (one MD5 then) is hashed once.
fn adopt_legacy_blobs(catalog: &MemCatalog<DirStorage>, blobs: &BlobStore) -> Result<(), CoreError> {
    let legacy: Vec<(String, Digest)> = catalog.with_table(|t| {
        t.entries().filter(|e| e.state == EntryState::File && e.strong.is_none()).map(|e| (e.path.clone(), e.md5)).collect()
    });
    if legacy.is_empty() {
        return Ok(());
    }
    log::info!("adopting {} file(s) stored by MD5 under their SHA-256", legacy.len());
    let mut known: HashMap<Digest, Option<Strong>> = HashMap::new();
    for (path, md5) in legacy {
        let strong = match known.get(&md5) {
            Some(s) => *s,
            None => {
                let s = blobs.adopt_legacy(&md5).map_err(CoreError::Io)?;
                known.insert(md5, s);
                s
            }
        };
        match strong {
            Some(s) => {
                catalog.set_strong(&path, s);
            }
            None => log::error!("{path:?}: its content (MD5 {}) is missing", dropsync_proto::digest::to_hex(&md5)),
        }
    }
    catalog.compact()
}
