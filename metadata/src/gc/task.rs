//! The garbage collection task: every interval (or when woken), finishes
//! what was left to do (removed volumes' trees, large files' releases),
//! removes orphans whose lease ran out, then deletes the shards of queued
//! blocks.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tessera_common::{placement::pg_of, BlockId, NodeId};
use tessera_proto::pb;
use tracing::{debug, info, warn};

use crate::{
    background::{blocking, cached_placement},
    node_clients::NodeClients,
    Meta, Result,
};

/// Keys sent to a node in one DeleteShards call.
const DELETE_BATCH: usize = 1024;

/// Runs garbage collection every `interval` until the task is dropped.
pub async fn collect_forever(meta: Arc<Meta>, interval: Duration) {
    let clients = NodeClients::default();
    loop {
        // Work left for it (a removed volume) wakes it at once.
        let _ = tokio::time::timeout(interval, meta.gc_wanted.notified()).await;
        let m = meta.clone();
        if let Err(e) = blocking(move || m.gc().finish_deferred()).await {
            warn!(error = %e, "finishing removed volumes and large files failed");
        }
        let m = meta.clone();
        if let Err(e) = blocking(move || m.tree().expire_orphans()).await {
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
    let pending = blocking(move || m.gc().due(limit)).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let m = meta.clone();
    let up: HashMap<NodeId, String> = blocking(move || m.cluster().up_nodes()).await?;
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
    blocking(move || m.gc().forget(&done)).await?;
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
