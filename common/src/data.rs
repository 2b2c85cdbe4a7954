//! Where a file's bytes live: slices of blocks, inline blocks, and what a
//! writer reports with a commit.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::{
    fs::MAX_FILE_SIZE, is_inline, Attr, BlockId, Error, Ino, Protection, VolumeId, CHUNK_SIZE,
    DEFERRED_MAX, MAX_BLOCK,
};

/// A run of a file's bytes, `[offset, offset+len)`, stored at
/// `[block_offset, block_offset+len)` of a block of `block_len` bytes.
/// Immutable once committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub offset: u64,
    pub len: u32,
    pub block: BlockId,
    pub block_offset: u32,
    pub block_len: u32,
}

impl Slice {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }

    /// Whether the slice is well formed: not empty, inside its block,
    /// inside the largest file.
    pub fn check(&self) -> Result<(), Error> {
        let ok = self.len > 0
            && self.block != 0
            && (self.block_len as usize) <= MAX_BLOCK
            && self
                .block_offset
                .checked_add(self.len)
                .is_some_and(|e| e <= self.block_len)
            && self
                .offset
                .checked_add(u64::from(self.len))
                .is_some_and(|e| e <= MAX_FILE_SIZE);
        if ok {
            Ok(())
        } else {
            Err(Error::invalid("slice", format!("{self:?}"), "malformed"))
        }
    }
}

/// The pieces of `s` in each chunk it touches, with the chunk's index: a
/// slice crossing a chunk boundary is split there.
pub fn split_at_chunks(mut s: Slice) -> impl Iterator<Item = (u64, Slice)> {
    std::iter::from_fn(move || {
        if s.len == 0 {
            return None;
        }
        let index = s.offset / CHUNK_SIZE;
        let chunk_end = (index + 1) * CHUNK_SIZE;
        let mut part = s;
        if s.end() > chunk_end {
            part.len = (chunk_end - s.offset) as u32;
        }
        s.offset += u64::from(part.len);
        s.block_offset += part.len;
        s.len -= part.len;
        Some((index, part))
    })
}

/// The bytes of an inline block: one kept by the metadata service, not
/// on storage nodes (its id has [`crate::INLINE_BIT`] set).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineBlock {
    pub block: BlockId,
    pub data: Bytes,
}

impl InlineBlock {
    /// Whether the block is marked inline and of an inline block's size.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |why: &str| {
            Err(Error::invalid(
                "inline block",
                format!("{:#x} of {} bytes", self.block, self.data.len()),
                why,
            ))
        };
        if !is_inline(self.block) {
            return bad("its id lacks the inline bit");
        }
        if self.data.is_empty() || self.data.len() > DEFERRED_MAX {
            return bad("length out of range");
        }
        Ok(())
    }
}

/// A block stored with some shards missing, as its writer reports it:
/// they are queued for repair with the commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DegradedBlock {
    pub block: BlockId,
    pub block_len: u32,
    /// Shard indices that are not durable.
    pub missing: Vec<u8>,
}

impl DegradedBlock {
    /// Whether the report makes sense for a block of class `p`.
    pub fn check(&self, p: Protection) -> Result<(), Error> {
        let bad = |why: &str| {
            Err(Error::invalid(
                "degraded block",
                self.block.to_string(),
                why,
            ))
        };
        if self.block_len == 0 || self.block_len as usize > MAX_BLOCK {
            return bad("length out of range");
        }
        if is_inline(self.block) {
            return bad("an inline block has no shards");
        }
        if self.missing.is_empty() || self.missing.len() > usize::from(p.m) {
            return bad("must name 1 to M missing shards");
        }
        if self.missing.iter().any(|i| usize::from(*i) >= p.width()) {
            return bad("shard index beyond the stripe");
        }
        Ok(())
    }
}

/// Slices written to one file in one flush, to commit together.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileWrite {
    pub ino: Ino,
    pub slices: Vec<Slice>,
    pub mtime_ns: i64,
    /// Empty for a write. For a merge (fragments rewritten as fresh
    /// slices, the same bytes): what shows in the slices' span as the
    /// merger read it, each run as a slice of its own; the merge commits
    /// only if exactly that still shows, and changes no time.
    pub replaces: Vec<Slice>,
}

/// What one commit brings: files' new slices, once their shards are
/// durable, in one metadata transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Commit {
    pub vol: VolumeId,
    /// The files written and their new slices, each file's oldest first.
    pub files: Vec<FileWrite>,
    /// Blocks of these slices stored with some shards missing: queued for
    /// repair in the same transaction.
    pub degraded: Vec<DegradedBlock>,
    /// Inline blocks these slices point into, stored with the commit. A
    /// slice may point into an inline block only if the block comes with
    /// the commit or is kept already.
    pub inline: Vec<InlineBlock>,
    /// The placement epoch the blocks were placed with (0: the current
    /// one). Shards placed with an older table are queued to move where
    /// the current one wants them.
    pub placement_epoch: u64,
    /// The writing mount's session (0: unknown), recorded for files with
    /// locks: a mount taking a lock learns whether another one changed the
    /// file (see the metadata service's `fs/locks.rs`).
    pub session: u64,
}

/// What a commit left: each file's attributes, and the current placement
/// epoch (a writer with an older table fetches it again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    pub attrs: Vec<Attr>,
    pub placement_epoch: u64,
}

/// A file's attributes, every slice (oldest first within each chunk), and
/// the bytes of the inline blocks they point into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileSlices {
    pub attr: Attr,
    pub slices: Vec<Slice>,
    pub inline: Vec<InlineBlock>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::INLINE_BIT;

    fn slice(offset: u64, len: u32, block_offset: u32, block_len: u32) -> Slice {
        Slice {
            offset,
            len,
            block: 7,
            block_offset,
            block_len,
        }
    }

    #[test]
    fn malformed_slices_are_refused() {
        assert!(slice(0, 10, 0, 10).check().is_ok());
        assert!(slice(0, 0, 0, 10).check().is_err());
        assert!(slice(0, 10, 1, 10).check().is_err());
        assert!(slice(0, 10, u32::MAX, 10).check().is_err());
        assert!(slice(MAX_FILE_SIZE - 5, 10, 0, 10).check().is_err());
        assert!(slice(u64::MAX, 10, 0, 10).check().is_err());
        assert!(slice(0, 10, 0, MAX_BLOCK as u32 + 1).check().is_err());
        assert!(Slice {
            block: 0,
            ..slice(0, 1, 0, 1)
        }
        .check()
        .is_err());
    }

    #[test]
    fn slices_split_at_chunk_boundaries() {
        let s = Slice {
            offset: CHUNK_SIZE - 10,
            len: 30,
            block: 7,
            block_offset: 5,
            block_len: 100,
        };
        let parts: Vec<(u64, Slice)> = split_at_chunks(s).collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (parts[0].0, parts[0].1.len, parts[0].1.block_offset),
            (0, 10, 5)
        );
        assert_eq!(
            (
                parts[1].0,
                parts[1].1.offset,
                parts[1].1.len,
                parts[1].1.block_offset
            ),
            (1, CHUNK_SIZE, 20, 15)
        );
        assert_eq!(split_at_chunks(slice(5, 10, 0, 10)).count(), 1);
    }

    #[test]
    fn inline_blocks_and_degraded_reports_are_checked() {
        let b = |block, n| InlineBlock {
            block,
            data: Bytes::from(vec![1u8; n]),
        };
        assert!(b(INLINE_BIT | 3, 10).check().is_ok());
        assert!(b(3, 10).check().is_err());
        assert!(b(INLINE_BIT | 3, 0).check().is_err());
        assert!(b(INLINE_BIT | 3, DEFERRED_MAX).check().is_ok());
        assert!(b(INLINE_BIT | 3, DEFERRED_MAX + 1).check().is_err());
        let p = Protection::new(4, 2).unwrap();
        let d = |missing: Vec<u8>| DegradedBlock {
            block: 9,
            block_len: 100,
            missing,
        };
        assert!(d(vec![5]).check(p).is_ok());
        assert!(d(vec![]).check(p).is_err());
        assert!(d(vec![0, 1, 2]).check(p).is_err());
        assert!(d(vec![6]).check(p).is_err());
        assert!(DegradedBlock {
            block: INLINE_BIT | 9,
            ..d(vec![1])
        }
        .check(p)
        .is_err());
    }
}
