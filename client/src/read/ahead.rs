//! Read-ahead: a read that starts where the previous read of the file
//! ended starts fetching the blocks of the next [`READ_AHEAD`] bytes in
//! the background, so a sequential reader finds them cached (or in
//! flight) instead of waiting for one block at a time.
//!
//! Only blocks the window reads most of are fetched whole. A file
//! overwritten in small random writes is a patchwork of small pieces of
//! many blocks: fetching each whole read 32 times the bytes wanted and
//! evicted them from the small block cache before their reader came (a
//! sequential read of a 1 GiB file after 3 minutes of 4 KiB random
//! overwrites ran at 3.9 MiB/s). Pieces under `WHOLE_BLOCK_AT` are read
//! when asked for, each its own range (a larger one makes its reader
//! fetch the whole block, so that block is fetched ahead too). And no
//! more blocks are fetched ahead than half the cache holds, so a
//! read-ahead does not evict what it fetched itself: a file of small
//! blocks (appended with an fsync every 128 KiB) gets less read-ahead
//! than 8 MiB.

use std::collections::HashMap;

use tessera_common::is_inline;

use super::CachedSlices;
use crate::{
    stripe::{read_range, BlockRef, WHOLE_BLOCK_AT},
    volume::Volume,
};

/// Bytes a sequential reader fetches ahead of where it reads.
const READ_AHEAD: u64 = 8 << 20;

impl Volume {
    /// Starts fetching the blocks holding the [`READ_AHEAD`] bytes after
    /// `from` (see the module's comment for which).
    pub(super) fn read_ahead(&self, slices: &CachedSlices, from: u64) {
        let end = from.saturating_add(READ_AHEAD).min(slices.size);
        let cache = &self.inner.cache;
        for b in blocks_to_fetch(slices, from, end, cache.capacity() / 2) {
            if !cache.start_loading(b.block) {
                continue;
            }
            let vol = self.clone();
            tokio::spawn(async move {
                let i = &vol.inner;
                let got = read_range(&i.nodes, &i.codec, &i.cache, b, 0, b.len).await;
                i.cache.finish_loading(b.block, got.ok());
            });
        }
    }
}

/// The blocks of which bytes `from..end` hold at least half, or a run
/// its reader would fetch the block whole for anyway (`WHOLE_BLOCK_AT`),
/// in the order the window reaches them; at most `most`.
fn blocks_to_fetch(slices: &CachedSlices, from: u64, end: u64, most: usize) -> Vec<BlockRef> {
    let mut order: Vec<BlockRef> = Vec::new();
    // Per block: bytes the window reads of it, and its longest run.
    let mut read: HashMap<u64, (u64, u64)> = HashMap::new();
    for v in slices.visible(from, end) {
        if is_inline(v.slice.block) {
            continue;
        }
        let (bytes, longest) = read.entry(v.slice.block).or_insert_with(|| {
            order.push(BlockRef::of(&v.slice));
            (0, 0)
        });
        *bytes += v.len;
        *longest = (*longest).max(v.len);
    }
    order
        .into_iter()
        .filter(|b| {
            let (bytes, longest) = read[&b.block];
            bytes * 2 >= b.len as u64 || longest >= WHOLE_BLOCK_AT as u64
        })
        .take(most)
        .collect()
}

#[cfg(test)]
mod tests;
