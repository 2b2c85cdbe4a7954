//! The write path: buffering writes and making them durable.
//!
//! `write` copies bytes into the file's buffer (`buffer.rs`). Every full
//! 4 MiB is cut into a block and stored in the background, several blocks
//! in flight within a budget (the back-pressure); a flush (close, fsync)
//! cuts what is left (`pipeline.rs`). A flush that leaves a small remainder
//! does not store it alone: the small remainders of all files flushed at
//! about the same time share one block (`packer.rs`, a group commit).
//!
//! Each file's blocks commit in the order they were cut, so a newer slice
//! always sits on top of an older one; a close or fsync is acknowledged
//! only once the file's last block committed. A failed block makes the
//! next write, flush or fsync of every open handle of the file fail with
//! its errno, once per handle.
//!
//! A block that could not be stored or committed because a service was
//! unreachable loses nothing: its bytes go back to the buffer, ahead of
//! everything written since, and are tried again by the next flush or
//! fsync and by a background retry; every flush and fsync fails while they
//! wait, and writes fail once `HELD_MAX` bytes wait. A later block of the
//! file never commits over an earlier one that failed.

pub(crate) mod buffer;
mod deferred;
mod handles;
pub(crate) mod merge;
pub(crate) mod packer;
mod pipeline;

use std::{sync::Arc, time::Duration};

use futures::future::join_all;
use tessera_common::{Ino, MAX_BLOCK, MAX_FILE_SIZE};
use tracing::warn;

use crate::{
    volume::{FileEntry, Volume},
    ClientError, Result,
};
pub(crate) use deferred::LEFT_AFTER;
use packer::PACK_MAX;
use pipeline::cut_part;

/// While bytes wait for a service to come back, writes fail once this many
/// are buffered for the file.
const HELD_MAX: usize = 64 << 20;
/// The first background retry of bytes put back, and the longest wait
/// between two.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(10);

impl Volume {
    /// Buffers a write through open handle `fh`; stores full blocks in
    /// the background.
    pub async fn write(&self, ino: Ino, fh: u64, offset: u64, data: &[u8]) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(ClientError::TooLarge { ino, offset });
        }
        let e = self.entry(ino);
        let full = {
            let mut st = e.state.lock().expect("file state lock");
            st.handles.take(ino, Some(fh))?;
            if st.stalled() && st.dirty_bytes + data.len() > HELD_MAX {
                st.held_back(ino)?;
            }
            st.write(offset, data)
        };
        if full {
            self.cut_blocks(ino, &e, false).await?;
        }
        Ok(())
    }

    /// Makes everything written to `ino` durable and visible, and reports
    /// a failed write handle `fh` did not report yet (`fh` None: a flush
    /// of the mount's own, which reports only bytes it could not store).
    pub async fn flush(&self, ino: Ino, fh: Option<u64>) -> Result<()> {
        let stored = self.store_buffered(ino).await;
        let reported = match self.existing_entry(ino) {
            Some(e) => e
                .state
                .lock()
                .expect("file state lock")
                .handles
                .take(ino, fh),
            None => Ok(()),
        };
        reported.and(stored)
    }

    /// Whether bytes of `ino` wait to be stored again (a store or commit
    /// failed for want of a node or the service): until they land, no
    /// lock of the file may go, or another mount could write the range
    /// first and have these land over it.
    pub(crate) fn bytes_wait(&self, ino: Ino) -> bool {
        self.existing_entry(ino).is_some_and(|e| {
            let st = e.state.lock().expect("file state lock");
            st.put_back_pending()
        })
    }

    /// Whether this mount has writes of `ino` not committed yet.
    pub(crate) fn has_buffered(&self, ino: Ino) -> bool {
        self.existing_entry(ino).is_some_and(|e| {
            let st = e.state.lock().expect("file state lock");
            !st.dirty.is_empty() || !st.inflight.is_empty()
        })
    }

    /// Stores and commits what is buffered for `ino`, waiting for what is
    /// in flight. Fails when bytes could not be stored and wait in the
    /// buffer; a write that failed otherwise stays to be reported by the
    /// handles.
    pub(crate) async fn store_buffered(&self, ino: Ino) -> Result<()> {
        let Some(e) = self.existing_entry(ino) else {
            return Ok(());
        };
        loop {
            if !self.has_buffered(ino) {
                return Ok(());
            }
            // Bytes put back go one block at a time, after what is in
            // flight: a round each, until one fails again.
            let (stalled, holds) = {
                let st = e.state.lock().expect("file state lock");
                (st.stalled(), st.handles.holds)
            };
            if stalled {
                self.wait_inflight(ino, &e).await;
            }
            self.cut_blocks(ino, &e, true).await?;
            self.wait_inflight(ino, &e).await;
            let st = e.state.lock().expect("file state lock");
            if st.handles.holds != holds {
                return st.held_back(ino);
            }
            if !stalled {
                return Ok(());
            }
        }
    }

    /// Waits for the file's last block in flight.
    async fn wait_inflight(&self, ino: Ino, e: &FileEntry) {
        let last = e
            .state
            .lock()
            .expect("file state lock")
            .inflight
            .last()
            .cloned();
        if let Some(p) = last {
            let _ = p.wait(ino).await;
        }
    }

    /// Tries bytes put back again in the background, less and less often,
    /// until they are stored or the file is gone: they must not wait for
    /// an fsync that may never come (the file is closed).
    pub(super) fn retry_later(&self, ino: Ino) {
        let vol = self.clone();
        tokio::spawn(async move {
            let mut delay = RETRY_FIRST;
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                let Some(e) = vol.existing_entry(ino) else {
                    return;
                };
                // Its failure is the file's to report; whether bytes still
                // wait is what counts here.
                let _ = vol.store_buffered(ino).await;
                let mut st = e.state.lock().expect("file state lock");
                if !st.stalled() {
                    st.retrying = false;
                    break;
                }
            }
            vol.forget_if_idle(ino);
        });
    }

    /// Flushes every file with buffered data (unmount), together, so that
    /// their small remainders share blocks; fails with a failed write no
    /// handle reported.
    pub async fn flush_all(&self) -> Result<()> {
        let inos: Vec<Ino> = self
            .inner
            .files
            .lock()
            .expect("files lock")
            .keys()
            .copied()
            .collect();
        let results = join_all(inos.into_iter().map(|ino| async move {
            self.flush(ino, None).await?;
            match self.existing_entry(ino) {
                Some(e) => e
                    .state
                    .lock()
                    .expect("file state lock")
                    .handles
                    .unreported(ino),
                None => Ok(()),
            }
        }))
        .await;
        results
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Flushes everything before an unmount, from a thread outside the
    /// runtime. The metadata service syncs acknowledged changes within
    /// milliseconds on its own: asking it to sync now only hurries it, and
    /// its failure (a service already stopped) must not keep a mount with
    /// nothing left to store from going.
    pub fn flush_for_unmount(&self) -> Result<()> {
        let flushed = self.block_on(self.flush_all());
        // Deferred writes left for a quiet pass that will not come (not
        // when the flush failed: the service or the nodes are away).
        if flushed.is_ok() {
            self.block_on(self.move_deferred_before_leaving());
        }
        if let Err(e) = self.sync() {
            tracing::debug!(volume = self.name(), error = %e, "syncing the metadata service at unmount failed");
        }
        flushed
    }

    /// Cuts full blocks (or, with `all`, everything) and starts storing them.
    /// Waits for room in the in-flight budget: that is the back-pressure.
    async fn cut_blocks(&self, ino: Ino, e: &Arc<FileEntry>, all: bool) -> Result<()> {
        loop {
            if all {
                // A small remainder needs no budget: its bytes are buffered
                // already, and the packer stores one block at a time.
                // Queued while the file's lock is held, so that two
                // flushes of the file queue their parts in cut order.
                let mut st = e.state.lock().expect("file state lock");
                if st.dirty_bytes <= PACK_MAX {
                    if let Some(part) = cut_part(&mut st, ino, e) {
                        self.pack(part);
                    }
                    return Ok(());
                }
                drop(st);
            }
            let permit = self
                .inner
                .inflight
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| ClientError::ShuttingDown {
                    volume: self.name().to_string(),
                })?;
            let part = {
                let mut st = e.state.lock().expect("file state lock");
                // A writer does not retry bytes put back: a flush does.
                if !all && (st.dirty_bytes < MAX_BLOCK || st.stalled()) {
                    return Ok(());
                }
                match cut_part(&mut st, ino, e) {
                    Some(part) => part,
                    None => return Ok(()),
                }
            };
            let vol = self.clone();
            tokio::spawn(async move {
                let parts = [part];
                let results = vol.store_and_commit(&parts).await;
                drop(permit);
                for (part, result) in parts.iter().zip(results) {
                    vol.settle(part, result).await;
                }
            });
        }
    }
}

/// Logs a failed write of `ino` once, where it is handled.
fn log_failure(vol: &Volume, ino: Ino, err: &ClientError, kept: bool) {
    if kept {
        warn!(volume = %vol.name(), ino, error = %err, "write failed; its bytes are kept and tried again");
    } else {
        warn!(volume = %vol.name(), ino, error = %err, "write failed");
    }
}

/// Whether a block that failed this way can be tried again as it is: it
/// was not stored, or its commit did not reach the service or got no
/// answer (a commit applied after all is applied again with the same
/// bytes, as a retried write would be).
fn may_retry(err: &ClientError) -> bool {
    err.is_unreachable()
        || matches!(
            err,
            ClientError::NotDurable { .. }
                | ClientError::Shard { .. }
                | ClientError::Connect { .. }
        )
}
