//! Block records: which blocks exist, their protection class and length,
//! and how many slice entries refer to them.
//!
//! `B` + block id -> BlockRecord. A commit that stores a slice (each chunk
//! piece of it) adds a reference in the same transaction; whatever removes a
//! slice (truncate, overwrite pruning, unlink, volume removal) drops one. The
//! transaction that drops the last reference deletes the record and queues
//! the block for garbage collection, so a block still referenced anywhere is
//! never freed, whatever order writes and deletes commit in.
//!
//! An inline block (`tessera_common::is_inline`) has a record too; its
//! bytes are under `L` + block id, and the transaction that drops its last
//! reference deletes them.

use serde::{Deserialize, Serialize};
use tessera_common::{is_inline, BlockId, Protection};

use crate::{
    gc, keys,
    records::{load, store, Slice},
    store::Txn,
    Meta, MetaError, Result,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub protection: Protection,
    /// Length of the block before encoding.
    pub block_len: u32,
    /// Slice entries (chunk pieces) pointing into the block.
    pub refs: u64,
}

/// Adds one reference to the block of `s`, creating its record.
pub(crate) fn add_ref(txn: &mut dyn Txn, protection: Protection, s: &Slice) -> Result<()> {
    let key = keys::block(s.block);
    let rec = match load::<BlockRecord>(txn, &key)? {
        None => {
            if txn.get(&keys::gc(s.block))?.is_some() {
                return Err(MetaError::Invalid(format!(
                    "block {} was freed and cannot be referenced again",
                    s.block
                )));
            }
            BlockRecord {
                protection,
                block_len: s.block_len,
                refs: 1,
            }
        }
        Some(r) if r.protection != protection || r.block_len != s.block_len => {
            return Err(MetaError::Invalid(format!(
                "block {} is a {} block of {} bytes, not {protection} of {}",
                s.block, r.protection, r.block_len, s.block_len
            )))
        }
        Some(r) => BlockRecord {
            refs: r.refs + 1,
            ..r
        },
    };
    store(txn, &key, &rec)
}

/// Drops one reference per slice; a block left with none is queued for GC.
pub(crate) fn drop_refs(txn: &mut dyn Txn, slices: &[Slice]) -> Result<()> {
    for s in slices {
        let key = keys::block(s.block);
        let Some(mut rec) = load::<BlockRecord>(txn, &key)? else {
            // Already freed by an earlier reference drop of this commit.
            continue;
        };
        rec.refs = rec.refs.saturating_sub(1);
        if rec.refs == 0 {
            txn.delete(&key)?;
            if is_inline(s.block) {
                // Its bytes are here: nothing on any node to delete.
                txn.delete(&keys::inline(s.block))?;
            } else {
                gc::queue_block(txn, s.block, rec.protection)?;
            }
        } else {
            store(txn, &key, &rec)?;
        }
    }
    Ok(())
}

impl Meta {
    /// A live block's record.
    pub fn block(&self, id: BlockId) -> Result<Option<BlockRecord>> {
        let key = keys::block(id);
        match self.store.begin().get(&key)? {
            Some(v) => crate::records::decode(&key, &v).map(Some),
            None => Ok(None),
        }
    }
}
