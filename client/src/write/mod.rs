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
//! file's next write, flush or fsync fail with its errno.

pub(crate) mod buffer;
pub(crate) mod packer;
mod pipeline;

use std::sync::Arc;

use futures::future::join_all;
use tessera_common::{Ino, MAX_BLOCK, MAX_FILE_SIZE};
use tracing::warn;

use crate::{
    volume::{FileEntry, Volume},
    ClientError, Result,
};
use packer::PACK_MAX;
use pipeline::cut_part;

impl Volume {
    /// Buffers a write; stores full blocks in the background.
    pub async fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return Err(ClientError::TooLarge { ino, offset });
        }
        let e = self.entry(ino);
        let full = {
            let mut st = e.state.lock().expect("file state lock");
            st.take_error(ino)?;
            st.write(offset, data)
        };
        if full {
            self.cut_blocks(ino, &e, false).await?;
        }
        Ok(())
    }

    /// Makes everything written to `ino` durable and visible, and reports
    /// (once) a write of it that failed.
    pub async fn flush(&self, ino: Ino) -> Result<()> {
        self.store_buffered(ino).await?;
        match self.existing_entry(ino) {
            Some(e) => e.state.lock().expect("file state lock").take_error(ino),
            None => Ok(()),
        }
    }

    /// Whether this mount has writes of `ino` not committed yet.
    pub(crate) fn has_buffered(&self, ino: Ino) -> bool {
        self.existing_entry(ino).is_some_and(|e| {
            let st = e.state.lock().expect("file state lock");
            !st.dirty.is_empty() || !st.inflight.is_empty()
        })
    }

    /// Stores and commits what is buffered for `ino`, waiting for what is
    /// in flight; a write that failed stays to be reported by the next
    /// flush or fsync.
    pub(crate) async fn store_buffered(&self, ino: Ino) -> Result<()> {
        if !self.has_buffered(ino) {
            return Ok(());
        }
        let Some(e) = self.existing_entry(ino) else {
            return Ok(());
        };
        self.cut_blocks(ino, &e, true).await?;
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
        Ok(())
    }

    /// Flushes every file with buffered data (unmount), together, so that
    /// their small remainders share blocks.
    pub async fn flush_all(&self) -> Result<()> {
        let inos: Vec<Ino> = self
            .inner
            .files
            .lock()
            .expect("files lock")
            .keys()
            .copied()
            .collect();
        let results = join_all(inos.into_iter().map(|ino| self.flush(ino))).await;
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
                let small = {
                    let mut st = e.state.lock().expect("file state lock");
                    if st.dirty_bytes > PACK_MAX {
                        None
                    } else {
                        match cut_part(&mut st, ino, e) {
                            Some(part) => Some(part),
                            None => return Ok(()),
                        }
                    }
                };
                if let Some(part) = small {
                    self.pack(part);
                    return Ok(());
                }
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
                if !all && st.dirty_bytes < MAX_BLOCK {
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
                for (part, result) in parts.iter().zip(results) {
                    vol.settle(part, result);
                }
                drop(permit);
            });
        }
    }
}

/// Logs a failed write of `ino` once, where it is handled.
fn log_failure(vol: &Volume, ino: Ino, err: &ClientError) {
    warn!(volume = %vol.name(), ino, error = %err, "write failed");
}
