//! Files this mount has open after their last name went.
//!
//! POSIX keeps an unlinked file until its last handle closes, and
//! databases rely on it for temporary files. An unlink or rename names the
//! inodes this mount has open; the metadata service keeps such a file as
//! an orphan of this mount's session (see the metadata service's
//! `fs/orphans.rs`). Reads, writes and fsyncs through the open handles go
//! on as before. The mount renews the orphans' lease while it has any, and
//! releases each one when its last handle is closed; if the mount dies,
//! the lease runs out and the metadata service removes them.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        RwLock, RwLockReadGuard,
    },
    time::Duration,
};

use tessera_common::{fs::RENEW_BATCH, Ino};
use tracing::warn;

use super::Volume;
use crate::{meta::names::Unlinked, Result};

/// This mount's unlinks and renames, for opens that race them.
///
/// An unlink names the inodes this mount has open when it begins; a file
/// opened after that would be removed under its new handle (its reads
/// returning zeros). So an open registers its handle, waits for the
/// unlinks in flight (`gate`), and then asks the service whether the
/// inode still exists, unless no unlink finished since it got the inode
/// from the service itself (`finished`), as a create does.
#[derive(Default)]
pub(crate) struct Removals {
    gate: RwLock<()>,
    finished: AtomicU64,
}

/// Held by an unlink or rename from its list of open files to its answer.
pub(super) struct Removal<'a> {
    removals: &'a Removals,
    _in_flight: RwLockReadGuard<'a, ()>,
}

impl Drop for Removal<'_> {
    fn drop(&mut self) {
        self.removals.finished.fetch_add(1, Ordering::AcqRel);
    }
}

impl Removals {
    pub(super) fn begin(&self) -> Removal<'_> {
        Removal {
            removals: self,
            _in_flight: self.gate.read().expect("removals gate"),
        }
    }

    /// How many have finished; an open passes this from before it got its
    /// inode from the service.
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits for those in flight; true if any finished since `since`.
    fn settled_since(&self, since: Option<u64>) -> bool {
        drop(self.gate.write().expect("removals gate"));
        since != Some(self.finished())
    }
}

impl Volume {
    /// A file is opened as handle `fh`. `since` is `Removals::finished`
    /// from before the caller had the inode from the service (None: it
    /// came from the kernel's cache). A file that an unlink removed
    /// meanwhile is ENOENT, not an empty file.
    pub fn open_file(&self, ino: Ino, fh: u64, since: Option<u64>) -> Result<()> {
        self.register_handle(ino, fh);
        if self.inner.removals.settled_since(since) {
            if let Err(e) = self.inner.names.get_attr(self.id(), ino) {
                // As a close: an unlink that began after the handle was
                // registered may have made it an orphan of this mount.
                if let Err(r) = self.block_on(self.release_file(ino, fh)) {
                    warn!(volume = self.name(), ino, error = %r, "releasing a failed open failed");
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// See `Removals`.
    pub fn removals_finished(&self) -> u64 {
        self.inner.removals.finished()
    }

    /// Inodes this mount has open, for unlink and rename.
    pub(super) fn open_inos(&self) -> Vec<Ino> {
        self.inner
            .files
            .lock()
            .expect("files lock")
            .iter()
            .filter(|(_, e)| e.state.lock().expect("file state lock").handles.opens() > 0)
            .map(|(ino, _)| *ino)
            .collect()
    }

    /// Takes over the orphans an unlink or rename made.
    pub(super) fn adopt_orphans(&self, resp: &Unlinked) {
        if resp.orphaned.is_empty() {
            return;
        }
        for &ino in &resp.orphaned {
            self.inner.orphans.lock().expect("orphans lock").insert(ino);
            let still_open = self.existing_entry(ino).is_some_and(|e| {
                let mut st = e.state.lock().expect("file state lock");
                st.orphan = true;
                st.handles.opens() > 0
            });
            if !still_open {
                // Closed between the unlink and its answer.
                let vol = self.clone();
                self.inner.rt.spawn(async move {
                    if let Err(e) = vol.release_orphan(ino).await {
                        warn!(volume = vol.name(), ino, error = %e, "releasing an unlinked file failed");
                    }
                });
            }
        }
        if !self.inner.renewing.swap(true, Ordering::AcqRel) {
            // A third of the lease: two renewals may fail before it ends.
            let period = Duration::from_millis(resp.lease_ms / 3).max(Duration::from_millis(100));
            let vol = self.clone();
            self.inner
                .rt
                .spawn(async move { vol.renew_orphans(period).await });
        }
    }

    /// Renews the lease of this mount's orphans every `period` while it has
    /// any.
    async fn renew_orphans(self, period: Duration) {
        loop {
            tokio::time::sleep(period).await;
            let inos: Vec<Ino> = {
                let orphans = self.inner.orphans.lock().expect("orphans lock");
                if orphans.is_empty() {
                    // Under the lock: an orphan adopted after this starts
                    // its own renewal.
                    self.inner.renewing.store(false, Ordering::Release);
                    return;
                }
                orphans.iter().copied().collect()
            };
            for batch in inos.chunks(RENEW_BATCH) {
                let renewed = self
                    .inner
                    .meta
                    .renew_orphans(self.id(), self.inner.session, batch.to_vec())
                    .await;
                if let Err(e) = renewed {
                    warn!(volume = self.name(), error = %e, "renewing the lease of open unlinked files failed");
                }
            }
        }
    }

    /// The last handle of orphan `ino` in this mount closed: the file goes.
    pub(super) async fn release_orphan(&self, ino: Ino) -> Result<()> {
        self.inner
            .orphans
            .lock()
            .expect("orphans lock")
            .remove(&ino);
        self.inner.meta.release_orphan(self.id(), ino).await
    }
}

/// A session id for this mount: random, so that two mounts never share one.
pub(super) fn new_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}
