//! What a simulated server engine stands on, as `dropsync-server`'s
//! `library::open` chooses it: its own disk (the embedded catalog and the
//! local content store: one instance), or the shared database and bucket
//! (`--catalog postgres://... --blobs s3://...`: one of several instances).

use std::io;
use std::sync::{Arc, Mutex};

use dropsync_core::library::BlobStore;
use dropsync_core::locks::{LockTable, MemLockTable};
use dropsync_core::meta_server::{Catalog, MemCatalog};
use dropsync_proto::metadata::Strong;

use crate::blobs::{MemBlobs, SimTemp};
use crate::bucket::{Bucket, BucketBlobs, WallClock};
use crate::db::{self, SharedDbHandle};
use crate::server::Disk;
use crate::shared::{Handles, SharedCatalog, SharedLocks};

/// Where a server engine keeps its catalog, contents and locks.
#[derive(Clone)]
pub enum Backing {
    /// The only instance: its own disk, which survives its crashes.
    Local(Disk),
    /// One of several instances sharing a database and a bucket.
    Shared(SharedBacking),
}

/// The shared database and bucket, and what is the instance's own.
#[derive(Clone)]
pub struct SharedBacking {
    /// The database.
    pub db: SharedDbHandle,
    /// The bucket.
    pub bucket: Bucket,
    /// The run's wall clock.
    pub clock: WallClock,
    /// The instance's own disk is full.
    pub full: Arc<Mutex<bool>>,
}

/// An engine's content store: on its disk, or over the bucket.
pub enum Blobs {
    /// On its own disk.
    Local(MemBlobs),
    /// Over the shared bucket.
    Bucket(BucketBlobs),
}

impl Blobs {
    /// The bytes of `key`, if stored.
    pub fn get(&self, key: &Strong) -> Option<Arc<Vec<u8>>> {
        match self {
            Blobs::Local(b) => b.get(key),
            Blobs::Bucket(b) => b.get(key),
        }
    }

    /// Temps of uploads under way.
    pub fn temps_open(&self) -> usize {
        match self {
            Blobs::Local(b) => b.temps_open(),
            Blobs::Bucket(b) => b.temps_open(),
        }
    }
}

impl BlobStore for Blobs {
    type Temp = SimTemp;
    type Reader = Arc<Vec<u8>>;

    fn temp(&self) -> io::Result<SimTemp> {
        match self {
            Blobs::Local(b) => b.temp(),
            Blobs::Bucket(b) => b.temp(),
        }
    }
    fn open(&self, key: &Strong) -> io::Result<Arc<Vec<u8>>> {
        match self {
            Blobs::Local(b) => b.open(key),
            Blobs::Bucket(b) => b.open(key),
        }
    }
    fn strong_of(&self, temp: &SimTemp) -> Strong {
        MemBlobs::strong(temp.bytes())
    }
    fn install(&self, temp: SimTemp) -> io::Result<Strong> {
        match self {
            Blobs::Local(b) => b.install(temp),
            Blobs::Bucket(b) => b.install(temp),
        }
    }
    fn add_ref(&self, key: &Strong) {
        match self {
            Blobs::Local(b) => b.add_ref(key),
            Blobs::Bucket(b) => b.add_ref(key),
        }
    }
    fn drop_ref(&self, key: &Strong) {
        match self {
            Blobs::Local(b) => b.drop_ref(key),
            Blobs::Bucket(b) => b.drop_ref(key),
        }
    }
}

/// What an engine opens at start.
pub struct Opened {
    /// The catalog.
    pub catalog: Box<dyn Catalog>,
    /// The contents.
    pub blobs: Blobs,
    /// The locks.
    pub locks: Arc<dyn LockTable>,
    /// With a shared catalog: what the run reaches into the instance for.
    pub shared: Option<Handles>,
}

/// Opens what `backing` holds, as a server starting: the catalog, the
/// reference counts from it, the locks.
pub fn open(backing: &Backing) -> Result<Opened, String> {
    match backing {
        Backing::Local(disk) => {
            let catalog = MemCatalog::open(disk.catalog.clone()).map_err(|e| format!("catalog: {e}"))?;
            disk.blobs.reset_refs();
            for k in catalog.contents() {
                disk.blobs.add_ref(&k);
            }
            disk.blobs.remove_orphans();
            let locks: Arc<dyn LockTable> = Arc::new(MemLockTable::new());
            Ok(Opened { catalog: Box::new(catalog), blobs: Blobs::Local(disk.blobs.clone()), locks, shared: None })
        }
        Backing::Shared(s) => {
            let session = db::lock(&s.db).open_session();
            let catalog = SharedCatalog::open(s.db.clone(), session).map_err(|e| format!("catalog: {e}"))?;
            let blobs = BucketBlobs::new(s.bucket.clone(), s.db.clone(), s.clock.clone(), s.full.clone());
            for k in catalog.contents() {
                blobs.add_ref(&k);
            }
            let shared_locks = Arc::new(SharedLocks::new(s.db.clone()));
            let handles = Handles { view: catalog.view(), session, locks: shared_locks.clone() };
            let locks: Arc<dyn LockTable> = shared_locks;
            Ok(Opened { catalog: Box::new(catalog), blobs: Blobs::Bucket(blobs), locks, shared: Some(handles) })
        }
    }
}
