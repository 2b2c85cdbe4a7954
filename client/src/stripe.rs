//! One block on the wire: encode and store its K+M shards in parallel;
//! read a byte range back from the data shards, falling back to parity when
//! a node is missing, slow, or returns a shard that fails its CRC.

mod batch;

use std::{future::Future, time::Duration};

use bytes::Bytes;
use futures::{
    future::{self, join_all},
    stream::FuturesUnordered,
    StreamExt,
};
use tessera_common::{crc32, BlockId, Codec, NodeId, ShardKey};
use tokio::time::Instant;
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
/// thread, a connect: 2 s; for a whole answer in the async read, see
/// [`read_wait`]) before it reads around the node from parity and
/// takes it for suspect: a node that hangs while it still accepts
/// connections (a stuck disk, a stopped process) costs a read this long,
/// not `GET_TIMEOUT`, and the reads after it none while it is suspect.
pub(crate) const SLOW_READ: Duration = Duration::from_secs(1);
/// The slowest a node may send a shard's bytes and still not be slow.
const SLOWEST_BYTES_PER_SEC: u64 = 8 << 20;

/// How long a read of `len` bytes waits for a node before it reads around
/// it: `SLOW_READ`, plus [`transfer_time`] (a whole shard of a large
/// block, 4 MiB of a replicated one, must not be cut while it arrives).
fn read_wait(len: u32) -> Duration {
    SLOW_READ + transfer_time(len as usize)
}

/// How long `len` bytes take at the slowest rate a node is not read
/// around or left out of a store for.
fn transfer_time(len: usize) -> Duration {
    Duration::from_micros(len as u64 * 1_000_000 / SLOWEST_BYTES_PER_SEC)
}

pub(crate) use batch::read_ranges;

#[cfg(test)]
mod tests;

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
/// others have [`SLOW_PUT`] more (plus a shard's [`transfer_time`]): a
/// node still silent then (it hangs while it accepts connections) is left
/// out, its shard named missing (the commit queues it for repair), and
/// later blocks leave it out from the start for a while, unless the other
/// nodes cannot make the block durable without it or have not in that
/// time. A hung node then costs a store `SLOW_PUT` now and
/// then, not `PUT_TIMEOUT` each.
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
    let put = |i: usize| {
        let (key, node, shard) = (key(i), targets[i], shards[i].clone());
        async move {
            let crc = crc32(&shard);
            let res = put_shard(nodes, node, key, shard, crc, epoch).await;
            if let Err(e) = &res {
                warn!(%key, node, error = %e, "shard write failed");
                nodes.suspect(node);
            }
            res.is_ok()
        }
    };
    // Nodes the metadata service says are down are not asked: their
    // shards go to the repair queue with the commit. Nodes slow a moment
    // ago are asked only if the others cannot make the block durable.
    let (held, first): (Vec<usize>, Vec<usize>) = (0..width)
        .filter(|&i| !nodes.is_down(targets[i]))
        .partition(|&i| nodes.is_slow(targets[i]));
    let grace = SLOW_PUT + transfer_time(shards.first().map_or(0, Bytes::len));
    let got = settle(width, first, held, min_durable, grace, put).await;
    for &i in &got.silent {
        warn!(
            key = %key(i),
            node = targets[i],
            "shard write slow; block stored without it, the shard queued for repair"
        );
        nodes.slow(targets[i]);
    }
    let (stored, durable) = (got.stored, got.durable);
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

/// What [`settle`] found: which shards are durable, how many, and which
/// were asked and had not answered when it stopped.
struct Settled {
    stored: Vec<bool>,
    durable: usize,
    silent: Vec<usize>,
}

/// Stores shards with `put` (true: durable): those of `first` at once,
/// those of `held` (nodes slow a moment ago) as soon as the others can no
/// longer make `min_durable` without them, or have not made it in `grace`. Once `min_durable` are durable,
/// the others have `grace` more; stops then, or when nothing is left to
/// wait for.
async fn settle<F, Fut>(
    width: usize,
    first: Vec<usize>,
    mut held: Vec<usize>,
    min_durable: usize,
    grace: Duration,
    put: F,
) -> Settled
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = bool>,
{
    let mut calls = Calls::new(width, put);
    for i in first {
        calls.ask(i);
    }
    let mut out = Settled {
        stored: vec![false; width],
        durable: 0,
        silent: Vec::new(),
    };
    let timer = tokio::time::sleep(PUT_TIMEOUT);
    tokio::pin!(timer);
    // The held nodes are asked too if the others are not enough by then
    // (one of them hangs as well, say).
    let give_up_holding = tokio::time::sleep(grace);
    tokio::pin!(give_up_holding);
    let mut waiting_for_stragglers = false;
    loop {
        if !held.is_empty() && out.durable + calls.in_flight() < min_durable {
            for i in held.drain(..) {
                calls.ask(i);
            }
        }
        tokio::select! {
            () = &mut give_up_holding, if !held.is_empty() && !waiting_for_stragglers => {
                for i in held.drain(..) {
                    calls.ask(i);
                }
            }
            done = calls.next() => {
                let Some((i, ok)) = done else { break };
                if ok {
                    out.stored[i] = true;
                    out.durable += 1;
                }
                if out.durable >= min_durable && !waiting_for_stragglers {
                    waiting_for_stragglers = true;
                    timer.as_mut().reset(Instant::now() + grace);
                }
            }
            () = &mut timer, if waiting_for_stragglers => break,
        }
    }
    out.silent = calls.silent_for(Duration::ZERO);
    out
}

/// Calls by shard index, in flight at once: when each was asked, and
/// which have answered.
struct Calls<F, Fut: Future> {
    call: F,
    /// Each call joined with its index, which comes back with its answer.
    pending: FuturesUnordered<future::Join<future::Ready<usize>, Fut>>,
    asked: Vec<Option<Instant>>,
    answered: Vec<bool>,
}

impl<F, Fut> Calls<F, Fut>
where
    F: Fn(usize) -> Fut,
    Fut: Future,
{
    fn new(width: usize, call: F) -> Self {
        Calls {
            call,
            pending: FuturesUnordered::new(),
            asked: vec![None; width],
            answered: vec![false; width],
        }
    }

    fn ask(&mut self, i: usize) {
        self.asked[i] = Some(Instant::now());
        self.pending
            .push(future::join(future::ready(i), (self.call)(i)));
    }

    fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The next answer, with its index; None when none is in flight.
    async fn next(&mut self) -> Option<(usize, Fut::Output)> {
        let (i, out) = self.pending.next().await?;
        self.answered[i] = true;
        Some((i, out))
    }

    /// The indices asked at least `d` ago that have not answered.
    fn silent_for(&self, d: Duration) -> Vec<usize> {
        (0..self.asked.len())
            .filter(|&i| !self.answered[i] && self.asked[i].is_some_and(|at| at.elapsed() >= d))
            .collect()
    }
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
                let res = get_shard(nodes, node, key, (r.offset, r.len), read_wait(r.len)).await;
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
    if len < WHOLE_BLOCK_AT {
        // A page: the same ranges of other shards rebuild it, not K
        // whole shards (a 4 KiB read of a 4 MiB block read 4 MiB).
        let mut out = Vec::with_capacity(len);
        for r in &ranges {
            out.extend_from_slice(&read_range_degraded(nodes, codec, b, r).await?);
        }
        return Ok(Bytes::from(out));
    }
    let full = read_degraded(nodes, codec, b).await?;
    let out = full.slice(offset..offset + len);
    cache.put(b.block, full);
    Ok(out)
}

/// Range `r` of a data shard, rebuilt from the same range of K shards
/// (see [`gather`]: healthy nodes first, so its own node's only if that
/// is not suspect), each checked by its node's piece CRCs as any ranged
/// read, and the shards' lengths by this reader.
async fn read_range_degraded(
    nodes: &Nodes,
    codec: &Codec,
    b: BlockRef,
    r: &tessera_common::codec::ShardRange,
) -> Result<Bytes> {
    let targets = nodes.shard_nodes(b.block);
    let k = usize::from(codec.protection().k);
    let shard_len = codec.shard_len(b.len);
    let got = gather(k, &healthy_first(nodes, &targets), read_wait(r.len), |i| {
        checked_shard(nodes, targets[i], b.block, i, shard_len, (r.offset, r.len))
    })
    .await;
    read_around(nodes, &targets, b.block, &got.slow);
    let count = got.count;
    codec
        .rebuild_range(r.index.into(), r.len as usize, got.shards)
        .map(Bytes::from)
        .ok_or(ClientError::NotEnoughShards {
            block: b.block,
            needed: k,
            got: count,
        })
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
/// sizes and CRCs match (see [`gather`]): a node that hangs costs it
/// about `SLOW_READ` (and nothing while the node is suspect, which the
/// nodes that did not answer in that time become), not the `GET_TIMEOUT`
/// of every node asked.
async fn read_degraded(nodes: &Nodes, codec: &Codec, b: BlockRef) -> Result<Bytes> {
    let targets = nodes.shard_nodes(b.block);
    let k = usize::from(codec.protection().k);
    let shard_len = codec.shard_len(b.len);
    let got = gather(
        k,
        &healthy_first(nodes, &targets),
        read_wait(shard_len as u32),
        |i| checked_shard(nodes, targets[i], b.block, i, shard_len, (0, 0)),
    )
    .await;
    read_around(nodes, &targets, b.block, &got.slow);
    let count = got.count;
    codec
        .decode(b.block, got.shards, b.len)
        .map(Bytes::from)
        .map_err(|_| ClientError::NotEnoughShards {
            block: b.block,
            needed: k,
            got: count,
        })
}

/// Shard indices, those on nodes not suspect first (in index order: data
/// shards before parity).
fn healthy_first(nodes: &Nodes, targets: &[NodeId]) -> Vec<usize> {
    let suspect: Vec<bool> = targets.iter().map(|&n| nodes.is_suspect(n)).collect();
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| suspect[i]);
    order
}

/// The nodes of `slow` shard indices are read around for a while.
fn read_around(nodes: &Nodes, targets: &[NodeId], block: BlockId, slow: &[usize]) {
    for &i in slow {
        warn!(
            block,
            index = i,
            node = targets[i],
            "shard read slow; read around it from parity"
        );
        nodes.suspect(targets[i]);
    }
}

/// What [`gather`] brought back: a shard or None per index, how many
/// came, and the indices asked at least `slow_after` before it was done
/// that had not answered.
struct Gathered {
    shards: Vec<Option<Vec<u8>>>,
    count: usize,
    slow: Vec<usize>,
}

/// Reads shards until `k` are in: the first `k` of `order` at once, the
/// next one for each that fails, and every one left once `slow_after`
/// has passed without `k` (a hedge: what was asked is still waited for).
/// Stops when `k` are in or nothing is left to wait for.
async fn gather<F, Fut>(k: usize, order: &[usize], slow_after: Duration, read: F) -> Gathered
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Option<Vec<u8>>>,
{
    let width = order.iter().max().map_or(0, |&i| i + 1);
    let mut order = order.iter().copied();
    let mut calls = Calls::new(width, read);
    for i in order.by_ref().take(k) {
        calls.ask(i);
    }
    let mut out = Gathered {
        shards: vec![None; width],
        count: 0,
        slow: Vec::new(),
    };
    let mut hedged = false;
    let hedge = tokio::time::sleep(slow_after);
    tokio::pin!(hedge);
    while out.count < k {
        tokio::select! {
            done = calls.next() => {
                let Some((i, shard)) = done else { break };
                match shard {
                    Some(data) => {
                        out.shards[i] = Some(data);
                        out.count += 1;
                    }
                    None => {
                        if let Some(next) = order.next() {
                            calls.ask(next);
                        }
                    }
                }
            }
            () = &mut hedge, if !hedged => {
                hedged = true;
                for i in order.by_ref() {
                    calls.ask(i);
                }
            }
        }
    }
    out.slow = calls.silent_for(slow_after);
    out
}

/// Shard `index` of `block` from `node`: `(offset, len)` of it, or the
/// whole shard for `(0, 0)`; only if the node's shard is `shard_len` long
/// and, when whole, its bytes match its CRC (a range is checked by its
/// node's piece CRCs). A corrupt one is reported, a node that fails is
/// suspect.
async fn checked_shard(
    nodes: &Nodes,
    node: NodeId,
    block: BlockId,
    index: usize,
    shard_len: usize,
    range: (u32, u32),
) -> Option<Vec<u8>> {
    let key = ShardKey {
        block,
        index: index as u8,
    };
    let whole = range == (0, 0);
    match get_shard(nodes, node, key, range, GET_TIMEOUT).await {
        Ok(r)
            if r.shard_len as usize == shard_len
                && (!whole || (r.data.len() == shard_len && crc32(&r.data) == r.shard_crc)) =>
        {
            Some(r.data.to_vec())
        }
        Ok(r) => {
            warn!(%key, node, len = r.shard_len, "shard failed its length or end-to-end CRC check");
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
