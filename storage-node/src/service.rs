//! The Node service: each call parses the request, calls one
//! [`ShardStore`] method and maps the error, on the thread it is given:
//! the blocking pool for gRPC, a lean connection's own thread for lean
//! RPC (`lean.rs`), never an async worker.

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use tessera_common::ShardKey;
use tessera_proto::{
    pb::{self, node_server::Node},
    transport::settings::{GET_SHARDS_MAX_BYTES, GET_SHARDS_MAX_READS},
};
use tonic::{Request, Response, Status};
use tracing::{debug_span, warn};

use crate::{
    compactor::CompactStats,
    error::{Error, Result},
    scrub::ScrubStats,
    store::ShardStore,
};

/// The Node service: gRPC calls run their [`NodeCalls`] on the blocking
/// pool; lean calls run them on the connection's thread (`lean.rs`).
pub struct NodeService {
    calls: Arc<NodeCalls>,
}

/// The Node calls, each run to its end on the calling thread.
pub struct NodeCalls {
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
    pub fn new(store: Arc<ShardStore>, scrub: Arc<ScrubStats>, compact: Arc<CompactStats>) -> Self {
        NodeService {
            calls: Arc::new(NodeCalls {
                store,
                put_bytes: AtomicU64::new(0),
                put_count: AtomicU64::new(0),
                scrub,
                compact,
                full_warned: AtomicU64::new(0),
            }),
        }
    }

    /// The calls, for serving on threads.
    pub fn calls(&self) -> Arc<NodeCalls> {
        self.calls.clone()
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&NodeCalls) -> Result<T> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let calls = self.calls.clone();
        match tokio::task::spawn_blocking(move || f(&calls)).await {
            Ok(r) => Ok(Response::new(r?)),
            Err(e) => Err(Error::Task {
                task: "shard store call",
                why: e.to_string(),
            }
            .into()),
        }
    }
}

fn shard_key(k: Option<pb::ShardKey>) -> Result<ShardKey> {
    Ok(tessera_proto::shard_key(k)?)
}

impl NodeCalls {
    /// Says once in a while (not per shard) that the disk is full.
    fn warn_full(&self, key: ShardKey, why: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.full_warned.swap(now, Ordering::Relaxed) + 10 <= now {
            warn!(%key, error = why, "disk full: refusing new shards until space is freed");
        }
    }

    pub fn put_shard(&self, r: pb::PutShardRequest) -> Result<pb::PutShardResponse> {
        let key = shard_key(r.key)?;
        let _span = debug_span!(
            "put_shard",
            block = key.block,
            shard = key.index,
            len = r.data.len()
        )
        .entered();
        self.put_bytes
            .fetch_add(r.data.len() as u64, Ordering::Relaxed);
        self.put_count.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.store.put(key, &r.data, r.crc) {
            if matches!(e, Error::DiskFull { .. }) {
                self.warn_full(key, &e.to_string());
            }
            return Err(e);
        }
        Ok(pb::PutShardResponse {})
    }

    pub fn get_shard(&self, r: pb::GetShardRequest) -> Result<pb::GetShardResponse> {
        let key = shard_key(r.key)?;
        let _span = debug_span!("get_shard", block = key.block, shard = key.index).entered();
        let d = self.store.get(key, r.offset, r.len)?;
        Ok(pb::GetShardResponse {
            data: d.data,
            shard_crc: d.shard_crc,
            shard_len: d.shard_len,
        })
    }

    /// Several ranges, each with a length, answered in request order; the
    /// call fails as a whole (naming the shard) if one of them does.
    pub fn get_shards(&self, r: pb::GetShardsRequest) -> Result<pb::GetShardsResponse> {
        let bad = |why: String| Err(Error::BadBatch { why });
        if r.reads.len() > GET_SHARDS_MAX_READS {
            return bad(format!(
                "{} ranges asked, at most {GET_SHARDS_MAX_READS}",
                r.reads.len()
            ));
        }
        if r.reads.iter().any(|g| g.len == 0) {
            return bad("a range without a length".into());
        }
        let bytes: u64 = r.reads.iter().map(|g| u64::from(g.len)).sum();
        if bytes > GET_SHARDS_MAX_BYTES {
            return bad(format!(
                "{bytes} bytes asked, at most {GET_SHARDS_MAX_BYTES}"
            ));
        }
        let _span = debug_span!("get_shards", ranges = r.reads.len(), bytes).entered();
        let shards = r
            .reads
            .into_iter()
            .map(|g| self.get_shard(g))
            .collect::<Result<_>>()?;
        Ok(pb::GetShardsResponse { shards })
    }

    pub fn delete_shards(&self, r: pb::DeleteShardsRequest) -> Result<pb::DeleteShardsResponse> {
        let keys = r
            .keys
            .into_iter()
            .map(|k| shard_key(Some(k)))
            .collect::<Result<Vec<_>, _>>()?;
        let _span = debug_span!("delete_shards", count = keys.len()).entered();
        let deleted = self.store.delete(&keys)?;
        Ok(pb::DeleteShardsResponse { deleted })
    }

    pub fn list_shards(&self, r: pb::ListShardsRequest) -> Result<pb::ListShardsResponse> {
        let after = r.after.map(|k| shard_key(Some(k))).transpose()?;
        let _span = debug_span!("list_shards").entered();
        let shards = self
            .store
            .list(after, r.limit)?
            .into_iter()
            .map(|i| pb::ShardInfo {
                key: Some(i.key.into()),
                len: i.len,
                crc: i.crc,
            })
            .collect();
        Ok(pb::ListShardsResponse { shards })
    }

    pub fn stat(&self, _r: pb::StatRequest) -> Result<pb::StatResponse> {
        let st = debug_span!("stat").in_scope(|| self.store.stat())?;
        Ok(pb::StatResponse {
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
        })
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn put_shard(
        &self,
        req: Request<pb::PutShardRequest>,
    ) -> Result<Response<pb::PutShardResponse>, Status> {
        let r = req.into_inner();
        self.blocking(move |c| c.put_shard(r)).await
    }

    async fn get_shard(
        &self,
        req: Request<pb::GetShardRequest>,
    ) -> Result<Response<pb::GetShardResponse>, Status> {
        let r = req.into_inner();
        self.blocking(move |c| c.get_shard(r)).await
    }

    async fn get_shards(
        &self,
        req: Request<pb::GetShardsRequest>,
    ) -> Result<Response<pb::GetShardsResponse>, Status> {
        let r = req.into_inner();
        self.blocking(move |c| c.get_shards(r)).await
    }

    async fn delete_shards(
        &self,
        req: Request<pb::DeleteShardsRequest>,
    ) -> Result<Response<pb::DeleteShardsResponse>, Status> {
        let r = req.into_inner();
        self.blocking(move |c| c.delete_shards(r)).await
    }

    async fn list_shards(
        &self,
        req: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        let r = req.into_inner();
        self.blocking(move |c| c.list_shards(r)).await
    }

    async fn stat(
        &self,
        req: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        let r = req.into_inner();
        self.blocking(move |c| c.stat(r)).await
    }
}
