//! Identifiers. Plain integers where the meaning is clear from the field name;
//! a struct where two of them travel together.

use std::fmt;

pub type NodeId = u64;
pub type VolumeId = u64;
pub type BlockId = u64;
pub type Ino = u64;

/// Set in the id of an inline block: one kept in the metadata service
/// instead of on storage nodes (at most [`crate::INLINE_MAX`] bytes).
/// Allocated ids stay below it.
pub const INLINE_BIT: BlockId = 1 << 63;

/// Whether `block` is kept in the metadata service, not on storage nodes.
pub fn is_inline(block: BlockId) -> bool {
    block & INLINE_BIT != 0
}

/// The root directory of every volume.
pub const ROOT_INO: Ino = 1;

/// One shard of one block: the unit a storage node stores.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShardKey {
    pub block: BlockId,
    pub index: u8,
}

impl fmt::Display for ShardKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "block {:#x} shard {}", self.block, self.index)
    }
}
