//! One block on the wire: encode and store its K+M shards in parallel;
//! read a byte range back from the data shards, falling back to parity when
//! a node is missing, slow, or returns a shard that fails its CRC.

mod batch;

use std::time::Duration;

use bytes::Bytes;
use futures::{future::join_all, stream::FuturesUnordered, StreamExt};
use tessera_common::{crc32, BlockId, Codec, NodeId, ShardKey};
use tracing::{debug, warn};

use crate::{node_link::Fetched, nodes::Nodes, read::cache::BlockCache, ClientError, Result};

const PUT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a block's store waits for its last shards once enough of
/// them are durable (see [`put_block`]).
const SLOW_PUT: Duration = Duration::from_secs(1);
/// Longest a degraded read waits for one whole shard; it needs only K of
/// them, and asks the other nodes once one is [`SLOW_READ`].
const GET_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a read waits for a node's bytes (between bytes on the caller's
/// thread; a connect: 2 s) before it reads around the node from parity
/// and takes it for suspect: a node that hangs while it still accepts
/// connections (a stuck disk, a stopped process) costs a read this long,
/// not `GET_TIMEOUT`, and the reads after it none while it is suspect.
pub(crate) const SLOW_READ: Duration = Duration::from_secs(1);

pub(crate) use batch::read_ranges;

/// Reads at least this large fetch and cache the whole block: a sequential
/// reader then costs K parallel shard reads per block instead of one round
/// trip per kernel read.
pub(crate) const WHOLE_BLOCK_AT: usize = 64 << 10;

/// Where a block lives and how long it is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlockRef {
    pub block: BlockId,
    pub len: usize,
}

impl BlockRef {
    /// The block `s` points into.
    pub fn of(s: &tessera_common::Slice) -> BlockRef {
        BlockRef {
            block: s.block,
            len: s.block_len as usize,
        }
    }
}

/// A block stored: the placement epoch its shards were placed with, and
/// the indices of the shards that are not durable (queued for repair with
/// the commit).
pub(crate) struct Stored {
    pub epoch: u64,
    pub missing: Vec<u8>,
}

/// Encodes `data` and stores every shard; succeeds when at least
/// `min_durable` shards are durable on their nodes. Once they are, the
/// others have [`SLOW_PUT`] more: a node still silent then (it hangs while
/// it accepts connections) is left out, its shard named missing (the
/// commit queues it for repair), and later blocks skip it for a while, so
/// it costs a store `SLOW_PUT`, not `PUT_TIMEOUT`.
pub(crate) async fn put_block(
    nodes: &Nodes,
    codec: &Codec,
    block: BlockId,
    data: Bytes,
    min_durable: usize,
) -> Result<Stored> {
    let shards = codec.encode_shared(data);
    let width = shards.len();
    let (targets, epoch) = nodes.shard_nodes_at(block);
    let key = |i: usize| ShardKey {
        block,
        index: i as u8,
    };
    let mut pending: FuturesUnordered<_> = shards
        .into_iter()
        .enumerate()
        .map(|(i, shard)| {
            let (key, node) = (key(i), targets[i]);
            let crc = crc32(&shard);
            async move {
                if nodes.skip_for_writes(node) {
                    // Down (the metadata service says so) or slow a moment
                    // ago: do not wait on it; the shard goes to the repair
                    // queue with the commit.
                    return (i, false);
                }
                let res = put_shard(nodes, node, key, shard, crc, epoch).await;
                if let Err(e) = &res {
                    warn!(%key, node, error = %e, "shard write failed");
                    nodes.suspect(node);
                }
                (i, res.is_ok())
            }
        })
        .collect();
    let mut stored = vec![false; width];
    let mut answered = vec![false; width];
    let mut durable = 0;
    let grace = tokio::time::sleep(PUT_TIMEOUT);
    tokio::pin!(grace);
    let mut waiting_for_stragglers = false;
    loop {
        tokio::select! {
            done = pending.next() => {
                let Some((i, ok)) = done else { break };
                answered[i] = true;
                if ok {
                    stored[i] = true;
                    durable += 1;
                }
                if durable >= min_durable && !waiting_for_stragglers {
                    waiting_for_stragglers = true;
                    grace.as_mut().reset(tokio::time::Instant::now() + SLOW_PUT);
                }
            }
            () = &mut grace, if waiting_for_stragglers => break,
        }
    }
    drop(pending);
    for i in (0..width).filter(|&i| !answered[i]) {
        warn!(
            key = %key(i),
            node = targets[i],
            "shard write slow; block stored without it, the shard queued for repair"
        );
        nodes.slow(targets[i]);
    }
    if durable < min_durable {
        return Err(ClientError::NotDurable {
            block,
            durable,
            needed: min_durable,
        });
    }
    let missing: Vec<u8> = (0..width)
        .filter(|&i| !stored[i])
        .map(|i| i as u8)
        .collect();
    if !missing.is_empty() {
        warn!(
            block,
            durable, width, "block stored degraded; its missing shards go to the repair queue"
        );
    }
    Ok(Stored { epoch, missing })
}

async fn put_shard(
    nodes: &Nodes,
    node: NodeId,
    key: ShardKey,
    data: Bytes,
    crc: u32,
    epoch: u64,
) -> Result<()> {
    let shard_err = |why: String| ClientError::Shard { key, node, why };
    let conn = nodes
        .conn(node)
        .ok_or_else(|| shard_err("node unknown".into()))?;
    match tokio::time::timeout(PUT_TIMEOUT, conn.put_shard(key, data, crc, epoch)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(s)) => Err(shard_err(s.message().to_string())),
        Err(_) => Err(shard_err("timed out".into())),
    }
}

async fn get_shard(
    nodes: &Nodes,
    node: NodeId,
    key: ShardKey,
    (offset, len): (u32, u32),
    timeout: Duration,
) -> Result<Fetched> {
    let shard_err = |why: String| ClientError::Shard { key, node, why };
    let conn = nodes
        .conn(node)
        .ok_or_else(|| shard_err("node unknown".into()))?;
    let resp = match tokio::time::timeout(timeout, conn.get_shard(key, offset, len)).await {
        Ok(Ok(r)) => r,
        Ok(Err(s)) => {
            if s.code() == tonic::Code::DataLoss {
                // The node found the shard corrupt: have it rebuilt.
                nodes.report_corrupt(key);
            }
            return Err(shard_err(format!("{:?}: {}", s.code(), s.message())));
        }
        Err(_) => return Err(shard_err("timed out".into())),
    };
    let want = if len == 0 {
        resp.shard_len.saturating_sub(offset)
    } else {
        len
    };
    match resp.short_of(want) {
        Some(why) => Err(shard_err(why)),
        None => Ok(resp),
    }
}

/// Reads `len` bytes at `offset` of a block.
pub(crate) async fn read_range(
    nodes: &Nodes,
    codec: &Codec,
    cache: &BlockCache,
    b: BlockRef,
    offset: usize,
    len: usize,
) -> Result<Bytes> {
    if let Some(full) = cache.get(b.block) {
        return Ok(full.slice(offset..offset + len));
    }
    if len >= WHOLE_BLOCK_AT && len < b.len {
        if let Some(full) = cache.get_or_wait(b.block).await {
            return Ok(full.slice(offset..offset + len));
        }
        let full = Box::pin(read_range(nodes, codec, cache, b, 0, b.len)).await?;
        let out = full.slice(offset..offset + len);
        cache.put(b.block, full.clone());
        return Ok(out);
    }
    let targets = nodes.shard_nodes(b.block);
    let ranges = codec.data_ranges(b.len, offset, len);
    let healthy = ranges
        .iter()
        .all(|r| !nodes.is_suspect(targets[r.index as usize]));
    if healthy {
        let reads = ranges.iter().map(|r| {
            let key = ShardKey {
                block: b.block,
                index: r.index,
            };
            let node = targets[r.index as usize];
            async move {
                let res = get_shard(nodes, node, key, (r.offset, r.len), SLOW_READ).await;
                if let Err(e) = &res {
                    debug!(error = %e, "systematic read failed; trying parity");
                    nodes.suspect(node);
                }
                res
            }
        });
        let parts = join_all(reads).await;
        if parts.iter().all(|p| p.is_ok()) {
            let mut parts = parts.into_iter().map(|p| p.expect("checked").data);
            if ranges.len() == 1 {
                return Ok(parts.next().expect("one range"));
            }
            let mut out = Vec::with_capacity(len);
            for p in parts {
                out.extend_from_slice(&p);
            }
            return Ok(Bytes::from(out));
        }
    }
    let full = read_degraded(nodes, codec, b).await?;
    let out = full.slice(offset..offset + len);
    cache.put(b.block, full);
    Ok(out)
}

/// [`read_range`] on this thread, for a range read from one data shard
/// on a node not suspect (a database's page): the bytes from the block
/// cache, or from one `GetShard` whose answer this thread reads itself,
/// with no runtime in between. None when the range needs more (a whole
/// block, two shards) or the read failed: the caller then reads with
/// [`read_range`], which finds the node suspect after a failure and goes
/// to parity instead of waiting on it again (and reports a corrupt shard
/// when the node finds it so).
pub(crate) fn read_range_now(
    nodes: &Nodes,
    codec: &Codec,
    cache: &BlockCache,
    b: BlockRef,
    offset: usize,
    len: usize,
) -> Option<Bytes> {
    if let Some(full) = cache.get(b.block) {
        return Some(full.slice(offset..offset + len));
    }
    if len == 0 || len >= WHOLE_BLOCK_AT {
        return None;
    }
    let ranges = codec.data_ranges(b.len, offset, len);
    let [r] = ranges.as_slice() else {
        return None;
    };
    let node = nodes.shard_node(b.block, r.index);
    if nodes.is_suspect(node) {
        return None;
    }
    let key = ShardKey {
        block: b.block,
        index: r.index,
    };
    let why = match nodes.conn(node)?.get_shard_now(key, r.offset, r.len)? {
        Ok(f) => match f.short_of(r.len) {
            None => return Some(f.data),
            Some(why) => why,
        },
        Err(s) => format!("{:?}: {}", s.code(), s.message()),
    };
    warn!(%key, node, why, "shard read failed; reading from parity");
    nodes.suspect(node);
    None
}

/// Reads whole shards and decodes the block from the first K whose
/// sizes and CRCs match. It asks K nodes, healthy ones first (data shards
/// before parity); a read that fails asks the next node, and once a read
/// is [`SLOW_READ`] every node left is asked too. It returns as soon as K
/// shards are in, so a node that hangs costs it `SLOW_READ` (and nothing
/// while the node is suspect, which the nodes still silent then become),
/// not the `GET_TIMEOUT` of every node asked.
async fn read_degraded(nodes: &Nodes, codec: &Codec, b: BlockRef) -> Result<Bytes> {
    let targets = nodes.shard_nodes(b.block);
    let k = usize::from(codec.protection().k);
    let shard_len = codec.shard_len(b.len);
    let mut order: Vec<usize> = (0..targets.len()).collect();
    let suspect: Vec<bool> = targets.iter().map(|&n| nodes.is_suspect(n)).collect();
    order.sort_by_key(|&i| suspect[i]);
    let mut order = order.into_iter();
    let read = |i: usize| {
        let node = targets[i];
        async move { (i, whole_shard(nodes, node, b.block, i, shard_len).await) }
    };
    let mut asked = vec![false; targets.len()];
    let mut pending = FuturesUnordered::new();
    for i in order.by_ref().take(k) {
        asked[i] = true;
        pending.push(read(i));
    }
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; targets.len()];
    let mut answered = vec![false; targets.len()];
    let mut hedged = false;
    let mut slow: Vec<usize> = Vec::new();
    let hedge = tokio::time::sleep(SLOW_READ);
    tokio::pin!(hedge);
    let mut got = 0;
    while got < k {
        tokio::select! {
            done = pending.next() => {
                let Some((i, shard)) = done else { break };
                answered[i] = true;
                match shard {
                    Some(data) => {
                        shards[i] = Some(data);
                        got += 1;
                    }
                    None => {
                        if let Some(next) = order.next() {
                            asked[next] = true;
                            pending.push(read(next));
                        }
                    }
                }
            }
            () = &mut hedge, if !hedged => {
                hedged = true;
                slow = (0..targets.len()).filter(|&i| asked[i] && !answered[i]).collect();
                for i in order.by_ref() {
                    asked[i] = true;
                    pending.push(read(i));
                }
            }
        }
    }
    drop(pending);
    for &i in slow.iter().filter(|&&i| !answered[i]) {
        warn!(
            block = b.block,
            index = i,
            node = targets[i],
            "shard read slow; read around it from parity"
        );
        nodes.suspect(targets[i]);
    }
    let data = codec
        .decode(b.block, shards, b.len)
        .map_err(|_| ClientError::NotEnoughShards {
            block: b.block,
            needed: k,
            got,
        })?;
    Ok(Bytes::from(data))
}

/// Shard `index` of `block` whole from `node`, if its size and CRC match;
/// a corrupt one is reported, a node that fails is suspect.
async fn whole_shard(
    nodes: &Nodes,
    node: NodeId,
    block: BlockId,
    index: usize,
    shard_len: usize,
) -> Option<Vec<u8>> {
    let key = ShardKey {
        block,
        index: index as u8,
    };
    match get_shard(nodes, node, key, (0, 0), GET_TIMEOUT).await {
        Ok(r) if r.data.len() == shard_len && crc32(&r.data) == r.shard_crc => {
            Some(r.data.to_vec())
        }
        Ok(r) => {
            warn!(%key, node, len = r.data.len(), "shard failed end-to-end CRC check");
            nodes.report_corrupt(key);
            None
        }
        Err(e) => {
            warn!(error = %e, "shard unavailable");
            nodes.suspect(node);
            None
        }
    }
}
