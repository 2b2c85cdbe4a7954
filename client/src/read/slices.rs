//! A file's committed slices as this mount last saw them: an extent map
//! per 64 MiB chunk (`tessera_common::extents`, the service's own
//! algorithm). A commit of this mount lays its slices over the chunks it
//! touches (copying a chunk's map only while a reader holds it, never the
//! whole file's); a read looks up the chunks it covers, in time
//! logarithmic in their extents.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use bytes::Bytes;
pub(crate) use tessera_common::extents::Visible;
use tessera_common::{
    data::split_at_chunks, extents::ExtentMap, is_inline, BlockId, FileSlices, InlineBlock, Slice,
    CHUNK_SIZE, DEFERRED_MAX,
};

/// Bytes of inline blocks held before those no longer shown are dropped
/// (at least: twice what was left the last time).
const INLINE_HELD: usize = 1 << 20;

#[derive(Clone, Debug, Default)]
pub(crate) struct CachedSlices {
    pub size: u64,
    /// Each chunk's extent map.
    chunks: BTreeMap<u64, Arc<ExtentMap>>,
    /// The bytes of the inline blocks the slices point into.
    inline: HashMap<BlockId, Bytes>,
    /// Their total, and the total at which those no longer shown go.
    inline_bytes: usize,
    prune_at: usize,
}

impl From<FileSlices> for CachedSlices {
    fn from(f: FileSlices) -> Self {
        let mut cached = CachedSlices {
            size: f.attr.size,
            ..Default::default()
        };
        cached.lay(&f.slices);
        cached.inline_bytes = f.inline.iter().map(|b| b.data.len()).sum();
        cached.inline = f.inline.into_iter().map(|b| (b.block, b.data)).collect();
        cached.prune_at = INLINE_HELD.max(2 * cached.inline_bytes);
        cached
    }
}

impl CachedSlices {
    /// Lays slices (oldest first) over the chunks they touch.
    fn lay(&mut self, slices: &[Slice]) {
        for s in slices {
            for (index, part) in split_at_chunks(*s) {
                Arc::make_mut(self.chunks.entry(index).or_default()).lay(part);
            }
        }
    }

    /// Lays this mount's committed slices (oldest first) on top, with the
    /// inline blocks they point into; `size` is the file's size after.
    pub fn apply(&mut self, slices: &[Slice], inline: &[InlineBlock], size: u64) {
        self.lay(slices);
        for b in inline {
            self.inline_bytes += b.data.len();
            if let Some(old) = self.inline.insert(b.block, b.data.clone()) {
                self.inline_bytes -= old.len();
            }
        }
        self.size = size;
        if self.inline_bytes > self.prune_at {
            self.prune_inline();
        }
    }

    /// Drops the bytes of inline blocks no slice shows any more (written
    /// over, or moved to the nodes): a look over every extent, made when
    /// what is held has doubled.
    fn prune_inline(&mut self) {
        let shown: HashSet<BlockId> = self
            .chunks
            .iter()
            .flat_map(|(&index, map)| map.visible(index * CHUNK_SIZE, (index + 1) * CHUNK_SIZE))
            .map(|v| v.slice.block)
            .filter(|&b| is_inline(b))
            .collect();
        self.inline.retain(|b, _| shown.contains(b));
        self.inline_bytes = self.inline.values().map(Bytes::len).sum();
        self.prune_at = INLINE_HELD.max(2 * self.inline_bytes);
    }

    /// What shows in `[start, end)`, in file order; bytes no slice covers
    /// are holes (zeros).
    pub fn visible(&self, start: u64, end: u64) -> Vec<Visible> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let (first, last) = (start / CHUNK_SIZE, (end - 1) / CHUNK_SIZE);
        for (&index, map) in self.chunks.range(first..=last) {
            let lo = start.max(index * CHUNK_SIZE);
            let hi = end.min((index + 1) * CHUNK_SIZE);
            out.extend(map.visible(lo, hi));
        }
        out
    }

    /// Whether inline blocks hold bytes of a file larger than
    /// `DEFERRED_MAX` (deferred writes, moved to the nodes by a merge; a
    /// smaller file keeps its inline blocks).
    pub fn has_deferred(&self) -> bool {
        self.size > DEFERRED_MAX as u64 && !self.inline.is_empty()
    }

    /// The bytes of inline block `block`, if the file has them.
    pub fn inline(&self, block: BlockId) -> Option<&Bytes> {
        self.inline.get(&block)
    }

    /// Extents held, over every chunk.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.chunks.values().map(|m| m.len()).sum()
    }
}

/// The slices of a file of `size` bytes, as fetched (for tests).
#[cfg(test)]
pub(crate) fn fetched_for_tests(slices: Vec<Slice>, size: u64) -> CachedSlices {
    use tessera_common::{Attr, FileKind};
    CachedSlices::from(FileSlices {
        attr: Attr {
            ino: 2,
            kind: FileKind::File,
            perm: 0o644,
            nlink: 1,
            uid: 0,
            gid: 0,
            rdev: 0,
            size,
            atime_ns: 0,
            mtime_ns: 0,
            ctime_ns: 0,
        },
        slices,
        inline: vec![],
    })
}

#[cfg(test)]
mod tests {
    use tessera_common::INLINE_BIT;

    use super::*;

    fn slice(offset: u64, len: u32, block: BlockId) -> Slice {
        Slice {
            offset,
            len,
            block,
            block_offset: 0,
            block_len: len,
        }
    }

    fn fetched(slices: Vec<Slice>) -> CachedSlices {
        fetched_for_tests(slices, 10 * CHUNK_SIZE)
    }

    /// A commit touching one chunk leaves every other chunk's list where
    /// it was, even while a reader holds the file's slices: a commit
    /// costs what it touches, not the file's history.
    #[test]
    fn a_commit_copies_only_the_chunks_it_touches() {
        let mut cached = Arc::new(fetched(
            (0..10)
                .map(|c| slice(c * CHUNK_SIZE, 4096, c + 1))
                .collect(),
        ));
        let reader = cached.clone();
        Arc::make_mut(&mut cached).apply(
            &[slice(5 * CHUNK_SIZE + 10, 10, 99)],
            &[],
            10 * CHUNK_SIZE,
        );
        for c in (0..10).filter(|c| *c != 5) {
            assert!(
                Arc::ptr_eq(&cached.chunks[&c], &reader.chunks[&c]),
                "chunk {c} was copied"
            );
        }
        assert_eq!(reader.len(), 10, "the reader's view did not change");
        // Chunk 5's extent is cut in three around the new one.
        assert_eq!(cached.len(), 12);
    }

    #[test]
    fn overwrites_stay_bounded_and_reads_see_the_newest_bytes() {
        let mut cached = fetched(vec![slice(0, 8192, 1)]);
        for b in 2..1000 {
            cached.apply(&[slice(4096, 4096, b)], &[], 8192);
        }
        assert_eq!(cached.len(), 2, "one extent per run of bytes");
        let v = cached.visible(0, 8192);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].slice.block, v[0].offset, v[0].len), (1, 0, 4096));
        assert_eq!((v[1].slice.block, v[1].offset, v[1].len), (999, 4096, 4096));
        // A slice crossing a chunk boundary shows in both chunks.
        cached.apply(&[slice(CHUNK_SIZE - 10, 20, 5000)], &[], CHUNK_SIZE + 10);
        let v = cached.visible(CHUNK_SIZE - 20, CHUNK_SIZE + 20);
        assert_eq!(
            v.iter()
                .map(|x| (x.offset, x.len, x.block_offset()))
                .collect::<Vec<_>>(),
            vec![(CHUNK_SIZE - 10, 10, 0), (CHUNK_SIZE, 10, 10)]
        );
    }

    #[test]
    fn inline_bytes_go_with_the_last_slice_into_them() {
        const LEN: usize = tessera_common::DEFERRED_MAX;
        let mut cached = fetched(vec![]);
        let ib = |block| InlineBlock {
            block,
            data: Bytes::from(vec![7u8; LEN]),
        };
        // A deferred write in the second chunk, never written over.
        let far = INLINE_BIT | 1;
        let size = CHUNK_SIZE + 10 * LEN as u64;
        cached.apply(&[slice(CHUNK_SIZE, LEN as u32, far)], &[ib(far)], size);
        // 1,000 deferred writes over the same bytes.
        for b in 2..1002 {
            let id = INLINE_BIT | b;
            cached.apply(&[slice(0, LEN as u32, id)], &[ib(id)], size);
            assert!(
                cached.inline_bytes <= 4 * INLINE_HELD,
                "{} bytes of inline blocks held",
                cached.inline_bytes
            );
        }
        assert!(
            cached.inline(INLINE_BIT | 2).is_none(),
            "a written-over inline block's bytes stayed"
        );
        assert!(cached.inline(INLINE_BIT | 1001).is_some());
        assert!(cached.inline(far).is_some(), "a shown inline block went");
        let v = cached.visible(CHUNK_SIZE, CHUNK_SIZE + 1);
        assert_eq!(v[0].slice.block, far);
    }
}
