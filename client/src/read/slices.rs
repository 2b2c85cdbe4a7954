//! A file's committed slices as this mount last saw them, kept per 64 MiB
//! chunk as the metadata service keeps them: a commit of this mount
//! updates only the chunks it touches (copying a chunk's list only while a
//! reader holds it, never the whole file's), prunes them by the same rule
//! as the service, and a read looks only at the chunks it covers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use bytes::Bytes;
use tessera_common::{
    data::{push_slices, split_at_chunks},
    is_inline, overlay, BlockId, FileSlices, InlineBlock, Slice, CHUNK_SIZE,
};

/// One visible run of a read: bytes `[offset, offset+len)` of the file
/// come from `slice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Visible {
    pub slice: Slice,
    pub offset: u64,
    pub len: u64,
}

impl Visible {
    /// Where the run starts in its block.
    pub fn block_offset(&self) -> usize {
        self.slice.block_offset as usize + (self.offset - self.slice.offset) as usize
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct CachedSlices {
    pub size: u64,
    /// Each chunk's slices, oldest first.
    chunks: BTreeMap<u64, Arc<Vec<Slice>>>,
    /// The bytes of the inline blocks the slices point into.
    inline: HashMap<BlockId, Bytes>,
}

impl From<FileSlices> for CachedSlices {
    fn from(f: FileSlices) -> Self {
        let mut chunks: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
        for s in f.slices {
            for (index, part) in split_at_chunks(s) {
                chunks.entry(index).or_default().push(part);
            }
        }
        CachedSlices {
            size: f.attr.size,
            chunks: chunks.into_iter().map(|(i, l)| (i, Arc::new(l))).collect(),
            inline: f.inline.into_iter().map(|b| (b.block, b.data)).collect(),
        }
    }
}

impl CachedSlices {
    /// Lays this mount's committed slices (oldest first) on top, with the
    /// inline blocks they point into; `size` is the file's size after.
    pub fn apply(&mut self, slices: &[Slice], inline: &[InlineBlock], size: u64) {
        let mut by_chunk: BTreeMap<u64, Vec<Slice>> = BTreeMap::new();
        for s in slices {
            for (index, part) in split_at_chunks(*s) {
                by_chunk.entry(index).or_default().push(part);
            }
        }
        let mut dropped = Vec::new();
        for (index, parts) in by_chunk {
            let list = Arc::make_mut(self.chunks.entry(index).or_default());
            dropped.extend(push_slices(list, index, &parts));
        }
        for b in inline {
            self.inline.insert(b.block, b.data.clone());
        }
        for d in dropped.iter().filter(|d| is_inline(d.block)) {
            let still = self
                .chunks
                .values()
                .any(|l| l.iter().any(|s| s.block == d.block));
            if !still {
                self.inline.remove(&d.block);
            }
        }
        self.size = size;
    }

    /// What shows in `[start, end)`, in file order; bytes no slice covers
    /// are holes (zeros).
    pub fn visible(&self, start: u64, end: u64) -> Vec<Visible> {
        let mut out = Vec::new();
        if start >= end {
            return out;
        }
        let (first, last) = (start / CHUNK_SIZE, (end - 1) / CHUNK_SIZE);
        for (&index, list) in self.chunks.range(first..=last) {
            let lo = start.max(index * CHUNK_SIZE);
            let hi = end.min((index + 1) * CHUNK_SIZE);
            let extents: Vec<(u64, u64)> =
                list.iter().map(|s| (s.offset, u64::from(s.len))).collect();
            out.extend(
                overlay::visible(&extents, lo, hi)
                    .into_iter()
                    .map(|p| Visible {
                        slice: list[p.slice],
                        offset: p.offset,
                        len: p.len,
                    }),
            );
        }
        out
    }

    /// The bytes of inline block `block`, if the file has them.
    pub fn inline(&self, block: BlockId) -> Option<&Bytes> {
        self.inline.get(&block)
    }

    /// Slices listed, over every chunk.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.chunks.values().map(|l| l.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use tessera_common::{Attr, FileKind, INLINE_BIT};

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
        CachedSlices::from(FileSlices {
            attr: Attr {
                ino: 2,
                kind: FileKind::File,
                perm: 0o644,
                nlink: 1,
                uid: 0,
                gid: 0,
                rdev: 0,
                size: 10 * CHUNK_SIZE,
                atime_ns: 0,
                mtime_ns: 0,
                ctime_ns: 0,
            },
            slices,
            inline: vec![],
        })
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
        assert_eq!(cached.len(), 11);
    }

    #[test]
    fn overwrites_stay_bounded_and_reads_see_the_newest_bytes() {
        let mut cached = fetched(vec![slice(0, 8192, 1)]);
        for b in 2..1000 {
            cached.apply(&[slice(4096, 4096, b)], &[], 8192);
        }
        assert!(
            cached.len() <= tessera_common::data::PRUNE_AT + 1,
            "{}",
            cached.len()
        );
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
        let mut cached = fetched(vec![]);
        let a = INLINE_BIT | 1;
        let ib = |block| InlineBlock {
            block,
            data: Bytes::from_static(b"0123456789"),
        };
        cached.apply(&[slice(0, 10, a)], &[ib(a)], 10);
        assert!(cached.inline(a).is_some());
        for b in 2..100 {
            let id = INLINE_BIT | b;
            cached.apply(&[slice(0, 10, id)], &[ib(id)], 10);
        }
        assert!(
            cached.inline(a).is_none(),
            "a pruned inline block's bytes stayed"
        );
        assert!(cached.inline(INLINE_BIT | 99).is_some());
    }
}
