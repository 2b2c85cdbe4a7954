//! Making buffered writes durable.
//!
//! As a file is written, every full 4 MiB is cut into a block and stored in
//! the background; a flush (close, fsync) cuts what is left. A flush that
//! leaves a small remainder does not store it alone: the small remainders
//! of all files flushed at about the same time share one block (group
//! commit). The first one is stored at once; those that arrive while it is
//! in flight are packed into the next block, and the slices of every file
//! in it are committed in one metadata transaction. So files closed
//! together cost one stripe and one commit, not one each, and a lone flush
//! waits for nobody.
//!
//! What a flush leaves in a file's first `INLINE_MAX` bytes (all of a
//! tiny file) is not stored on the nodes at all: it goes to the metadata
//! service with the commit, as an inline block of its own. Closing a tiny
//! file costs one metadata transaction instead of a stripe and a
//! transaction, and tiny files closed together share that transaction.
//!
//! Each file's blocks commit in the order they were cut, so a newer slice
//! always sits on top of an older one. A failed block makes the file's next
//! write, flush or fsync fail with its errno.

use std::{collections::VecDeque, sync::Arc};

use bytes::Bytes;
use futures::future::join_all;
use tessera_common::{Ino, INLINE_BIT, INLINE_MAX, MAX_BLOCK};
use tessera_proto::pb;
use tracing::warn;

use super::{now_ns, FileEntry, SharedBytes, Slices, Volume};
use crate::{
    stripe::put_block,
    write::{FileState, Pending},
    ClientError, Result,
};

/// A flush leaving at most this many bytes is packed with other files'.
pub(crate) const PACK_MAX: usize = 1 << 20;

/// One file's extents in a block.
pub(super) struct Part {
    ino: Ino,
    entry: Arc<FileEntry>,
    pending: Arc<Pending>,
    /// The file's block cut before this one: this one commits after it.
    prev: Option<Arc<Pending>>,
}

/// Small flushes waiting for a block, and whether one is being stored.
#[derive(Default)]
pub(super) struct Packer {
    state: std::sync::Mutex<PackState>,
}

#[derive(Default)]
struct PackState {
    queue: VecDeque<Part>,
    running: bool,
}

/// A block stored on the nodes, not yet committed.
struct StoredBlock {
    /// Per part, its slices in the block.
    slices: Vec<Vec<pb::Slice>>,
    degraded: Vec<pb::DegradedBlock>,
    epoch: u64,
    /// Inline blocks, stored by the commit.
    inline: Vec<pb::InlineBlock>,
}

/// Cuts up to one block of `st`'s dirty extents into a part in flight.
fn cut_part(st: &mut FileState, ino: Ino, entry: &Arc<FileEntry>) -> Option<Part> {
    let extents = st.cut()?;
    let pending = Pending::new(extents);
    let prev = st.inflight.last().cloned();
    st.inflight.push(pending.clone());
    Some(Part {
        ino,
        entry: entry.clone(),
        pending,
        prev,
    })
}

impl Part {
    /// Whether the part only touches the file's first `INLINE_MAX` bytes
    /// and fits an inline block (its extents may overlap, so their total
    /// can be more than they cover).
    fn is_head(&self) -> bool {
        self.pending.len() <= INLINE_MAX
            && self
                .pending
                .extents
                .iter()
                .all(|x| x.end() <= INLINE_MAX as u64)
    }
}

/// The slices of `parts` laid out one after another in `block`, and the
/// block's bytes.
fn layout(parts: &[&Part], block: u64) -> (Vec<Vec<pb::Slice>>, Bytes) {
    let block_len: usize = parts.iter().map(|p| p.pending.len()).sum();
    let mut at = 0;
    let slices = parts
        .iter()
        .map(|p| {
            p.pending
                .extents
                .iter()
                .map(|x| {
                    let s = pb::Slice {
                        offset: x.offset,
                        len: x.data.len() as u32,
                        block,
                        block_offset: at as u32,
                        block_len: block_len as u32,
                    };
                    at += x.data.len();
                    s
                })
                .collect()
        })
        .collect();
    let data = match parts {
        // A sequential writer's block is one extent: share it.
        [p] if p.pending.extents.len() == 1 => {
            Bytes::from_owner(SharedBytes(p.pending.extents[0].data.clone()))
        }
        _ => {
            let mut v = Vec::with_capacity(block_len);
            for x in parts.iter().flat_map(|p| &p.pending.extents) {
                v.extend_from_slice(&x.data);
            }
            Bytes::from(v)
        }
    };
    (slices, data)
}

impl Volume {
    /// Buffers a write; stores full blocks in the background.
    pub async fn write(&self, ino: Ino, offset: u64, data: &[u8]) -> Result<()> {
        if offset
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > tessera_common::CHUNK_SIZE << 24)
        {
            return Err(ClientError::Invalid(format!(
                "write at {offset} beyond the largest file"
            )));
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

    /// Makes everything written to `ino` durable and visible.
    pub async fn flush(&self, ino: Ino) -> Result<()> {
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
            let _ = p.wait().await;
        }
        let result = e.state.lock().expect("file state lock").take_error(ino);
        result
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
        let first_err = results.into_iter().find_map(Result::err);
        // The metadata service syncs acknowledged changes within
        // milliseconds on its own: at unmount this only hurries it, and it
        // must not keep a mount with nothing left to store from going.
        if let Err(e) = self.sync().await {
            warn!(volume = self.name(), error = %e, "syncing the metadata service at unmount failed");
        }
        first_err.map_or(Ok(()), Err)
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
                .map_err(|_| ClientError::Invalid("volume is shutting down".into()))?;
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

    /// Queues a small part for the packer, starting it if it is idle.
    fn pack(&self, part: Part) {
        let mut s = self.inner.packer.state.lock().expect("packer lock");
        s.queue.push_back(part);
        if s.running {
            return;
        }
        s.running = true;
        drop(s);
        let vol = self.clone();
        tokio::spawn(async move { vol.run_packer().await });
    }

    /// Stores and commits the queued parts, a block at a time, until none
    /// is left.
    async fn run_packer(&self) {
        loop {
            let batch = {
                let mut s = self.inner.packer.state.lock().expect("packer lock");
                let batch = next_batch(&mut s.queue);
                if batch.is_empty() {
                    s.running = false;
                    return;
                }
                batch
            };
            let results = self.store_and_commit(&batch).await;
            for (part, result) in batch.iter().zip(results) {
                self.settle(part, result);
            }
        }
    }

    /// Reports a part's outcome to its file and to whoever waits for it.
    fn settle(&self, part: &Part, result: Result<()>) {
        let mut st = part.entry.state.lock().expect("file state lock");
        st.inflight.retain(|p| !Arc::ptr_eq(p, &part.pending));
        if let Err(err) = &result {
            warn!(volume = %self.name(), ino = part.ino, error = %err, "write failed");
            st.error.get_or_insert_with(|| err.clone());
        }
        drop(st);
        part.pending.finish(result);
    }

    /// Stores `parts` as one block, then commits each file's slices; one
    /// result per part.
    async fn store_and_commit(&self, parts: &[Part]) -> Vec<Result<()>> {
        let stored = match self.store_block(parts).await {
            Ok(s) => s,
            Err(e) => return vec![Err(e); parts.len()],
        };
        // Commit in cut order; an earlier failure is reported on its own.
        for p in parts {
            if let Some(prev) = &p.prev {
                if !parts.iter().any(|q| Arc::ptr_eq(&q.pending, prev)) {
                    let _ = prev.wait().await;
                }
            }
        }
        // One file write per file, its parts' slices in cut order.
        let mut files: Vec<(Ino, Vec<usize>)> = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            match files.iter_mut().find(|(ino, _)| *ino == p.ino) {
                Some((_, at)) => at.push(i),
                None => files.push((p.ino, vec![i])),
            }
        }
        let writes: Vec<(&Part, Vec<pb::Slice>)> = files
            .iter()
            .map(|(_, at)| {
                let slices = at.iter().flat_map(|&i| stored.slices[i].clone()).collect();
                (&parts[at[0]], slices)
            })
            .collect();
        let per_file: Vec<Result<()>> = match self.commit(&writes, &stored).await {
            Ok(()) => vec![Ok(()); writes.len()],
            // One file's failure (removed meanwhile, say) must not fail the
            // others: each commits on its own.
            Err(_) if writes.len() > 1 => {
                let mut out = Vec::with_capacity(writes.len());
                for w in &writes {
                    out.push(self.commit(std::slice::from_ref(w), &stored).await);
                }
                out
            }
            Err(e) => vec![Err(e)],
        };
        let mut results = vec![Ok(()); parts.len()];
        for ((_, at), r) in files.iter().zip(per_file) {
            for &i in at {
                results[i] = r.clone();
            }
        }
        results
    }

    /// Encodes the parts' extents as one block and stores its shards; the
    /// parts that only touch their file's first `INLINE_MAX` bytes become
    /// inline blocks of their own instead, stored by the commit.
    async fn store_block(&self, parts: &[Part]) -> Result<StoredBlock> {
        let mut stored = StoredBlock {
            slices: vec![Vec::new(); parts.len()],
            degraded: vec![],
            epoch: 0,
            inline: vec![],
        };
        let (heads, rest): (Vec<usize>, Vec<usize>) =
            (0..parts.len()).partition(|&i| self.inner.inline_blocks && parts[i].is_head());
        for i in heads {
            let block = self.inner.block_ids.next().await? | INLINE_BIT;
            let (slices, data) = layout(&[&parts[i]], block);
            stored.slices[i] = slices.into_iter().next().expect("one part");
            stored.inline.push(pb::InlineBlock { block, data });
        }
        if rest.is_empty() {
            return Ok(stored);
        }
        let block = self.inner.block_ids.next().await?;
        let rest_parts: Vec<&Part> = rest.iter().map(|&i| &parts[i]).collect();
        let (slices, data) = layout(&rest_parts, block);
        let block_len = data.len();
        for (&i, s) in rest.iter().zip(slices) {
            stored.slices[i] = s;
        }
        if let Err(e) = self.inner.nodes.refresh_if_stale(0).await {
            warn!(volume = self.name(), error = %e, "refreshing the placement table failed");
        }
        let put = put_block(
            &self.inner.nodes,
            &self.inner.codec,
            block,
            data,
            self.inner.min_durable,
        )
        .await?;
        if !put.missing.is_empty() {
            stored.degraded.push(pb::DegradedBlock {
                block,
                block_len: block_len as u32,
                missing: put.missing,
            });
        }
        stored.epoch = put.epoch;
        Ok(stored)
    }

    /// Commits the slices of one or more files in one transaction and
    /// updates their cached slice lists.
    async fn commit(&self, writes: &[(&Part, Vec<pb::Slice>)], stored: &StoredBlock) -> Result<()> {
        let mtime_ns = now_ns();
        // What this commit's slices point into: after a batch failed, each
        // file commits alone.
        let ours = |block: u64| {
            writes
                .iter()
                .any(|(_, slices)| slices.iter().any(|s| s.block == block))
        };
        let inline: Vec<pb::InlineBlock> = stored
            .inline
            .iter()
            .filter(|b| ours(b.block))
            .cloned()
            .collect();
        let req = pb::CommitWritesRequest {
            volume: self.id(),
            files: writes
                .iter()
                .map(|(p, slices)| pb::FileWrite {
                    ino: p.ino,
                    slices: slices.clone(),
                    mtime_ns,
                })
                .collect(),
            degraded: stored
                .degraded
                .iter()
                .filter(|d| ours(d.block))
                .cloned()
                .collect(),
            placement_epoch: stored.epoch,
            inline_blocks: inline.clone(),
        };
        let resp = self.meta().commit_writes(req).await?.into_inner();
        if let Err(e) = self
            .inner
            .nodes
            .refresh_if_stale(resp.placement_epoch)
            .await
        {
            warn!(volume = self.name(), error = %e, "refreshing the placement table failed");
        }
        // Keep the cached slice lists current rather than refetching them.
        let batch_inline = inline;
        for (i, (p, slices)) in writes.iter().enumerate() {
            let mut cached = p.entry.slices.lock().expect("slices lock");
            cached.0 += 1;
            if let (Some(s), Some(attr)) = (cached.1.take(), resp.attrs.get(i)) {
                let mut list = s.list.clone();
                list.extend(slices.iter().cloned());
                let mut inline = s.inline.clone();
                inline.extend(
                    batch_inline
                        .iter()
                        .filter(|b| slices.iter().any(|s| s.block == b.block))
                        .map(|b| (b.block, b.data.clone())),
                );
                cached.1 = Some(Arc::new(Slices {
                    size: attr.size,
                    list,
                    inline,
                }));
            }
        }
        Ok(())
    }
}

/// Takes the parts of the next block off the front of `queue`: at most a
/// block's worth, and (after the first) only parts that can commit without
/// waiting for a block outside the batch, since that block may itself wait
/// for a part in it.
fn next_batch(queue: &mut VecDeque<Part>) -> Vec<Part> {
    let mut batch: Vec<Part> = Vec::new();
    let mut bytes = 0;
    while let Some(p) = queue.front() {
        let len = p.pending.len();
        let ready = p.prev.as_ref().is_none_or(|prev| {
            prev.is_finished() || batch.iter().any(|q| Arc::ptr_eq(&q.pending, prev))
        });
        if !batch.is_empty() && (bytes + len > MAX_BLOCK || !ready) {
            break;
        }
        bytes += len;
        batch.extend(queue.pop_front());
    }
    batch
}
