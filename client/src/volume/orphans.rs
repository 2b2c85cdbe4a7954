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

use std::{sync::atomic::Ordering, time::Duration};

use tessera_common::{fs::RENEW_BATCH, Ino};
use tracing::warn;

use super::Volume;
use crate::{meta::names::Unlinked, Result};

impl Volume {
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
