//! Remapping placement groups when membership changes, moving as little as
//! possible.
//!
//! Each PG's nodes are recomputed by rendezvous hashing over the active
//! nodes (down nodes keep their slots: a short outage moves nothing), and a
//! node that stays in a PG keeps its shard index, so only the slots whose
//! node left or was displaced change. The new table gets the next epoch; the
//! old one is kept under `H` (commits placed with it are checked against
//! it), and a remap job (`J`) is written in the same transaction. The job
//! walks every chunk of the class's volumes and queues, for each block of a
//! changed PG, the moved shard indices for repair, with the node that held
//! them as the source to copy from. Its cursor advances in the transaction
//! that queues each batch, so a crash resumes where it stopped.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tessera_common::{
    placement::{pg_of, place, Candidate},
    BlockId, DegradedBlock, Membership, NodeId, Protection, VolumeId,
};
use tracing::{info, warn};

use super::{placement::candidate, ClusterMap};
use crate::{
    keys,
    records::{decode, load, store, PlacementRecord, Slice, VolumeRecord},
    repair,
    store::transact,
    Result,
};

/// Slices a remap job reads per transaction.
const JOB_BATCH: usize = 4096;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RemapJob {
    pub protection: Protection,
    /// The table the blocks moved away from.
    pub old_pgs: Vec<Vec<NodeId>>,
    /// Next chunk key to visit.
    pub cursor: Vec<u8>,
}

/// Keeps every node of `old` that is still wanted at its index and gives
/// the freed indices to the newly wanted nodes, in score order.
pub fn stable_assign(old: &[NodeId], wanted: &[NodeId]) -> Vec<NodeId> {
    let mut incoming = wanted.iter().filter(|n| !old.contains(n));
    old.iter()
        .map(|n| {
            if wanted.contains(n) {
                *n
            } else {
                *incoming.next().expect("as many nodes wanted as slots")
            }
        })
        .collect()
}

impl ClusterMap<'_> {
    /// Recomputes every placement table from the active nodes and queues the
    /// moves; returns how many PG slots moved.
    pub fn rebalance(&self) -> Result<usize> {
        let _one_at_a_time = self.meta.rebalancing.lock().expect("rebalance lock");
        let candidates: Vec<Candidate> = self
            .nodes()?
            .iter()
            .filter(|n| n.membership == Membership::Active)
            .map(candidate)
            .collect();
        let (start, end) = keys::prefix_range(&[keys::PLACEMENT]);
        let tables = self.meta.store().begin().scan(&start, &end, usize::MAX)?;
        let mut moved = 0;
        for (key, value) in tables {
            let old: PlacementRecord = decode(&key, &value)?;
            let (k, m) = (key[1], key[2]);
            let p = Protection::new(k, m)?;
            let seed = (u64::from(k) << 8) | u64::from(m);
            let pgs: Vec<Vec<NodeId>> = old
                .pgs
                .iter()
                .enumerate()
                .map(
                    |(pg, nodes)| match place(seed, pg as u32, &candidates, p.width()) {
                        Ok(wanted) => stable_assign(nodes, &wanted),
                        // Too few failure domains left: keep the PG as it is
                        // (degraded) rather than put two shards in one domain.
                        Err(_) => nodes.clone(),
                    },
                )
                .collect();
            let changed: usize = pgs
                .iter()
                .zip(&old.pgs)
                .map(|(a, b)| a.iter().zip(b).filter(|(x, y)| x != y).count())
                .sum();
            if changed == 0 {
                continue;
            }
            let new = PlacementRecord {
                epoch: old.epoch + 1,
                pgs,
            };
            let job = RemapJob {
                protection: p,
                old_pgs: old.pgs.clone(),
                cursor: vec![keys::SLICE],
            };
            transact(self.meta.store(), |txn| {
                let current: Option<PlacementRecord> = load(txn, &key)?;
                if current.as_ref() != Some(&old) {
                    return Err(crate::MetaError::Busy("placement changed meanwhile".into()));
                }
                store(txn, &keys::placement_history(k, m, old.epoch), &old)?;
                store(txn, &key, &new)?;
                store(txn, &keys::remap_job(k, m, new.epoch), &job)
            })?;
            info!(protection = %p, epoch = new.epoch, slots = changed, "placement remapped");
            moved += changed;
        }
        drop(_one_at_a_time);
        self.run_remap_jobs()?;
        Ok(moved)
    }

    /// Runs every remap job to its end (resuming after a crash).
    pub fn run_remap_jobs(&self) -> Result<()> {
        let (start, end) = keys::prefix_range(&[keys::REMAP_JOB]);
        for (job_key, value) in self.meta.store().begin().scan(&start, &end, usize::MAX)? {
            let mut job: RemapJob = decode(&job_key, &value)?;
            let p = job.protection;
            let mut volumes: HashMap<VolumeId, Option<Protection>> = HashMap::new();
            let mut queued = 0usize;
            loop {
                let current = self.placement(p)?;
                let (_, chunk_end) = keys::prefix_range(&[keys::SLICE]);
                let rows = self
                    .meta
                    .store()
                    .begin()
                    .scan(&job.cursor, &chunk_end, JOB_BATCH)?;
                let done = rows.len() < JOB_BATCH;
                // One entry per block, however many slices point into it.
                let mut batch: BTreeMap<BlockId, (DegradedBlock, Vec<(u8, NodeId)>)> =
                    BTreeMap::new();
                for (k, v) in &rows {
                    let vol = VolumeId::from_be_bytes(
                        k[1..9].try_into().expect("chunk keys hold a volume id"),
                    );
                    let class = match volumes.get(&vol) {
                        Some(c) => *c,
                        None => {
                            let c = self
                                .meta
                                .volumes()
                                .by_id(vol)
                                .ok()
                                .map(|v: VolumeRecord| v.protection);
                            volumes.insert(vol, c);
                            c
                        }
                    };
                    if class != Some(p) {
                        continue;
                    }
                    let s: Slice = decode(k, v)?;
                    if batch.contains_key(&s.block) {
                        continue;
                    }
                    if let Some(d) = moves_of(&job.old_pgs, &current.pgs, s) {
                        batch.insert(s.block, d);
                    }
                }
                let next = rows.last().map(|(k, _)| {
                    let mut n = k.clone();
                    n.push(0);
                    n
                });
                transact(self.meta.store(), |txn| {
                    for (d, sources) in batch.values() {
                        repair::queue(txn, p, d, sources)?;
                    }
                    match (&next, done) {
                        (_, true) | (None, _) => txn.delete(&job_key)?,
                        (Some(n), false) => {
                            let mut j = job.clone();
                            j.cursor = n.clone();
                            store(txn, &job_key, &j)?;
                        }
                    }
                    Ok(())
                })?;
                queued += batch.len();
                if !batch.is_empty() {
                    self.meta.repair_queued.notify_one();
                }
                match (next, done) {
                    (Some(n), false) => job.cursor = n,
                    _ => break,
                }
            }
            info!(protection = %p, blocks = queued, "remap queued its moves for repair");
            self.meta.repair_queued.notify_one();
        }
        Ok(())
    }
}

/// The moved shards of the block of `s`: indices whose node changed, with
/// the node that held them.
pub(crate) fn moves_of(
    old: &[Vec<NodeId>],
    new: &[Vec<NodeId>],
    s: Slice,
) -> Option<(DegradedBlock, Vec<(u8, NodeId)>)> {
    if tessera_common::is_inline(s.block) {
        return None;
    }
    let pg = pg_of(s.block, new.len() as u32) as usize;
    let (Some(before), Some(after)) = (old.get(pg), new.get(pg)) else {
        warn!(block = s.block, "placement tables of different sizes");
        return None;
    };
    let sources: Vec<(u8, NodeId)> = before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, (a, _))| (i as u8, *a))
        .collect();
    if sources.is_empty() {
        return None;
    }
    Some((
        DegradedBlock {
            block: s.block,
            block_len: s.block_len,
            missing: sources.iter().map(|(i, _)| *i).collect(),
        },
        sources,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_assign_keeps_staying_nodes_in_place() {
        assert_eq!(
            stable_assign(&[1, 2, 3, 4], &[4, 3, 2, 1]),
            vec![1, 2, 3, 4]
        );
        assert_eq!(
            stable_assign(&[1, 2, 3, 4], &[9, 1, 2, 4]),
            vec![1, 2, 9, 4]
        );
        assert_eq!(
            stable_assign(&[1, 2, 3, 4], &[8, 9, 2, 4]),
            vec![8, 2, 9, 4]
        );
    }
}
