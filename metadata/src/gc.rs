//! Garbage collection of blocks nothing refers to any more.
//!
//! A block is queued (`G` + block id) in the same transaction that removes
//! the last reference to it, so the queue never misses a block and never
//! holds one that is still referenced. A background task takes batches off
//! the queue, deletes every shard of each block from the nodes of its
//! placement group, and forgets a block only once every one of those nodes
//! confirmed; a node that is down keeps its blocks queued until it is back.
//!
//! Blocks are queued by [`crate::blocks`] when their reference count drops
//! to zero: deleted files, truncated or overwritten slices, removed volumes.

use std::{
    collections::{btree_map::Entry, BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tessera_common::{placement::pg_of, BlockId, NodeId, Protection};
use tessera_proto::pb;
use tracing::{debug, info, warn};

use crate::{
    keys,
    meta::now_ns,
    node_clients::NodeClients,
    records::{decode, store, PlacementRecord},
    store::{transact, Txn},
    Meta, NodeState, Result,
};

/// One queued block: what is needed to find its shards.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct GcRecord {
    pub protection: Protection,
    pub queued_ns: i64,
}

/// Keys sent to a node in one DeleteShards call.
const DELETE_BATCH: usize = 1024;

/// Queues `block` in `txn`; called when its last reference goes.
pub(crate) fn queue_block(txn: &mut dyn Txn, block: BlockId, protection: Protection) -> Result<()> {
    let rec = GcRecord {
        protection,
        queued_ns: now_ns(),
    };
    store(txn, &keys::gc(block), &rec)
}

impl Meta {
    /// Up to `limit` queued blocks, oldest ids first. Each was queued by a
    /// change that is durable when this returns: the change may have been
    /// a buffered one (an unlink), and deleting shards for a change that a
    /// power loss then undoes would lose the data it brings back.
    pub fn gc_pending(&self, limit: usize) -> Result<Vec<(BlockId, GcRecord)>> {
        let (start, end) = keys::prefix_range(&[keys::GC]);
        let rows = self.store.begin().scan(&start, &end, limit)?;
        if !rows.is_empty() {
            self.store.sync()?;
        }
        rows.iter()
            .map(|(k, v)| {
                let block = keys::block_of(k, keys::GC)?;
                Ok((block, decode(k, v)?))
            })
            .collect()
    }

    /// Forgets blocks whose shards are all deleted.
    pub fn gc_forget(&self, blocks: &[BlockId]) -> Result<()> {
        for batch in blocks.chunks(1024) {
            transact(self.store.as_ref(), |txn| {
                for b in batch {
                    txn.delete(&keys::gc(*b))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Runs garbage collection every `interval` until the task is dropped.
pub async fn collect_forever(meta: Arc<Meta>, interval: Duration) {
    let clients = NodeClients::default();
    loop {
        tokio::time::sleep(interval).await;
        let m = meta.clone();
        if let Err(e) = blocking(move || m.expire_orphans()).await {
            warn!(error = %e, "removing orphans whose lease ran out failed");
        }
        loop {
            match collect_once(&meta, &clients, 4096).await {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "garbage collection round failed");
                    break;
                }
            }
        }
    }
}

/// One round: deletes the shards of up to `limit` queued blocks and returns
/// how many blocks were freed for good.
pub async fn collect_once(meta: &Arc<Meta>, clients: &NodeClients, limit: usize) -> Result<usize> {
    let m = meta.clone();
    let pending = blocking(move || m.gc_pending(limit)).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let m = meta.clone();
    let nodes = blocking(move || m.list_nodes()).await?;
    let up: HashMap<NodeId, String> = nodes
        .into_iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| (n.record.id, n.record.addr))
        .collect();
    // Which node holds which shard of each block, by placement.
    let mut tables = BTreeMap::new();
    let mut by_node: HashMap<NodeId, Vec<pb::ShardKey>> = HashMap::new();
    let mut holders: Vec<(BlockId, Vec<NodeId>)> = Vec::with_capacity(pending.len());
    for (block, rec) in &pending {
        let table = cached_placement(meta, &mut tables, rec.protection).await?;
        let pg = &table.pgs[pg_of(*block, table.pgs.len() as u32) as usize];
        for (index, node) in pg.iter().enumerate() {
            by_node.entry(*node).or_default().push(pb::ShardKey {
                block: *block,
                index: index as u32,
            });
        }
        holders.push((*block, pg.clone()));
    }
    let mut failed: HashSet<NodeId> = HashSet::new();
    for (node, keys) in by_node {
        let Some(addr) = up.get(&node) else {
            failed.insert(node);
            continue;
        };
        if let Err(e) = delete_on(clients, node, addr, keys).await {
            debug!(node, error = %e, "deleting shards failed; kept queued");
            clients.forget(node);
            failed.insert(node);
        }
    }
    let done: Vec<BlockId> = holders
        .into_iter()
        .filter(|(_, nodes)| nodes.iter().all(|n| !failed.contains(n)))
        .map(|(b, _)| b)
        .collect();
    let freed = done.len();
    let m = meta.clone();
    blocking(move || m.gc_forget(&done)).await?;
    if freed > 0 {
        info!(
            blocks = freed,
            waiting = pending.len() - freed,
            "garbage collected"
        );
    }
    Ok(freed)
}

async fn delete_on(
    clients: &NodeClients,
    node: NodeId,
    addr: &str,
    keys: Vec<pb::ShardKey>,
) -> std::result::Result<(), String> {
    let mut client = clients.get(node, addr).await?;
    for batch in keys.chunks(DELETE_BATCH) {
        client
            .delete_shards(pb::DeleteShardsRequest {
                keys: batch.to_vec(),
            })
            .await
            .map_err(|s| s.message().to_string())?;
    }
    Ok(())
}

/// The placement table of `p`, fetched once per round.
pub(crate) async fn cached_placement<'a>(
    meta: &Arc<Meta>,
    tables: &'a mut BTreeMap<(u8, u8), PlacementRecord>,
    p: Protection,
) -> Result<&'a PlacementRecord> {
    Ok(match tables.entry((p.k, p.m)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let m = meta.clone();
            e.insert(blocking(move || m.placement(p)).await?)
        }
    })
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("garbage collection tasks do not panic")
}
