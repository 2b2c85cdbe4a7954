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

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::{is_inline, BlockId, Protection};

use crate::{
    gc, keys,
    records::{load, store, Slice},
    store::Txn,
    MetaError, Result,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRecord {
    pub protection: Protection,
    /// Length of the block before encoding.
    pub block_len: u32,
    /// Slice entries (chunk pieces) pointing into the block.
    pub refs: u64,
}

/// Adds one reference per slice, creating the records of new blocks.
/// Each block's record is read and written once, however many of the
/// slices point into it.
pub(crate) fn add_refs(txn: &mut dyn Txn, protection: Protection, slices: &[Slice]) -> Result<()> {
    let mut counts: BTreeMap<BlockId, (u32, u64)> = BTreeMap::new();
    for s in slices {
        let c = counts.entry(s.block).or_insert((s.block_len, 0));
        if c.0 != s.block_len {
            return Err(MetaError::Invalid(format!(
                "block {} given as {} and {} bytes long",
                s.block, c.0, s.block_len
            )));
        }
        c.1 += 1;
    }
    for (block, (block_len, n)) in counts {
        let key = keys::block(block);
        let rec = match load::<BlockRecord>(txn, &key)? {
            None => {
                if txn.get(&keys::gc(block))?.is_some() {
                    return Err(MetaError::Invalid(format!(
                        "block {block} was freed and cannot be referenced again"
                    )));
                }
                BlockRecord {
                    protection,
                    block_len,
                    refs: n,
                }
            }
            Some(r) if r.protection != protection || r.block_len != block_len => {
                return Err(MetaError::Invalid(format!(
                    "block {block} is a {} block of {} bytes, not {protection} of {block_len}",
                    r.protection, r.block_len
                )))
            }
            Some(r) => BlockRecord {
                refs: r.refs + n,
                ..r
            },
        };
        store(txn, &key, &rec)?;
    }
    Ok(())
}

/// Drops one reference per slice; a block left with none is queued for GC.
/// Each block's record is read and written once, however many of the
/// slices point into it.
pub(crate) fn drop_refs(txn: &mut dyn Txn, slices: &[Slice]) -> Result<()> {
    let mut counts: BTreeMap<BlockId, u64> = BTreeMap::new();
    for s in slices {
        *counts.entry(s.block).or_insert(0) += 1;
    }
    for (block, n) in counts {
        let key = keys::block(block);
        let Some(mut rec) = load::<BlockRecord>(txn, &key)? else {
            // Already freed by an earlier reference drop of this commit.
            continue;
        };
        rec.refs = rec.refs.saturating_sub(n);
        if rec.refs == 0 {
            txn.delete(&key)?;
            if is_inline(block) {
                // Its bytes are here: nothing on any node to delete.
                txn.delete(&keys::inline(block))?;
            } else {
                gc::queue_block(txn, block, rec.protection)?;
            }
        } else {
            store(txn, &key, &rec)?;
        }
    }
    Ok(())
}
