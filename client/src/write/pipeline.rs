//! Storing and committing cut blocks: a block's parts (one file's extents
//! each) are laid out one after another, encoded and stored on the nodes
//! (`stripe::put_block`), then each file's slices are committed, in the
//! order its blocks were cut. What a flush leaves in a file's first
//! `INLINE_MAX` bytes (all of a tiny file) is not stored on the nodes: it
//! goes to the metadata service with the commit, as an inline block of
//! its own. So does a flush of at most `DEFERRED_MAX` bytes into a larger
//! file (a deferred write, `deferred.rs`).

use std::sync::{atomic::Ordering, Arc};

use bytes::Bytes;
use tessera_common::{
    Commit, DegradedBlock, FileWrite, InlineBlock, Ino, Slice, INLINE_BIT, INLINE_MAX,
};
use tracing::warn;

use super::{
    buffer::{FileState, Pending, SharedBytes},
    log_failure, may_retry,
};
use crate::{
    stripe::put_block,
    volume::{now_ns, FileEntry, Volume},
    ClientError, Result,
};

/// One file's extents in a block.
pub(crate) struct Part {
    pub ino: Ino,
    pub entry: Arc<FileEntry>,
    pub pending: Arc<Pending>,
    /// The file's block cut before this one: this one commits after it.
    pub prev: Option<Arc<Pending>>,
}

/// A block stored on the nodes, not yet committed.
struct StoredBlock {
    /// Per part, its slices in the block.
    slices: Vec<Vec<Slice>>,
    degraded: Vec<DegradedBlock>,
    epoch: u64,
    /// Inline blocks, stored by the commit.
    inline: Vec<InlineBlock>,
}

/// Cuts up to one block of `st`'s dirty extents into a part in flight.
pub(super) fn cut_part(st: &mut FileState, ino: Ino, entry: &Arc<FileEntry>) -> Option<Part> {
    let prev = st.inflight.last().cloned();
    let pending = st.cut()?;
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
        self.pending.len() <= INLINE_MAX && self.end() <= INLINE_MAX as u64
    }

    /// Where its last extent ends.
    pub(super) fn end(&self) -> u64 {
        self.pending
            .extents
            .iter()
            .map(|x| x.end())
            .max()
            .unwrap_or(0)
    }
}

/// The slices of `parts` laid out one after another in `block`, and the
/// block's bytes.
fn layout(parts: &[&Part], block: u64) -> (Vec<Vec<Slice>>, Bytes) {
    let block_len: usize = parts.iter().map(|p| p.pending.len()).sum();
    let mut at = 0;
    let slices = parts
        .iter()
        .map(|p| {
            p.pending
                .extents
                .iter()
                .map(|x| {
                    let s = Slice {
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
    /// Reports a part's outcome to its file and to whoever waits for it,
    /// after the file's earlier part (parts settle in the order they were
    /// cut, so bytes put back stay in that order). A part that may be
    /// tried again puts its bytes back in the file's buffer.
    pub(super) async fn settle(&self, part: &Part, result: Result<()>) {
        if let (Err(_), Some(prev)) = (&result, &part.prev) {
            let _ = prev.wait(part.ino).await;
        }
        let mut st = part.entry.state.lock().expect("file state lock");
        let mut retry = false;
        match &result {
            Ok(()) => st.inflight.retain(|p| !Arc::ptr_eq(p, &part.pending)),
            Err(err) if may_retry(err) => {
                log_failure(self, part.ino, err, true);
                st.handles.held(err);
                st.requeue(&part.pending);
                retry = !std::mem::replace(&mut st.retrying, true);
            }
            Err(err) => {
                log_failure(self, part.ino, err, false);
                st.handles.failed(err);
                st.inflight.retain(|p| !Arc::ptr_eq(p, &part.pending));
            }
        }
        drop(st);
        part.pending.finish(result);
        if retry {
            self.retry_later(part.ino);
        }
    }

    /// Stores `parts` as one block, then commits each file's slices; one
    /// result per part.
    pub(super) async fn store_and_commit(&self, parts: &[Part]) -> Vec<Result<()>> {
        let stored = match self.store_block(parts).await {
            Ok(s) => s,
            Err(e) => return vec![Err(e); parts.len()],
        };
        // Commit in cut order. A part whose file's earlier block failed
        // does not commit over it: it fails the same way.
        let mut blocked: Vec<Option<ClientError>> = vec![None; parts.len()];
        for (i, p) in parts.iter().enumerate() {
            if let Some(prev) = &p.prev {
                if !parts.iter().any(|q| Arc::ptr_eq(&q.pending, prev)) {
                    if let Err(e) = prev.wait(p.ino).await {
                        blocked[i] = Some(e);
                    }
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
        let mut results = vec![Ok(()); parts.len()];
        files.retain(|(_, at)| {
            let Some(e) = at.iter().find_map(|&i| blocked[i].clone()) else {
                return true;
            };
            for &i in at {
                results[i] = Err(e.clone());
            }
            false
        });
        if files.is_empty() {
            return results;
        }
        let writes: Vec<(&Part, Vec<Slice>)> = files
            .iter()
            .map(|(_, at)| {
                let slices = at.iter().flat_map(|&i| stored.slices[i].clone()).collect();
                (&parts[at[0]], slices)
            })
            .collect();
        let per_file: Vec<Result<()>> = match self.commit(&writes, &stored).await {
            Ok(()) => vec![Ok(()); writes.len()],
            // One file's failure (removed meanwhile, say) must not fail the
            // others: each commits on its own. Not after a failure that
            // leaves it unknown whether the commit was applied (the service
            // unreachable, the call timed out): another mount may have
            // written these files since, and committing the same slices
            // again would lay them over its newer bytes. Every file fails.
            Err(e) if writes.len() > 1 && !e.is_unreachable() => {
                let mut out = Vec::with_capacity(writes.len());
                for w in &writes {
                    out.push(self.commit(std::slice::from_ref(w), &stored).await);
                }
                out
            }
            Err(e) => vec![Err(e); writes.len()],
        };
        for ((_, at), r) in files.iter().zip(per_file) {
            for &i in at {
                results[i] = r.clone();
            }
        }
        results
    }

    /// Encodes the parts' extents as one block and stores its shards; the
    /// parts that only touch their file's first `INLINE_MAX` bytes, and
    /// all of them when they are deferred writes, become inline blocks of
    /// their own instead, stored by the commit.
    async fn store_block(&self, parts: &[Part]) -> Result<StoredBlock> {
        let mut stored = StoredBlock {
            slices: vec![Vec::new(); parts.len()],
            degraded: vec![],
            epoch: 0,
            inline: vec![],
        };
        let (mut heads, mut rest): (Vec<usize>, Vec<usize>) =
            (0..parts.len()).partition(|&i| self.inner.inline_blocks && parts[i].is_head());
        if self.may_defer(rest.iter().map(|&i| &parts[i])) {
            heads.append(&mut rest);
        }
        for i in heads {
            let block = self.inner.block_ids.next().await? | INLINE_BIT;
            let (slices, data) = layout(&[&parts[i]], block);
            stored.slices[i] = slices.into_iter().next().expect("one part");
            stored.inline.push(InlineBlock { block, data });
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
        let i = &self.inner;
        let put = put_block(&i.nodes, &i.codec, block, data, i.min_durable).await?;
        if !put.missing.is_empty() {
            stored.degraded.push(DegradedBlock {
                block,
                block_len: block_len as u32,
                missing: put.missing,
            });
        }
        stored.epoch = put.epoch;
        Ok(stored)
    }

    /// Commits the slices of one or more files in one transaction and
    /// lays them on this mount's cached slices.
    async fn commit(&self, writes: &[(&Part, Vec<Slice>)], stored: &StoredBlock) -> Result<()> {
        let mtime_ns = now_ns();
        // What this commit's slices point into: after a batch failed, each
        // file commits alone.
        let ours = |block: u64| {
            writes
                .iter()
                .any(|(_, slices)| slices.iter().any(|s| s.block == block))
        };
        let inline: Vec<InlineBlock> = stored
            .inline
            .iter()
            .filter(|b| ours(b.block))
            .cloned()
            .collect();
        let commit = Commit {
            vol: self.id(),
            files: writes
                .iter()
                .map(|(p, slices)| FileWrite {
                    ino: p.ino,
                    slices: slices.clone(),
                    mtime_ns,
                    replaces: vec![],
                })
                .collect(),
            degraded: stored
                .degraded
                .iter()
                .filter(|d| ours(d.block))
                .cloned()
                .collect(),
            placement_epoch: stored.epoch,
            inline: inline.clone(),
            session: self.inner.session,
        };
        let names_before = self.inner.syncs.begin();
        let done = self.inner.meta.commit(commit).await?;
        // A data commit is durable, and with it every change of names
        // acknowledged before it began.
        self.inner.syncs.durable(names_before);
        if let Err(e) = self
            .inner
            .nodes
            .refresh_if_stale(done.placement_epoch)
            .await
        {
            warn!(volume = self.name(), error = %e, "refreshing the placement table failed");
        }
        for (p, _) in writes {
            self.merge_later(p.ino);
        }
        // Each file's own inline blocks: the ones its slices point into.
        let own: Vec<Vec<InlineBlock>> = writes
            .iter()
            .map(|(_, slices)| {
                inline
                    .iter()
                    .filter(|b| slices.iter().any(|s| s.block == b.block))
                    .cloned()
                    .collect()
            })
            .collect();
        // Keep the cached slice lists current rather than refetching them.
        for (i, (p, slices)) in writes.iter().enumerate() {
            if let Some(attr) = done.attrs.get(i) {
                p.entry.committed_size.store(attr.size, Ordering::Release);
            }
            let mut cached = p.entry.slices.lock().expect("slices lock");
            cached.0 += 1;
            match (cached.1.as_mut(), done.attrs.get(i)) {
                (Some(s), Some(attr)) => Arc::make_mut(s).apply(slices, &own[i], attr.size),
                _ => cached.1 = None,
            }
        }
        // After the cached slices: a move of them starting now sees them.
        for ((p, _), own) in writes.iter().zip(&own) {
            let deferred: usize = own.iter().map(|b| b.data.len()).sum();
            if deferred > 0 && !p.is_head() {
                self.deferred_committed(p.ino, &p.entry, deferred as u64);
            }
        }
        Ok(())
    }
}
