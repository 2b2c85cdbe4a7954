//! The repair task: rebuilds queued shards once their node is up, several
//! blocks at a time, within a bandwidth limit.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use futures::{stream, StreamExt};
use tessera_common::{crc32, pace::Pacer, placement::pg_of, BlockId, Codec, NodeId};
use tessera_proto::pb;
use tracing::{debug, info, warn};

use super::RepairRecord;
use crate::{
    background::{blocking, cached_placement},
    node_clients::NodeClients,
    records::PlacementRecord,
    Meta, Result,
};

/// How repair runs.
#[derive(Clone, Debug)]
pub struct RepairOptions {
    /// Pause between rounds when there was nothing to do.
    pub interval: Duration,
    /// Blocks rebuilt at the same time.
    pub concurrency: usize,
    /// Bytes per second repair may write; 0: unlimited.
    pub bandwidth: u64,
}

impl Default for RepairOptions {
    fn default() -> Self {
        RepairOptions {
            interval: Duration::from_secs(2),
            concurrency: 16,
            bandwidth: 0,
        }
    }
}

/// Runs repair until the task is dropped: a round right after a round
/// that did work, else after `interval`.
pub async fn repair_forever(meta: Arc<Meta>, opts: RepairOptions) {
    let clients = NodeClients::default();
    let limiter = Pacer::new(opts.bandwidth);
    loop {
        match repair_once(&meta, &clients, &limiter, &opts, 1024).await {
            Ok(n) if n > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "repair round failed"),
        }
        // Queued work wakes the task at once; the interval retries what
        // waits for a node.
        let _ = tokio::time::timeout(opts.interval, meta.repair_queued.notified()).await;
    }
}

/// One block ready to rebuild: its record, PG nodes, the table's epoch and
/// the indices whose node is up.
struct Job {
    block: BlockId,
    rec: RepairRecord,
    pg: Vec<NodeId>,
    epoch: u64,
    ready: Vec<u8>,
}

/// One round over up to `limit` queued blocks; returns the shards rebuilt.
pub async fn repair_once(
    meta: &Arc<Meta>,
    clients: &NodeClients,
    limiter: &Pacer,
    opts: &RepairOptions,
    limit: usize,
) -> Result<usize> {
    let m = meta.clone();
    let pending = blocking(move || m.repair().pending(limit)).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let m = meta.clone();
    let up: HashMap<NodeId, String> = blocking(move || m.cluster().up_nodes()).await?;
    let mut tables: BTreeMap<(u8, u8), PlacementRecord> = BTreeMap::new();
    let mut jobs = Vec::new();
    for (block, rec) in pending {
        let m = meta.clone();
        if blocking(move || m.gc().is_garbage(block)).await? {
            let (m, all) = (meta.clone(), rec.missing.clone());
            blocking(move || m.repair().done(block, &all)).await?;
            continue;
        }
        let table = cached_placement(meta, &mut tables, rec.protection).await?;
        let pg = table.pgs[pg_of(block, table.pgs.len() as u32) as usize].clone();
        // Catch-up waits for the target node to be back.
        let ready: Vec<u8> = rec
            .missing
            .iter()
            .copied()
            .filter(|i| up.contains_key(&pg[usize::from(*i)]))
            .collect();
        if !ready.is_empty() {
            jobs.push(Job {
                block,
                rec,
                pg,
                epoch: table.epoch,
                ready,
            });
        }
    }
    let peers = &Peers {
        clients,
        limiter,
        up: &up,
    };
    let results: Vec<(Job, std::result::Result<Vec<u8>, String>)> = stream::iter(jobs)
        .map(|job| async move {
            let r = rebuild(peers, &job).await;
            (job, r)
        })
        .buffer_unordered(opts.concurrency.max(1))
        .collect()
        .await;
    let mut rebuilt = 0;
    for (job, r) in results {
        match r {
            Ok(done) if !done.is_empty() => {
                let per_shard = job.rec.shard_bytes() / job.rec.missing.len() as u64;
                meta.repair_stats
                    .record(done.len() as u64, per_shard * done.len() as u64);
                rebuilt += done.len();
                let (m, block) = (meta.clone(), job.block);
                blocking(move || m.repair().done(block, &done)).await?;
            }
            Ok(_) => {}
            Err(e) => debug!(block = job.block, error = %e, "repair of block deferred"),
        }
    }
    if rebuilt > 0 {
        info!(shards = rebuilt, "repaired");
    }
    Ok(rebuilt)
}

/// Stores the `ready` shards of `block` on their PG nodes: a moved shard
/// is copied from its source when that node is up, the others are rebuilt
/// from K good shards. Returns the indices stored.
async fn rebuild(peers: &Peers<'_>, job: &Job) -> std::result::Result<Vec<u8>, String> {
    let up = peers.up;
    let (block, rec, pg, epoch) = (job.block, &job.rec, &job.pg, job.epoch);
    let ready = &job.ready;
    let mut done = Vec::new();
    let mut decode = Vec::new();
    for &i in ready.iter() {
        let target = pg[usize::from(i)];
        let copied = match rec.sources.get(&i) {
            Some(&src) if up.contains_key(&src) => match peers.fetch(src, block, i).await {
                Ok(data) => peers.put(target, block, i, data, epoch).await.is_ok(),
                Err(_) => false,
            },
            _ => false,
        };
        if copied {
            done.push(i);
        } else {
            decode.push(i);
        }
    }
    if !decode.is_empty() {
        let p = rec.protection;
        let k = usize::from(p.k);
        // Where each other shard can be read: its PG node, or for a shard
        // still to move, where it was. One never written is nowhere.
        let holders: Vec<(usize, NodeId)> = (0..p.width())
            .filter_map(|j| {
                let j8 = j as u8;
                let holder = if !rec.missing.contains(&j8) {
                    Some(pg[j])
                } else {
                    rec.sources.get(&j8).copied()
                };
                holder.filter(|n| up.contains_key(n)).map(|n| (j, n))
            })
            .collect();
        // Read K at once; more only if some of those fail.
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; p.width()];
        let mut got = 0;
        let mut next = 0;
        while got < k && next < holders.len() {
            let wave: Vec<(usize, NodeId)> =
                holders[next..(next + k - got).min(holders.len())].to_vec();
            next += wave.len();
            let reads = wave.iter().map(|&(j, node)| async move {
                let r = peers.fetch(node, block, j as u8).await;
                (j, r)
            });
            for (j, r) in futures::future::join_all(reads).await {
                if let Ok(data) = r {
                    shards[j] = Some(data);
                    got += 1;
                }
            }
        }
        if got < k {
            return Err(format!("only {got} of the {k} shards needed are readable"));
        }
        let block_len = rec.block_len as usize;
        let all = tokio::task::spawn_blocking(move || {
            Codec::new(p).reconstruct_all(block, shards, block_len)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        let mut all = all;
        for i in decode {
            let data = std::mem::take(&mut all[usize::from(i)]);
            let target = pg[usize::from(i)];
            if peers.put(target, block, i, data, epoch).await.is_ok() {
                done.push(i);
            }
        }
    }
    // The moved shards' old copies are garbage now (best effort: a node
    // that is down keeps a stale copy nobody reads).
    for &i in &done {
        if let Some(&src) = rec.sources.get(&i) {
            if src != pg[usize::from(i)] {
                peers.delete(src, block, i).await;
            }
        }
    }
    Ok(done)
}

async fn pace(limiter: &Pacer, bytes: usize) {
    let wait = limiter.reserve(bytes as u64);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

fn key(block: BlockId, index: u8) -> Option<pb::ShardKey> {
    Some(pb::ShardKey {
        block,
        index: u32::from(index),
    })
}

/// The storage nodes repair talks to: channels, the ones that are up, and
/// the pace every byte moved is held to.
struct Peers<'a> {
    clients: &'a NodeClients,
    limiter: &'a Pacer,
    up: &'a HashMap<NodeId, String>,
}

impl Peers<'_> {
    /// A whole shard, CRC-checked end to end.
    async fn fetch(&self, node: NodeId, block: BlockId, index: u8) -> Result<Vec<u8>, String> {
        let mut client = self.clients.get_up(self.up, node).await?;
        let req = pb::GetShardRequest {
            key: key(block, index),
            offset: 0,
            len: 0,
        };
        let r = client
            .get_shard(req)
            .await
            .map_err(|s| s.message().to_string())?
            .into_inner();
        if crc32(&r.data) != r.shard_crc {
            return Err(format!(
                "shard {block:#x}/{index} on node {node} fails its CRC"
            ));
        }
        // Reads count against the limit too: repair's bandwidth is all it moves.
        pace(self.limiter, r.data.len()).await;
        Ok(r.data.to_vec())
    }

    async fn put(
        &self,
        node: NodeId,
        block: BlockId,
        index: u8,
        data: Vec<u8>,
        epoch: u64,
    ) -> Result<(), String> {
        let mut client = self.clients.get_up(self.up, node).await?;
        pace(self.limiter, data.len()).await;
        let req = pb::PutShardRequest {
            key: key(block, index),
            crc: crc32(&data),
            data: data.into(),
            epoch,
        };
        client.put_shard(req).await.map(|_| ()).map_err(|s| {
            warn!(block, shard = index, node, error = %s.message(), "storing a repaired shard failed");
            s.message().to_string()
        })
    }

    /// Deletes a moved shard's old copy (best effort).
    async fn delete(&self, node: NodeId, block: BlockId, index: u8) {
        let Ok(mut client) = self.clients.get_up(self.up, node).await else {
            return;
        };
        let req = pb::DeleteShardsRequest {
            keys: key(block, index).into_iter().collect(),
        };
        if let Err(s) = client.delete_shards(req).await {
            debug!(block, shard = index, node, error = %s.message(), "deleting a moved shard's old copy failed");
        }
    }
}
