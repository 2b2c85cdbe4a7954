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
    let key = keys::repair(d.block);
    let mut rec = load::<RepairRecord>(txn, &key)?.unwrap_or(RepairRecord {
        protection,
        block_len: d.block_len,
        missing: vec![],
        queued_ns: now_ns(),
    });
    rec.missing.extend(&d.missing);
    rec.missing.sort_unstable();
    rec.missing.dedup();
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
            if rec.missing.is_empty() {
                txn.delete(&key)?;
                Ok(())
            } else {
                store(txn, &key, &rec)
            }
        })
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

/// Reads K good shards of `block` from its PG, rebuilds the `ready` ones
/// and stores them on their nodes; returns the indices stored.
async fn rebuild(
    clients: &mut NodeClients,
    up: &HashMap<NodeId, String>,
    pg: &[NodeId],
    epoch: u64,
    block: BlockId,
    rec: &RepairRecord,
    ready: &[u8],
) -> std::result::Result<Vec<u8>, String> {
    let p = rec.protection;
    let k = usize::from(p.k);
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; p.width()];
    let mut got = 0;
    for (i, node) in pg.iter().enumerate() {
        if got == k {
            break;
        }
        if rec.missing.contains(&(i as u8)) {
            continue;
        }
        let Some(addr) = up.get(node) else { continue };
        let mut client = match clients.get(*node, addr).await {
            Ok(c) => c,
            Err(_) => {
                clients.forget(*node);
                continue;
            }
        };
        let req = pb::GetShardRequest {
            key: Some(pb::ShardKey {
                block,
                index: i as u32,
            }),
            offset: 0,
            len: 0,
        };
        match client.get_shard(req).await {
            Ok(r) => {
                let r = r.into_inner();
                if crc32(&r.data) == r.shard_crc {
                    shards[i] = Some(r.data.to_vec());
                    got += 1;
                }
            }
            Err(s) => {
                debug!(block, shard = i, node, error = %s.message(), "shard unreadable for repair")
            }
        }
    }
    if got < k {
        return Err(format!("only {got} of the {k} shards needed are readable"));
    }
    let all = Codec::new(p)
        .reconstruct_all(block, shards, rec.block_len as usize)
        .map_err(|e| e.to_string())?;
    let mut done = Vec::new();
    for &i in ready {
        let node = pg[usize::from(i)];
        let data = &all[usize::from(i)];
        let req = pb::PutShardRequest {
            key: Some(pb::ShardKey {
                block,
                index: u32::from(i),
            }),
            data: data.clone().into(),
            crc: crc32(data),
            epoch,
        };
        let Ok(mut client) = clients.get(node, &up[&node]).await else {
            clients.forget(node);
            continue;
        };
        match client.put_shard(req).await {
            Ok(_) => done.push(i),
            Err(s) => {
                warn!(block, shard = i, node, error = %s.message(), "storing a repaired shard failed");
                clients.forget(node);
            }
        }
    }
    Ok(done)
}
