//! The repair queue: shards a write could not make durable, rebuilt later
//! from K survivors onto the node of their placement group.
//!
//! A client that stores a block with some shards missing (a node down, at
//! least `min_durable` shards durable) names them in its CommitWrites; they
//! are queued (`R` + block id) in the transaction that commits the slices,
//! so an acknowledged write is never left under-protected without a record.
//! A background task (`worker.rs`) rebuilds queued shards once their target
//! node is up: a node that comes back after a short outage receives exactly
//! the shards it missed (catch-up), never a full rebuild.

mod stats;
mod worker;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::{BlockId, ClusterStatus, Codec, DegradedBlock, NodeId, Protection, ShardKey};

pub use stats::RepairStats;
pub use worker::{repair_forever, repair_once, RepairOptions};

use crate::{
    keys,
    meta::{now_ns, Meta},
    records::{decode, load, store},
    store::{transact, Txn},
    MetaError, Result,
};

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

/// Queues the missing shards of `d` in `txn`, merging with what is queued
/// for the block already; `sources` names where moved shards can be copied
/// from.
pub(crate) fn queue(
    txn: &mut dyn Txn,
    protection: Protection,
    d: &DegradedBlock,
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

/// The repair domain of a [`Meta`].
#[derive(Clone, Copy)]
pub struct RepairQueue<'m> {
    pub(crate) meta: &'m Meta,
}

impl RepairQueue<'_> {
    /// Up to `limit` queued blocks, lowest ids first.
    pub fn pending(&self, limit: usize) -> Result<Vec<(BlockId, RepairRecord)>> {
        let (start, end) = keys::prefix_range(&[keys::REPAIR]);
        let rows = self.meta.store().begin().scan(&start, &end, limit)?;
        rows.iter()
            .map(|(k, v)| Ok((keys::id_of(k, keys::REPAIR)?, decode(k, v)?)))
            .collect()
    }

    /// Removes `done` from the shards queued for `block`.
    pub fn done(&self, block: BlockId, done: &[u8]) -> Result<()> {
        let key = keys::repair(block);
        transact(self.meta.store(), |txn| {
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

    /// Queues shards found corrupt (by a node's scrubber or a client's
    /// read) for rebuilding in place. Shards of blocks no longer live are
    /// ignored. Returns how many were queued.
    pub fn report_corrupt(&self, reporter: NodeId, keys: &[ShardKey]) -> Result<usize> {
        let mut queued = 0;
        for key in keys {
            let Some(b) = self.meta.files().block(key.block)? else {
                continue;
            };
            if usize::from(key.index) >= b.protection.width() {
                return Err(MetaError::Invalid(format!(
                    "{key}: no such shard in a {} block",
                    b.protection
                )));
            }
            let d = DegradedBlock {
                block: key.block,
                block_len: b.block_len,
                missing: vec![key.index],
            };
            transact(self.meta.store(), |txn| queue(txn, b.protection, &d, &[]))?;
            queued += 1;
        }
        self.meta.repair_stats.corrupt_reported(keys.len() as u64);
        tracing::warn!(
            reporter,
            shards = keys.len(),
            queued,
            "corrupt shards reported"
        );
        if queued > 0 {
            self.meta.repair_queued.notify_one();
        }
        Ok(queued)
    }

    /// Blocks with a shard still to be copied off `node`.
    pub(crate) fn blocks_sourced_from(&self, node: NodeId) -> Result<usize> {
        Ok(self
            .pending(usize::MAX)?
            .into_iter()
            .filter(|(_, r)| r.sources.values().any(|n| *n == node))
            .count())
    }

    /// The repair and GC queues, and what repair did, for `cluster status`.
    pub fn status(&self) -> Result<ClusterStatus> {
        let stats = &self.meta.repair_stats;
        let (repaired_shards, repaired_bytes) = stats.repaired();
        let mut s = ClusterStatus {
            repaired_shards,
            repaired_bytes,
            repair_rate: stats.rate(),
            corrupt_reported: stats.corrupt(),
            gc_blocks: self.meta.gc().queued()?,
            releasing_files: self.meta.gc().releasing()?,
            ..ClusterStatus::default()
        };
        for (_, rec) in self.pending(usize::MAX)? {
            s.repair_blocks += 1;
            s.repair_shards += rec.missing.len() as u64;
            s.repair_bytes += rec.shard_bytes();
        }
        Ok(s)
    }

    pub fn stats(&self) -> &RepairStats {
        &self.meta.repair_stats
    }
}
