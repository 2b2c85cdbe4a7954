//! The read path: a byte range of a file is what this mount has not yet
//! committed (its write buffer) laid over the committed slices (cached
//! per open file, `slices.rs`); each visible run of a block is read from
//! the data shards that hold it (`stripe.rs`), from the block cache
//! (`cache.rs`), or from the inline block's bytes. A sequential reader
//! reads ahead (`ahead.rs`).

mod ahead;
pub(crate) mod cache;
pub(crate) mod slices;

use std::sync::{atomic::Ordering, Arc};

use bytes::Bytes;
use futures::future::join_all;
use tessera_common::{is_inline, Ino};
use tracing::warn;

pub(crate) use slices::{CachedSlices, Visible};

use crate::{
    stripe::{read_range, read_range_now, read_ranges, BlockRef, WHOLE_BLOCK_AT},
    volume::{FileEntry, Volume},
    write::LEFT_AFTER,
    ClientError, Result,
};

impl Volume {
    /// Reads up to `size` bytes at `offset`; short at the end of the file.
    /// A read that fails with this mount's cached slices is tried once more
    /// with slices fetched anew: another mount may have merged or cut the
    /// file since, and freed the blocks they point into.
    pub async fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Bytes> {
        match self.read_once(ino, offset, size).await {
            Ok(data) => Ok(data),
            Err(e) if e.is_unreachable() => Err(e),
            Err(e) => {
                tracing::debug!(volume = self.name(), ino, error = %e, "read failed; fetching the slices again");
                self.invalidate(ino);
                self.read_once(ino, offset, size).await
            }
        }
    }

    /// [`Volume::read`] for a caller that waits on a thread of its own (a
    /// FUSE worker): a small read of one committed run is made on this
    /// thread (one `GetShard` whose answer the thread reads itself, with no
    /// hop through the runtime and back); anything else, and a read that
    /// fails there, goes through `read`.
    pub fn read_on_thread(&self, ino: Ino, offset: u64, size: u32) -> Result<Bytes> {
        match self.read_small_now(ino, offset, size) {
            Some(done) => done,
            None => self.block_on(self.read(ino, offset, size)),
        }
    }

    /// The bytes of a small read made on this thread, or None when it must
    /// go through `read`.
    fn read_small_now(&self, ino: Ino, offset: u64, size: u32) -> Option<Result<Bytes>> {
        if size == 0 || size as usize >= WHOLE_BLOCK_AT {
            return None;
        }
        let end = offset.checked_add(u64::from(size))?;
        let e = self.existing_entry(ino)?;
        // As `read_once`: uncommitted bytes first, then the committed slices.
        let buffered = e
            .state
            .lock()
            .expect("file state lock")
            .overlay(offset, end);
        if !buffered.is_empty() {
            return None;
        }
        let cached = e.slices.lock().expect("slices lock").1.clone();
        let slices = match cached {
            Some(s) => s,
            // A file's first read fetches its slices, as `read_once` would.
            None => match self.block_on(self.slices(ino, &e)) {
                Ok(s) => s,
                Err(err) => return Some(Err(err)),
            },
        };
        if end > slices.size {
            return None;
        }
        let runs = slices.visible(offset, end);
        // One run over the whole range: no hole, no second block.
        let [v] = runs.as_slice() else {
            return None;
        };
        if v.offset != offset || v.len != u64::from(size) {
            return None;
        }
        if is_inline(v.slice.block) {
            // A deferred write: its bytes came with the slices (a view
            // without them is fetched again by `read`).
            return inline_run(ino, &slices, v).ok().map(Ok);
        }
        if !self.inner.nodes.is_fresh() {
            // As `read_once`: a refresh that fails leaves the table as it is.
            self.block_on(self.refresh_placement());
        }
        let i = &self.inner;
        let b = BlockRef::of(&v.slice);
        let data = read_range_now(
            &i.nodes,
            &i.codec,
            &i.cache,
            b,
            v.block_offset(),
            v.len as usize,
        )?;
        e.read_end.store(end, Ordering::Relaxed);
        Some(Ok(data))
    }

    /// Fetches the placement table again if it is stale: moved placement
    /// groups are found here, not by failing reads.
    async fn refresh_placement(&self) {
        if let Err(e) = self.inner.nodes.refresh_if_stale(0).await {
            warn!(volume = self.name(), error = %e, "refreshing the placement table failed");
        }
    }

    async fn read_once(&self, ino: Ino, offset: u64, size: u32) -> Result<Bytes> {
        let e = self.entry(ino);
        let asked_end = offset.saturating_add(u64::from(size));
        // Uncommitted bytes first, then the committed slices: a block that
        // commits in between is then seen by one or the other.
        let (buffered, pending_end) = {
            let st = e.state.lock().expect("file state lock");
            (st.overlay(offset, asked_end), st.pending_end())
        };
        let slices = self.slices(ino, &e).await?;
        let end = asked_end.min(slices.size.max(pending_end));
        if offset >= end {
            return Ok(Bytes::new());
        }
        let runs = slices.visible(offset, end.min(slices.size));
        if !runs.is_empty() {
            self.refresh_placement().await;
        }
        let reads = runs.iter().map(|v| self.read_run(ino, &slices, v));
        let sequential = e.read_end.swap(end, Ordering::Relaxed) == offset
            && u64::from(size) >= WHOLE_BLOCK_AT as u64;
        if sequential {
            self.read_ahead(&slices, end);
        }
        let datas = join_all(reads).await;
        let buffered: Vec<(u64, Bytes)> =
            buffered.into_iter().filter(|(at, _)| *at < end).collect();
        if let ([v], [_], true) = (&runs[..], &datas[..], buffered.is_empty()) {
            if v.offset == offset && v.offset + v.len == end {
                // One run of one block, nothing buffered over it: its bytes
                // as read (or cached), without a copy.
                return datas.into_iter().next().expect("one run");
            }
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        for (v, data) in runs.iter().zip(datas) {
            let data = data?;
            let at = (v.offset - offset) as usize;
            buf[at..at + data.len()].copy_from_slice(&data);
        }
        for (at, data) in &buffered {
            let from = (at - offset) as usize;
            let n = data.len().min(buf.len() - from);
            buf[from..from + n].copy_from_slice(&data[..n]);
        }
        Ok(Bytes::from(buf))
    }

    /// The committed bytes of one visible run of `ino`.
    pub(crate) async fn read_run(
        &self,
        ino: Ino,
        slices: &CachedSlices,
        v: &Visible,
    ) -> Result<Bytes> {
        if is_inline(v.slice.block) {
            return inline_run(ino, slices, v);
        }
        let i = &self.inner;
        let b = BlockRef::of(&v.slice);
        read_range(
            &i.nodes,
            &i.codec,
            &i.cache,
            b,
            v.block_offset(),
            v.len as usize,
        )
        .await
    }

    /// The committed bytes of many runs of `ino` (a merge's window): those
    /// of inline blocks from `slices`, the others' shard ranges fetched a
    /// node at a time.
    pub(crate) async fn read_runs(
        &self,
        ino: Ino,
        slices: &CachedSlices,
        runs: &[Visible],
    ) -> Result<Vec<Bytes>> {
        let (inline, stored): (Vec<usize>, Vec<usize>) =
            (0..runs.len()).partition(|&r| is_inline(runs[r].slice.block));
        let wanted: Vec<(BlockRef, usize, usize)> = stored
            .iter()
            .map(|&r| {
                let v = &runs[r];
                (BlockRef::of(&v.slice), v.block_offset(), v.len as usize)
            })
            .collect();
        let i = &self.inner;
        let read = read_ranges(&i.nodes, &i.codec, &i.cache, &wanted).await?;
        let mut out = vec![Bytes::new(); runs.len()];
        for (r, data) in stored.into_iter().zip(read) {
            out[r] = data;
        }
        for r in inline {
            out[r] = inline_run(ino, slices, &runs[r])?;
        }
        Ok(out)
    }

    /// Where the next data (`data`: SEEK_DATA) or hole (SEEK_HOLE) of
    /// `ino` starts at or after `offset`, as a reader would see the file:
    /// its committed slices with this mount's uncommitted bytes on top.
    /// Bytes nothing covers are holes; the end of the file is one. Stores
    /// nothing (a write error stays for the writer's close or fsync).
    pub async fn seek_data_or_hole(&self, ino: Ino, offset: u64, data: bool) -> Result<u64> {
        let e = self.entry(ino);
        let (mut covered, pending_end) = {
            let st = e.state.lock().expect("file state lock");
            (st.uncommitted(offset, u64::MAX), st.pending_end())
        };
        let slices = self.slices(ino, &e).await?;
        let size = slices.size.max(pending_end);
        if offset >= size {
            return Err(ClientError::NoSuchData { ino, offset });
        }
        covered.extend(
            slices
                .visible(offset, slices.size)
                .iter()
                .map(|v| (v.offset, v.offset + v.len)),
        );
        covered.sort_unstable();
        if data {
            return covered
                .iter()
                .find(|(_, hi)| *hi > offset)
                .map(|(lo, _)| (*lo).max(offset))
                .ok_or(ClientError::NoSuchData { ino, offset });
        }
        let mut at = offset;
        for (lo, hi) in covered {
            if lo > at {
                break;
            }
            at = at.max(hi);
        }
        Ok(at.min(size))
    }

    /// The committed slices of `ino`, fetched if this mount has none cached.
    pub(crate) async fn slices(&self, ino: Ino, e: &FileEntry) -> Result<Arc<CachedSlices>> {
        let generation = {
            let s = e.slices.lock().expect("slices lock");
            if let Some(cached) = &s.1 {
                return Ok(cached.clone());
            }
            s.0
        };
        let fetched = self.inner.meta.file_slices(self.id(), ino).await?;
        let unchanged_ns = crate::volume::now_ns().saturating_sub(fetched.attr.mtime_ns);
        let fetched = Arc::new(CachedSlices::from(fetched));
        if fetched.has_deferred() && unchanged_ns >= LEFT_AFTER.as_nanos() as i64 {
            // Left by a mount that died, or could not move them.
            self.found_deferred(ino);
        }
        let mut s = e.slices.lock().expect("slices lock");
        // A fetch that raced with a commit of this mount is not kept.
        if s.0 == generation {
            s.1 = Some(fetched.clone());
        }
        Ok(fetched)
    }

    /// Forgets the cached slices of `ino`: the next read fetches them.
    pub(crate) fn invalidate(&self, ino: Ino) {
        if let Some(e) = self.existing_entry(ino) {
            let mut s = e.slices.lock().expect("slices lock");
            s.0 += 1;
            s.1 = None;
        }
    }
}

/// The bytes of a visible run of an inline block, from the file's slices.
fn inline_run(ino: Ino, slices: &CachedSlices, v: &Visible) -> Result<Bytes> {
    let (at, len) = (v.block_offset(), v.len as usize);
    match slices.inline(v.slice.block) {
        Some(data) if at + len <= data.len() => Ok(data.slice(at..at + len)),
        _ => Err(ClientError::Malformed(format!(
            "inode {ino}: inline block {:#x} missing or short",
            v.slice.block
        ))),
    }
}
