//! The repair queue: shards a write could not make durable, rebuilt later
//! from K survivors onto the node of their placement group.
//!
//! A client that stores a block with some shards missing (a node down, at
//! least `min_durable` shards durable) names them in its CommitWrites; they
//! are queued (`R` + block id) in the transaction that commits the slices,
//! so an acknowledged write is never left under-protected without a record.
//! A background task rebuilds queued shards once their target node is up:
//! a node that comes back after a short outage receives exactly the shards
//! it missed (catch-up), never a full rebuild.

mod worker;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::{BlockId, Codec, NodeId, Protection, MAX_BLOCK};

pub use worker::{repair_forever, repair_once, RepairOptions};

use crate::{
    keys,
    meta::now_ns,
    records::{decode, load, store},
    store::{transact, Txn},
    Meta, MetaError, Result,
};

/// A block stored with some shards missing, as a client reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Degraded {
    pub block: BlockId,
    pub block_len: u32,
    pub missing: Vec<u8>,
}

/// One queued block.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RepairRecord {
    pub protection: Protection,
    pub block_len: u32,
    /// Shard indices still to rebuild.
    pub missing: Vec<u8>,
    /// For shards that moved (remap, drain), the node that held them: they
    /// are copied from there when it is up, else rebuilt from the others.
    pub sources: BTreeMap<u8, NodeId>,
    pub queued_ns: i64,
}

impl RepairRecord {
    pub(crate) fn shard_bytes(&self) -> u64 {
        let len = Codec::new(self.protection).shard_len(self.block_len as usize) as u64;
        len * self.missing.len() as u64
    }
}

/// Checks a client's report against the protection class.
pub(crate) fn check(d: &Degraded, p: Protection) -> Result<()> {
    let bad = |why: &str| {
        Err(MetaError::Invalid(format!(
            "degraded block {}: {why}",
            d.block
        )))
    };
    if d.block_len == 0 || d.block_len as usize > MAX_BLOCK {
        return bad("length out of range");
    }
    if tessera_common::is_inline(d.block) {
        return bad("an inline block has no shards");
    }
    if d.missing.is_empty() || d.missing.len() > usize::from(p.m) {
        return bad("must name 1 to M missing shards");
    }
    if d.missing.iter().any(|i| usize::from(*i) >= p.width()) {
        return bad("shard index beyond the stripe");
    }
    Ok(())
}

/// Queues `d` in `txn`, merging with what is queued for the block already.
pub(crate) fn queue(txn: &mut dyn Txn, protection: Protection, d: &Degraded) -> Result<()> {
    queue_with_sources(txn, protection, d, &[])
}

/// [`queue`], remembering where moved shards can be copied from.
pub(crate) fn queue_with_sources(
    txn: &mut dyn Txn,
    protection: Protection,
    d: &Degraded,
    sources: &[(u8, NodeId)],
) -> Result<()> {
    let key = keys::repair(d.block);
    let mut rec = load::<RepairRecord>(txn, &key)?.unwrap_or(RepairRecord {
        protection,
        block_len: d.block_len,
        missing: vec![],
        sources: BTreeMap::new(),
        queued_ns: now_ns(),
    });
    rec.missing.extend(&d.missing);
    rec.missing.sort_unstable();
    rec.missing.dedup();
    for (i, node) in sources {
        // The first source recorded is the one that was written to.
        rec.sources.entry(*i).or_insert(*node);
    }
    store(txn, &key, &rec)
}

/// Queue lengths, for `tessera cluster status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueStatus {
    pub repair_blocks: u64,
    pub repair_shards: u64,
    pub repair_bytes: u64,
    pub gc_blocks: u64,
}

impl Meta {
    pub fn repair_pending(&self, limit: usize) -> Result<Vec<(BlockId, RepairRecord)>> {
        let (start, end) = keys::prefix_range(&[keys::REPAIR]);
        let rows = self.store.begin().scan(&start, &end, limit)?;
        rows.iter()
            .map(|(k, v)| Ok((keys::block_of(k, keys::REPAIR)?, decode(k, v)?)))
            .collect()
    }

    /// Removes `done` from the shards queued for `block`.
    pub fn repair_done(&self, block: BlockId, done: &[u8]) -> Result<()> {
        let key = keys::repair(block);
        transact(self.store.as_ref(), |txn| {
            let Some(mut rec) = load::<RepairRecord>(txn, &key)? else {
                return Ok(());
            };
            rec.missing.retain(|i| !done.contains(i));
            rec.sources.retain(|i, _| !done.contains(i));
            if rec.missing.is_empty() {
                txn.delete(&key)?;
                Ok(())
            } else {
                store(txn, &key, &rec)
            }
        })
    }

    /// Queues shards found corrupt (by a node's scrubber or a client's read)
    /// for rebuilding in place. Shards of blocks no longer live are ignored.
    /// Returns how many were queued.
    pub fn report_corrupt(
        &self,
        reporter: NodeId,
        keys: &[tessera_common::ShardKey],
    ) -> Result<usize> {
        let mut queued = 0;
        for key in keys {
            let Some(b) = self.block(key.block)? else {
                continue;
            };
            if usize::from(key.index) >= b.protection.width() {
                return Err(MetaError::Invalid(format!(
                    "{key}: no such shard in a {} block",
                    b.protection
                )));
            }
            let d = Degraded {
                block: key.block,
                block_len: b.block_len,
                missing: vec![key.index],
            };
            transact(self.store.as_ref(), |txn| queue(txn, b.protection, &d))?;
            queued += 1;
        }
        self.repair_stats
            .corrupt
            .fetch_add(keys.len() as u64, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(
            reporter,
            shards = keys.len(),
            queued,
            "corrupt shards reported"
        );
        Ok(queued)
    }

    /// Whether `block` waits for garbage collection (nothing refers to it).
    pub fn is_garbage(&self, block: BlockId) -> Result<bool> {
        Ok(self.store.begin().get(&keys::gc(block))?.is_some())
    }

    pub fn queue_status(&self) -> Result<QueueStatus> {
        let mut s = QueueStatus::default();
        for (_, rec) in self.repair_pending(usize::MAX)? {
            s.repair_blocks += 1;
            s.repair_shards += rec.missing.len() as u64;
            s.repair_bytes += rec.shard_bytes();
        }
        let (start, end) = keys::prefix_range(&[keys::GC]);
        s.gc_blocks = self.store.begin().scan(&start, &end, usize::MAX)?.len() as u64;
        Ok(s)
    }
}
