//! Many small ranges at once (a merge reads a thousand 4 KiB runs of a
//! thousand blocks per window): the data-shard ranges they need are grouped
//! per storage node and fetched with one GetShards call per node (per
//! `GET_SHARDS_MAX_*` of them) instead of one call each. A range whose
//! block is cached, whose node is suspect, or whose call fails (a node
//! down, a corrupt shard, a node older than GetShards) is read on its own
//! by [`read_range`], which falls back to parity.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;
use futures::future::{join_all, try_join_all};
use tessera_common::{Codec, NodeId, ShardKey};
use tessera_proto::transport::settings::{GET_SHARDS_MAX_BYTES, GET_SHARDS_MAX_READS};
use tonic::Code;
use tracing::debug;

use super::{read_range, BlockRef};
use crate::{node_link::Fetched, nodes::Nodes, read::cache::BlockCache, ClientError, Result};

/// Ranges read on their own at once, when their batch failed.
const ALONE_AT_ONCE: usize = 16;
/// Longest a batch may take (a merge's reads, in the background: a node
/// that hangs holds the merge this long, then its ranges are read on
/// their own, around it).
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

/// One shard range of one wanted range.
struct Part {
    want: usize,
    piece: usize,
    key: ShardKey,
    offset: u32,
    len: u32,
}

/// The bytes of each `(block, offset, len)` in `wanted`, in order.
pub(crate) async fn read_ranges(
    nodes: &Nodes,
    codec: &Codec,
    cache: &BlockCache,
    wanted: &[(BlockRef, usize, usize)],
) -> Result<Vec<Bytes>> {
    let mut pieces: Vec<Vec<Option<Bytes>>> = vec![Vec::new(); wanted.len()];
    let mut alone: Vec<usize> = Vec::new();
    let mut by_node: HashMap<NodeId, Vec<Part>> = HashMap::new();
    for (want, &(b, at, len)) in wanted.iter().enumerate() {
        let targets = nodes.shard_nodes(b.block);
        let ranges = codec.data_ranges(b.len, at, len);
        let healthy = ranges
            .iter()
            .all(|r| !nodes.is_suspect(targets[r.index as usize]));
        let whole = ranges.iter().map(|r| r.len as usize).sum::<usize>() == len;
        if !healthy
            || !whole
            || ranges.is_empty()
            || cache.get(b.block).is_some()
            || ranges.iter().any(|r| r.len == 0)
        {
            alone.push(want);
            continue;
        }
        pieces[want] = vec![None; ranges.len()];
        for (piece, r) in ranges.iter().enumerate() {
            by_node
                .entry(targets[r.index as usize])
                .or_default()
                .push(Part {
                    want,
                    piece,
                    key: ShardKey {
                        block: b.block,
                        index: r.index,
                    },
                    offset: r.offset,
                    len: r.len,
                });
        }
    }
    let calls = by_node
        .into_iter()
        .flat_map(|(node, parts)| batches(parts).into_iter().map(move |b| (node, b)))
        .map(|(node, parts)| async move {
            let got = get_shards(nodes, node, &parts).await;
            (parts, got)
        });
    for (parts, got) in join_all(calls).await {
        match got {
            Ok(fetched) => {
                for (p, f) in parts.iter().zip(fetched) {
                    pieces[p.want][p.piece] = Some(f.data);
                }
            }
            Err(e) => {
                debug!(error = %e, ranges = parts.len(), "batched shard read failed; reading its ranges one by one");
                alone.extend(parts.iter().map(|p| p.want));
            }
        }
    }
    alone.sort_unstable();
    alone.dedup();
    let mut out: Vec<Option<Bytes>> = pieces
        .into_iter()
        .map(|p| {
            let mut p = p.into_iter();
            match (p.next(), p.len()) {
                (Some(Some(one)), 0) => Some(one),
                (Some(Some(first)), _) => {
                    let rest: Option<Vec<Bytes>> = p.collect();
                    rest.map(|rest| {
                        let mut all = first.to_vec();
                        rest.iter().for_each(|r| all.extend_from_slice(r));
                        Bytes::from(all)
                    })
                }
                _ => None,
            }
        })
        .collect();
    for group in alone.chunks(ALONE_AT_ONCE) {
        let reads = group.iter().map(|&w| {
            let (b, at, len) = wanted[w];
            read_range(nodes, codec, cache, b, at, len)
        });
        for (&w, data) in group.iter().zip(try_join_all(reads).await?) {
            out[w] = Some(data);
        }
    }
    out.into_iter()
        .zip(wanted)
        .map(|(d, &(b, at, len))| match d {
            Some(d) if d.len() == len => Ok(d),
            d => Err(ClientError::Malformed(format!(
                "block {:#x}: {} bytes read at {at}, {len} asked",
                b.block,
                d.map_or(0, |d| d.len())
            ))),
        })
        .collect()
}

/// `parts` cut into calls within GetShards' limits.
fn batches(parts: Vec<Part>) -> Vec<Vec<Part>> {
    let mut out: Vec<Vec<Part>> = Vec::new();
    let mut bytes = 0u64;
    for p in parts {
        let full = out.last().is_none_or(|b| {
            b.len() >= GET_SHARDS_MAX_READS || bytes + u64::from(p.len) > GET_SHARDS_MAX_BYTES
        });
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += u64::from(p.len);
        out.last_mut().expect("a batch").push(p);
    }
    out
}

/// One GetShards call, its answers checked for length.
async fn get_shards(nodes: &Nodes, node: NodeId, parts: &[Part]) -> Result<Vec<Fetched>> {
    let first = parts[0].key;
    let shard_err = |why: String| ClientError::Shard {
        key: first,
        node,
        why,
    };
    let conn = nodes
        .conn(node)
        .ok_or_else(|| shard_err("node unknown".into()))?;
    let reads: Vec<(ShardKey, u32, u32)> = parts.iter().map(|p| (p.key, p.offset, p.len)).collect();
    // A node reads a batch's ranges one after another: a slow answer is
    // not a dead node (a call that fails to connect says that).
    let fetched = match tokio::time::timeout(BATCH_TIMEOUT, conn.get_shards(&reads)).await {
        Ok(Ok(f)) => f,
        Ok(Err(s)) => {
            if s.code() == Code::Unavailable {
                nodes.suspect(node);
            }
            return Err(shard_err(format!("{:?}: {}", s.code(), s.message())));
        }
        Err(_) => return Err(shard_err("batched read timed out".into())),
    };
    if let Some((p, why)) = parts
        .iter()
        .zip(&fetched)
        .find_map(|(p, f)| f.short_of(p.len).map(|why| (p, why)))
    {
        return Err(ClientError::Shard {
            key: p.key,
            node,
            why,
        });
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(len: u32) -> Part {
        Part {
            want: 0,
            piece: 0,
            key: ShardKey { block: 1, index: 0 },
            offset: 0,
            len,
        }
    }

    #[test]
    fn batches_stay_within_the_calls_limits() {
        let many: Vec<Part> = (0..GET_SHARDS_MAX_READS * 2 + 1)
            .map(|_| part(4096))
            .collect();
        let b = batches(many);
        assert_eq!(
            b.iter().map(Vec::len).collect::<Vec<_>>(),
            [GET_SHARDS_MAX_READS, GET_SHARDS_MAX_READS, 1]
        );
        let big: Vec<Part> = (0..5).map(|_| part(1 << 20)).collect();
        let b = batches(big);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 1]);
        assert!(batches(Vec::new()).is_empty());
    }
}
