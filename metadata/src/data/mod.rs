//! Where files' bytes live: each file's slices, a key each, kept per
//! 64 MiB chunk oldest first (`slices.rs`). Writers commit new slices only
//! after their shards are durable (`commit.rs`); readers fetch them with
//! the bytes of the inline blocks they point into.

mod commit;
pub(crate) mod migrate;
pub(crate) mod slices;

use std::collections::BTreeSet;

use tessera_common::{
    is_inline, BlockId, FileSlices, InlineBlock, Ino, Slice, VolumeId, INLINE_BIT,
};

use crate::{
    blocks::BlockRecord,
    fs::TreeTxn,
    keys,
    meta::Meta,
    records::{decode, load},
    store::transact,
    MetaError, Result,
};

/// Most block ids one call reserves.
pub const MAX_ALLOC: u32 = 65_536;

/// The file data domain of a [`Meta`].
#[derive(Clone, Copy)]
pub struct FileData<'m> {
    pub(crate) meta: &'m Meta,
}

/// Drops what lies past `size`.
fn clip(slices: &mut Vec<Slice>, size: u64) {
    slices.retain(|s| s.offset < size);
    for s in slices.iter_mut() {
        if s.end() > size {
            s.len = (size - s.offset) as u32;
        }
    }
}

impl FileData<'_> {
    /// Reserves `count` fresh block ids; returns the first.
    pub fn alloc_blocks(&self, count: u32) -> Result<u64> {
        if !(1..=MAX_ALLOC).contains(&count) {
            return Err(MetaError::Invalid(format!(
                "block count {count} not in 1..={MAX_ALLOC}"
            )));
        }
        let first = self.meta.ids.block.alloc(self.meta.store(), count.into())?;
        if first + u64::from(count) > INLINE_BIT {
            return Err(MetaError::Invalid("block ids are exhausted".into()));
        }
        Ok(first)
    }

    /// A file's attributes, every slice, and the bytes of the inline
    /// blocks they point into, read in one transaction.
    pub fn read(&self, vol: VolumeId, ino: Ino) -> Result<FileSlices> {
        transact(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            let inode = t.inode(ino)?;
            let mut slices = slices::file(t.txn(), vol, ino)?;
            // A truncation still being cut in steps (`fs/release.rs`) has
            // left slices past the size: they are not the file's any more.
            clip(&mut slices, inode.size);
            let blocks: BTreeSet<BlockId> = slices
                .iter()
                .map(|s| s.block)
                .filter(|&b| is_inline(b))
                .collect();
            let mut inline = Vec::with_capacity(blocks.len());
            for block in blocks {
                let key = keys::inline(block);
                let data: Vec<u8> = load(t.txn(), &key)?.ok_or_else(|| MetaError::Corrupt {
                    key,
                    why: format!("inline block {block:#x} of inode {ino} has no bytes"),
                })?;
                inline.push(InlineBlock {
                    block,
                    data: data.into(),
                });
            }
            Ok(FileSlices {
                attr: inode.attr(ino),
                slices,
                inline,
            })
        })
    }

    /// A live block's record.
    pub fn block(&self, id: BlockId) -> Result<Option<BlockRecord>> {
        let key = keys::block(id);
        match self.meta.store().begin().get(&key)? {
            Some(v) => decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests;
