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

use std::{
    collections::{btree_map::Entry, BTreeMap, HashMap},
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tessera_common::{crc32, placement::pg_of, BlockId, Codec, NodeId, Protection, MAX_BLOCK};
use tessera_proto::pb;
use tracing::{debug, info, warn};

use crate::{
    gc::blocking,
    keys,
    meta::now_ns,
    node_clients::NodeClients,
    records::{decode, load, store, PlacementRecord},
    store::{transact, Txn},
    Meta, MetaError, NodeState, Result,
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
    fn shard_bytes(&self) -> u64 {
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

/// Runs repair every `interval` until the task is dropped.
pub async fn repair_forever(meta: Arc<Meta>, interval: Duration) {
    let mut clients = NodeClients::default();
    loop {
        tokio::time::sleep(interval).await;
        if let Err(e) = repair_once(&meta, &mut clients, 256).await {
            warn!(error = %e, "repair round failed");
        }
    }
}

/// One round over up to `limit` queued blocks; returns the shards rebuilt.
pub async fn repair_once(
    meta: &Arc<Meta>,
    clients: &mut NodeClients,
    limit: usize,
) -> Result<usize> {
    let m = meta.clone();
    let pending = blocking(move || m.repair_pending(limit)).await?;
    if pending.is_empty() {
        return Ok(0);
    }
    let m = meta.clone();
    let up: HashMap<NodeId, String> = blocking(move || m.list_nodes())
        .await?
        .into_iter()
        .filter(|n| n.state == NodeState::Up)
        .map(|n| (n.record.id, n.record.addr))
        .collect();
    let mut tables: BTreeMap<(u8, u8), PlacementRecord> = BTreeMap::new();
    let mut rebuilt = 0;
    for (block, rec) in pending {
        let m = meta.clone();
        if blocking(move || m.is_garbage(block)).await? {
            let (m, all) = (meta.clone(), rec.missing.clone());
            blocking(move || m.repair_done(block, &all)).await?;
            continue;
        }
        let p = rec.protection;
        let table = match tables.entry((p.k, p.m)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let m = meta.clone();
                e.insert(blocking(move || m.placement(p)).await?)
            }
        };
        let pg = table.pgs[pg_of(block, table.pgs.len() as u32) as usize].clone();
        // Catch-up waits for the target node to be back.
        let ready: Vec<u8> = rec
            .missing
            .iter()
            .copied()
            .filter(|i| up.contains_key(&pg[usize::from(*i)]))
            .collect();
        if ready.is_empty() {
            continue;
        }
        match rebuild(clients, &up, &pg, table.epoch, block, &rec, &ready).await {
            Ok(done) if !done.is_empty() => {
                let bytes = rec.shard_bytes() / rec.missing.len() as u64 * done.len() as u64;
                meta.repair_stats
                    .shards
                    .fetch_add(done.len() as u64, Ordering::Relaxed);
                meta.repair_stats.bytes.fetch_add(bytes, Ordering::Relaxed);
                rebuilt += done.len();
                let m = meta.clone();
                blocking(move || m.repair_done(block, &done)).await?;
            }
            Ok(_) => {}
            Err(e) => debug!(block, error = %e, "repair of block deferred"),
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
async fn rebuild(
    clients: &mut NodeClients,
    up: &HashMap<NodeId, String>,
    pg: &[NodeId],
    epoch: u64,
    block: BlockId,
    rec: &RepairRecord,
    ready: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let mut done = Vec::new();
    let mut decode = Vec::new();
    for &i in ready {
        let target = pg[usize::from(i)];
        let copied = match rec.sources.get(&i) {
            Some(&src) if up.contains_key(&src) => match fetch(clients, up, src, block, i).await {
                Ok(data) => put(clients, up, target, block, i, data, epoch)
                    .await
                    .is_ok(),
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
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; p.width()];
        let mut got = 0;
        for j in 0..p.width() {
            if got == k {
                break;
            }
            let j8 = j as u8;
            // A shard still to move may be read where it was; one that was
            // never written is nowhere.
            let holder = if !rec.missing.contains(&j8) {
                Some(pg[j])
            } else {
                rec.sources.get(&j8).copied()
            };
            let Some(node) = holder.filter(|n| up.contains_key(n)) else {
                continue;
            };
            if let Ok(data) = fetch(clients, up, node, block, j8).await {
                shards[j] = Some(data);
                got += 1;
            }
        }
        if got < k {
            return Err(format!("only {got} of the {k} shards needed are readable"));
        }
        let all = Codec::new(p)
            .reconstruct_all(block, shards, rec.block_len as usize)
            .map_err(|e| e.to_string())?;
        for i in decode {
            let data = all[usize::from(i)].clone();
            if put(clients, up, pg[usize::from(i)], block, i, data, epoch)
                .await
                .is_ok()
            {
                done.push(i);
            }
        }
    }
    // The moved shards' old copies are garbage now (best effort: a node
    // that is down keeps a stale copy nobody reads).
    for &i in &done {
        if let Some(&src) = rec.sources.get(&i) {
            if src != pg[usize::from(i)] {
                delete(clients, up, src, block, i).await;
            }
        }
    }
    Ok(done)
}

fn key(block: BlockId, index: u8) -> Option<pb::ShardKey> {
    Some(pb::ShardKey {
        block,
        index: u32::from(index),
    })
}

/// A whole shard, CRC-checked end to end.
async fn fetch(
    clients: &mut NodeClients,
    up: &HashMap<NodeId, String>,
    node: NodeId,
    block: BlockId,
    index: u8,
) -> std::result::Result<Vec<u8>, String> {
    let addr = up.get(&node).ok_or("node down")?;
    let mut client = clients
        .get(node, addr)
        .await
        .inspect_err(|_| clients.forget(node))?;
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
    Ok(r.data.to_vec())
}

async fn put(
    clients: &mut NodeClients,
    up: &HashMap<NodeId, String>,
    node: NodeId,
    block: BlockId,
    index: u8,
    data: Vec<u8>,
    epoch: u64,
) -> std::result::Result<(), String> {
    let addr = up.get(&node).ok_or("node down")?;
    let mut client = clients
        .get(node, addr)
        .await
        .inspect_err(|_| clients.forget(node))?;
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

async fn delete(
    clients: &mut NodeClients,
    up: &HashMap<NodeId, String>,
    node: NodeId,
    block: BlockId,
    index: u8,
) {
    let Some(addr) = up.get(&node) else { return };
    let Ok(mut client) = clients.get(node, addr).await else {
        clients.forget(node);
        return;
    };
    let req = pb::DeleteShardsRequest {
        keys: vec![pb::ShardKey {
            block,
            index: u32::from(index),
        }],
    };
    if let Err(s) = client.delete_shards(req).await {
        debug!(block, shard = index, node, error = %s.message(), "deleting a moved shard's old copy failed");
    }
}
