//! Group commit: one session's changes that arrived together are committed
//! as one batch, which shares one durable write of the catalog (and one
//! sync of the blob folder) instead of paying for each change alone. The
//! rules of each change are the ones of a single commit
//! ([`Library::commit_upload`], [`Library::commit_copy`],
//! [`Library::delete`]), applied in the order the changes came; only their
//! durability is shared. No change of a batch may be replied to, or queued
//! for another client, before [`Library::commit_batch`] returns: it returns
//! once all of them would survive a crash, or none would.

use std::io;
use std::sync::{Mutex, PoisonError};

use dropsync_proto::Digest;

use super::{BlobStore, Committed, Library, WallTime};
use crate::meta_server::Catalog;
use crate::stale::SeenVersions;
use crate::CoreError;

/// One change of a batch. The caller holds the path's lock until the batch
/// is committed, and an upload's temp holds data already durable.
#[derive(Debug)]
pub enum Pending<T> {
    /// An upload whose whole-file MD5 checked out.
    Upload {
        /// The path.
        path: String,
        /// Its content.
        temp: T,
        /// Its MD5 and size.
        md5: Digest,
        /// Bytes.
        size: u64,
    },
    /// COPY [ext] of `from`'s content, MD5 `md5`.
    Copy {
        /// The path.
        path: String,
        /// The source.
        from: String,
        /// The source's MD5, as the client named it.
        md5: Digest,
    },
    /// A DELETE.
    Delete {
        /// The path.
        path: String,
    },
}

impl<T> Pending<T> {
    /// The path the change is to.
    pub fn path(&self) -> &str {
        match self {
            Pending::Upload { path, .. } | Pending::Copy { path, .. } | Pending::Delete { path } => path,
        }
    }
}

impl<C: Catalog, B: BlobStore> Library<C, B> {
    /// Commits `changes`, in order, for the session whose versions seen
    /// are `seen` and whose label is `label`; returns each one's outcome,
    /// in the same order. With a catalog that commits each change durably
    /// by itself (`Catalog::begin_batch` false), they are committed one by
    /// one. Otherwise they share the durable writes, and if those fail,
    /// every change of the batch is undone (the versions seen with it) and
    /// reported failed; contents stored for them are only freed at the
    /// next start.
    pub fn commit_batch(
        &self,
        changes: Vec<Pending<B::Temp>>,
        seen: &Mutex<SeenVersions>,
        label: &str,
        now: WallTime,
    ) -> Vec<Result<Committed, CoreError>> {
        let _serial = self.commit_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let batched = self.catalog.begin_batch();
        let mut recorded = Vec::with_capacity(if batched { changes.len() } else { 0 });
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in changes {
            if batched {
                let before = seen.lock().unwrap_or_else(PoisonError::into_inner).recorded(change.path());
                recorded.push((change.path().to_owned(), before));
            }
            let outcome = match change {
                Pending::Upload { path, temp, md5, size } => {
                    self.upload_held(&path, temp, (md5, size), (seen, label), now, batched)
                }
                Pending::Copy { path, from, md5 } => self.copy_held(&path, &from, md5, (seen, label), now),
                Pending::Delete { path } => self.delete_held(&path, seen, now),
            };
            outcomes.push(outcome);
        }
        if !batched {
            return outcomes;
        }
        let durable = self.blobs.sync_installed().map_err(CoreError::Io).and_then(|()| self.catalog.end_batch());
        let Err(e) = durable else {
            return outcomes;
        };
        // Undone: the catalog put its lines back; so are the versions seen.
        let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
        for (path, before) in recorded.into_iter().rev() {
            seen.restore(&path, before);
        }
        let why = e.to_string();
        outcomes
            .into_iter()
            .map(|o| match o {
                Ok(Committed::New { .. }) => Err(CoreError::Io(io::Error::other(why.clone()))),
                other => other,
            })
            .collect()
    }
}
