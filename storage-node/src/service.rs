//! The Node gRPC service: each handler parses the request, calls one
//! [`ShardStore`] method on the blocking pool and maps the error.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tessera_common::ShardKey;
use tessera_proto::pb::{self, node_server::Node};
use tonic::{Request, Response, Status};
use tracing::{debug_span, warn, Span};

use crate::{
    compactor::CompactStats,
    error::{Error, Result},
    scrub::ScrubStats,
    store::ShardStore,
};

pub struct NodeService {
    store: Arc<ShardStore>,
    /// Shard bytes and calls received by PutShard since start: what repair
    /// and catch-up cost this node.
    put_bytes: AtomicU64,
    put_count: AtomicU64,
    scrub: Arc<ScrubStats>,
    compact: Arc<CompactStats>,
    /// Seconds since the epoch of the last "disk full" warning.
    full_warned: AtomicU64,
}

impl NodeService {
    pub fn new(store: Arc<ShardStore>) -> Self {
        NodeService {
            store,
            put_bytes: AtomicU64::new(0),
            put_count: AtomicU64::new(0),
            scrub: Arc::default(),
            compact: Arc::default(),
            full_warned: AtomicU64::new(0),
        }
    }

    /// Says once in a while (not per shard) that the disk is full.
    fn warn_full(&self, key: ShardKey, why: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.full_warned.swap(now, Ordering::Relaxed) + 10 <= now {
            warn!(%key, error = why, "disk full: refusing new shards until space is freed");
        }
    }

    /// Reports the compactor's figures in Stat.
    pub fn with_compact_stats(mut self, stats: Arc<CompactStats>) -> Self {
        self.compact = stats;
        self
    }

    /// Reports the scrubber's figures in Stat.
    pub fn with_scrub_stats(mut self, stats: Arc<ScrubStats>) -> Self {
        self.scrub = stats;
        self
    }

    /// Runs `f` on the blocking pool inside `span`.
    async fn blocking<T: Send + 'static>(
        &self,
        span: Span,
        f: impl FnOnce(&ShardStore) -> Result<T> + Send + 'static,
    ) -> Result<T, Status> {
        let store = self.store.clone();
        let joined = tokio::task::spawn_blocking(move || span.in_scope(|| f(store.as_ref()))).await;
        let task = |e: tokio::task::JoinError| Error::Task {
            task: "shard store call",
            why: e.to_string(),
        };
        Ok(joined.map_err(task)??)
    }
}

fn shard_key(k: Option<pb::ShardKey>) -> Result<ShardKey> {
    Ok(tessera_proto::shard_key(k)?)
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn put_shard(
        &self,
        req: Request<pb::PutShardRequest>,
    ) -> Result<Response<pb::PutShardResponse>, Status> {
        let r = req.into_inner();
        let key = shard_key(r.key)?;
        let span = debug_span!(
            "put_shard",
            block = key.block,
            shard = key.index,
            len = r.data.len()
        );
        let len = r.data.len() as u64;
        self.put_bytes.fetch_add(len, Ordering::Relaxed);
        self.put_count.fetch_add(1, Ordering::Relaxed);
        let put = self
            .blocking(span, move |s| s.put(key, &r.data, r.crc))
            .await;
        if let Err(status) = &put {
            if status.code() == tonic::Code::ResourceExhausted {
                self.warn_full(key, status.message());
            }
        }
        put?;
        Ok(Response::new(pb::PutShardResponse {}))
    }

    async fn get_shard(
        &self,
        req: Request<pb::GetShardRequest>,
    ) -> Result<Response<pb::GetShardResponse>, Status> {
        let r = req.into_inner();
        let key = shard_key(r.key)?;
        let span = debug_span!("get_shard", block = key.block, shard = key.index);
        let d = self
            .blocking(span, move |s| s.get(key, r.offset, r.len))
            .await?;
        Ok(Response::new(pb::GetShardResponse {
            data: d.data,
            shard_crc: d.shard_crc,
            shard_len: d.shard_len,
        }))
    }

    async fn delete_shards(
        &self,
        req: Request<pb::DeleteShardsRequest>,
    ) -> Result<Response<pb::DeleteShardsResponse>, Status> {
        let keys = req
            .into_inner()
            .keys
            .into_iter()
            .map(|k| shard_key(Some(k)))
            .collect::<Result<Vec<_>, _>>()?;
        let span = debug_span!("delete_shards", count = keys.len());
        let deleted = self.blocking(span, move |s| s.delete(&keys)).await?;
        Ok(Response::new(pb::DeleteShardsResponse { deleted }))
    }

    async fn list_shards(
        &self,
        req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        let r = req.into_inner();
        let after = r.after.map(|k| shard_key(Some(k))).transpose()?;
        let infos = self
            .blocking(debug_span!("list_shards"), move |s| s.list(after, r.limit))
            .await?;
        let shards = infos
            .into_iter()
            .map(|i| pb::ShardInfo {
                key: Some(i.key.into()),
                len: i.len,
                crc: i.crc,
            })
            .collect();
        Ok(Response::new(pb::ListShardsResponse { shards }))
    }

    async fn stat(
        &self,
        _req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let st = self.blocking(debug_span!("stat"), |s| s.stat()).await?;
        Ok(Response::new(pb::StatResponse {
            node_id: st.node_id,
            capacity_bytes: st.capacity_bytes,
            used_bytes: st.used_bytes,
            shard_count: st.shard_count,
            format_version: st.format_version,
            put_bytes: self.put_bytes.load(Ordering::Relaxed),
            put_count: self.put_count.load(Ordering::Relaxed),
            scrub_passes: self.scrub.passes.load(Ordering::Relaxed),
            scrubbed_bytes: self.scrub.bytes.load(Ordering::Relaxed),
            scrub_corrupt: self.scrub.corrupt.load(Ordering::Relaxed),
            compacted_segments: self.compact.segments.load(Ordering::Relaxed),
            compacted_bytes: self.compact.bytes.load(Ordering::Relaxed),
            segment_bytes: st.segment_bytes,
        }))
    }
}
