//! Deferred writes. A database commits by writing a few pages (its log's
//! tail, a table's page) and calling fsync; stored as a stripe, each such
//! flush costs a shard write and an fdatasync on every node, then the
//! metadata transaction. A flush of at most `DEFERRED_MAX` bytes into a
//! file larger than that is instead an inline block: the commit's
//! transaction, durable in the metadata service's WAL, is all the fsync
//! waits for (as Ceph's BlueStore defers small writes through its RocksDB
//! WAL). Its durability is the metadata service's, the same as the file's
//! names and slices.
//!
//! The bytes are moved to the nodes later: by the merge pass once the file
//! is quiet, and while it is being written once `DESTAGE_AT` bytes of it
//! are deferred (`merge.rs`, `Pass::Deferred`). A file with
//! `DEFERRED_PER_FILE` bytes deferred and not yet moved (the nodes cannot
//! take them) has its flushes stored as stripes again, so what one file
//! keeps in the metadata service stays bounded.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use tessera_common::{Ino, DEFERRED_MAX};
use tracing::debug;

use super::{merge::Pass, pipeline::Part};
use crate::volume::{FileEntry, Volume};

/// Deferred bytes of a file at which they are moved while it is written.
pub(crate) const DESTAGE_AT: u64 = 2 << 20;
/// Deferred writes of a file unchanged this long were left by their mount
/// (it died, or could not move them): a mount that fetches the file's
/// slices moves them. (Not sooner: the file's writer may be at work, and
/// two mounts moving the same bytes make the service refuse one.)
pub(crate) const LEFT_AFTER: Duration = Duration::from_secs(5);
/// How long a file's failed move holds back the next.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Deferred bytes of a file past which its flushes are stripes again.
pub(crate) const DEFERRED_PER_FILE: u64 = 8 << 20;

impl Volume {
    /// Whether the parts of a block (all but those kept inline anyway)
    /// are deferred writes: at most `DEFERRED_MAX` bytes in all, each into
    /// a file larger than that (a whole small file is a stripe, as it
    /// would be on its own), each file under its bound.
    pub(super) fn may_defer<'a>(&self, mut parts: impl Iterator<Item = &'a Part>) -> bool {
        if !self.inner.deferred_writes {
            return false;
        }
        let mut total = 0;
        let all = parts.all(|p| {
            total += p.pending.len();
            let cached_size = p
                .entry
                .slices
                .lock()
                .expect("slices lock")
                .1
                .as_ref()
                .map_or(0, |s| s.size);
            let committed_size = p.entry.committed_size.load(Ordering::Acquire);
            p.end().max(cached_size).max(committed_size) > DEFERRED_MAX as u64
                && p.entry.deferred.load(Ordering::Acquire) < DEFERRED_PER_FILE
        });
        all && total > 0 && total <= DEFERRED_MAX
    }

    /// `bytes` of `ino` were committed as deferred writes: they are moved
    /// to the nodes now if enough of them wait.
    pub(super) fn deferred_committed(&self, ino: Ino, e: &Arc<FileEntry>, bytes: u64) {
        e.deferred.fetch_add(bytes, Ordering::AcqRel);
        let m = &self.inner.merges;
        m.deferred.lock().expect("merges lock").insert(ino);
        self.destage_if_due(ino, e);
    }

    fn destage_if_due(&self, ino: Ino, e: &Arc<FileEntry>) {
        let m = &self.inner.merges;
        if e.deferred.load(Ordering::Acquire) < DESTAGE_AT
            || m.leaving.load(Ordering::Acquire)
            || e.destaging.swap(true, Ordering::AcqRel)
        {
            return;
        }
        if !m.moving.lock().expect("merges lock").insert(ino) {
            // Its entry was dropped and made again while a move ran.
            e.destaging.store(false, Ordering::Release);
            return;
        }
        let (vol, e) = (self.clone(), e.clone());
        tokio::spawn(async move {
            let m = &vol.inner.merges;
            // Not alongside a quiet pass over the file (which moves them),
            // nor once the mount is going.
            while e.deferred.load(Ordering::Acquire) >= DESTAGE_AT
                && !vol.merging(ino)
                && !m.leaving.load(Ordering::Acquire)
            {
                match vol.merge_entry(ino, &e, Pass::Deferred).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(err) => {
                        // Written over meanwhile, or the nodes are short:
                        // a commit of the file tries again, not at once.
                        vol.invalidate(ino);
                        debug!(volume = vol.name(), ino, error = %err, "moving deferred writes stopped");
                        tokio::time::sleep(RETRY_AFTER).await;
                        break;
                    }
                }
            }
            m.moving.lock().expect("merges lock").remove(&ino);
            e.destaging.store(false, Ordering::Release);
        });
    }
}
