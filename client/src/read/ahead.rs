//! Read-ahead: a read that starts where the previous read of the file
//! ended starts fetching the blocks of the next [`READ_AHEAD`] bytes in
//! the background, so a sequential reader finds them cached (or in
//! flight) instead of waiting for one block at a time.

use tessera_common::is_inline;

use super::CachedSlices;
use crate::{
    stripe::{read_range, BlockRef},
    volume::Volume,
};

/// Bytes a sequential reader fetches ahead of where it reads.
const READ_AHEAD: u64 = 8 << 20;

impl Volume {
    /// Starts fetching the blocks holding the [`READ_AHEAD`] bytes after
    /// `from`.
    pub(super) fn read_ahead(&self, slices: &CachedSlices, from: u64) {
        let end = from.saturating_add(READ_AHEAD).min(slices.size);
        for v in slices.visible(from, end) {
            let b = BlockRef {
                block: v.slice.block,
                len: v.slice.block_len as usize,
            };
            if is_inline(b.block) || !self.inner.cache.start_loading(b.block) {
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
