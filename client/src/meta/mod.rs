//! The metadata service as the client sees it: typed calls that take and
//! return the domain types of `tessera-common`. Nothing outside this
//! module (and the node link) speaks `pb`.
//!
//! - [`MetaClient`]: calls from tasks on a runtime: the data path's (block
//!   ids, slices, commits) over lean RPC, one pooled connection per call
//!   in flight, with no HTTP/2 in between; the rest (placement, admin
//!   tools) over gRPC.
//! - [`NamesClient`] (`names.rs`): calls on names and attributes over lean
//!   RPC, blocking the calling thread (a FUSE worker thread).

pub(crate) mod names;

use std::{ops::Range, sync::Arc, time::Duration};

use bytes::Bytes;
use prost::Message;

use tessera_common::{
    ClusterStatus, Commit, Committed, FileSlices, Ino, NodeId, NodeInfo, PlacementTable,
    Protection, ShardKey, VolumeId, VolumeInfo, VolumeSpec,
};
use tessera_proto::{
    lean::meta as paths,
    pb::{self, meta_client::MetaClient as Rpc},
    transport::{
        grpc,
        lean_client::{LeanClient, Retry},
        settings::MAX_MESSAGE,
    },
};
use tonic::{transport::Channel, Status};

pub use names::NamesClient;

use crate::{error::malformed, ClientError, Result};

/// The metadata service. Cheap to clone: clones share one HTTP/2
/// connection, which reconnects by itself after a failure, and one pool of
/// lean connections.
#[derive(Clone)]
pub struct MetaClient {
    addr: String,
    rpc: Rpc<Channel>,
    lean: Arc<LeanClient>,
    /// Longest a lean call may take, if bounded.
    timeout: Option<Duration>,
}

/// A page of an online backup of the metadata store.
pub struct BackupPage {
    pub session: u64,
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
    /// On the last page: the whole snapshot summed up.
    pub end: Option<BackupEnd>,
}

pub struct BackupEnd {
    pub keys: u64,
    pub bytes: u64,
    pub crc32: u32,
    pub cluster_id: String,
}

/// Converts an answer, or calls it malformed.
fn answer<A, B: TryFrom<A, Error = tessera_common::Error>>(a: A) -> Result<B> {
    B::try_from(a).map_err(malformed)
}

impl MetaClient {
    /// Connects to the metadata service at `addr` (`host:port`).
    pub async fn connect(addr: &str) -> Result<MetaClient> {
        Ok(Self::on(addr, grpc::channel(addr, None).await?, None))
    }

    /// A client of `addr` that connects on its first call, with each call
    /// bounded by `timeout`. Made on a runtime, whose tasks carry the
    /// connection.
    pub fn lazy(addr: &str, timeout: Duration) -> Result<MetaClient> {
        Ok(Self::on(
            addr,
            grpc::lazy_channel(addr, Some(timeout))?,
            Some(timeout),
        ))
    }

    fn on(addr: &str, channel: Channel, timeout: Option<Duration>) -> MetaClient {
        MetaClient {
            addr: addr.to_string(),
            rpc: Rpc::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            lean: Arc::new(LeanClient::new(addr)),
            timeout,
        }
    }

    /// Calls `path` over lean RPC.
    async fn lean<A: Message + Default>(
        &self,
        path: &str,
        request: &impl Message,
        retry: Retry,
    ) -> Result<A> {
        let unavailable = |why: String| {
            ClientError::from(Status::unavailable(format!(
                "metadata service at {}: {path}: {why}",
                self.addr
            )))
        };
        let (message, payload) = (request.encode_to_vec(), Bytes::new());
        let call = self.lean.call(path, &message, &payload, retry);
        let answered = match self.timeout {
            Some(t) => tokio::time::timeout(t, call)
                .await
                .map_err(|_| unavailable(format!("no answer in {t:?}")))?,
            None => call.await,
        };
        match answered {
            Ok(Ok(message)) => {
                A::decode(message).map_err(|e| ClientError::Malformed(format!("{path}: {e}")))
            }
            Ok(Err(status)) => Err(status.into()),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// Where the metadata service is.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn rpc(&self) -> Rpc<Channel> {
        self.rpc.clone()
    }

    // ---------- volumes ----------

    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo> {
        answer(
            self.rpc()
                .create_volume(pb::CreateVolumeRequest::from(spec))
                .await?
                .into_inner(),
        )
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let req = pb::GetVolumeRequest { name: name.into() };
        answer(self.rpc().get_volume(req).await?.into_inner())
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let r = self.rpc().list_volumes(pb::ListVolumesRequest {}).await?;
        r.into_inner().volumes.into_iter().map(answer).collect()
    }

    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let req = pb::DeleteVolumeRequest { name: name.into() };
        self.rpc().delete_volume(req).await?;
        Ok(())
    }

    // ---------- the cluster ----------

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let r = self.rpc().list_nodes(pb::ListNodesRequest {}).await?;
        r.into_inner().nodes.into_iter().map(answer).collect()
    }

    /// Drains a node; returns how many placement slots moved.
    pub async fn drain_node(&self, id: NodeId) -> Result<u64> {
        let r = self.rpc().drain_node(pb::NodeIdRequest { id }).await?;
        Ok(r.into_inner().moved_slots)
    }

    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        self.rpc().remove_node(pb::NodeIdRequest { id }).await?;
        Ok(())
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let r = self
            .rpc()
            .cluster_status(pb::ClusterStatusRequest {})
            .await?;
        Ok(r.into_inner().into())
    }

    /// Page `page` of online backup `session` (0: start one). Whole
    /// pages of key/value records, the last with the snapshot summed up.
    pub async fn backup_page(&self, session: u64, page: u64) -> Result<BackupPage> {
        let r = self
            .rpc()
            .backup_page(pb::BackupPageRequest { session, page })
            .await?
            .into_inner();
        Ok(BackupPage {
            session: r.session,
            records: r
                .records
                .into_iter()
                .map(|kv| (kv.key.to_vec(), kv.value.to_vec()))
                .collect(),
            end: r.last.then_some(BackupEnd {
                keys: r.keys,
                bytes: r.bytes,
                crc32: r.crc32,
                cluster_id: r.cluster_id,
            }),
        })
    }

    /// The placement table of a class, checked: every placement group
    /// names one node per shard.
    pub async fn placement(&self, p: Protection) -> Result<PlacementTable> {
        let req = pb::GetPlacementRequest {
            k: p.k.into(),
            m: p.m.into(),
        };
        let table: PlacementTable = answer(self.rpc().get_placement(req).await?.into_inner())?;
        if table.pgs.is_empty() || table.pgs.iter().any(|pg| pg.len() != p.width()) {
            return Err(ClientError::Malformed(format!(
                "placement table for {p} is malformed"
            )));
        }
        Ok(table)
    }

    /// Reports shards found corrupt, so they are rebuilt.
    pub async fn report_corrupt(&self, keys: &[ShardKey]) -> Result<()> {
        let req = pb::ReportCorruptRequest {
            keys: keys.iter().map(|k| (*k).into()).collect(),
            node: 0,
        };
        self.rpc().report_corrupt(req).await?;
        Ok(())
    }

    // ---------- file data ----------

    /// Reserves `count` fresh block ids.
    pub async fn alloc_blocks(&self, count: u32) -> Result<Range<u64>> {
        let req = pb::AllocBlocksRequest { count };
        let r: pb::AllocBlocksResponse = self.lean(paths::ALLOC_BLOCKS, &req, Retry::Once).await?;
        Ok(r.first..r.first + u64::from(r.count))
    }

    /// A file's attributes, slices and inline blocks.
    pub async fn file_slices(&self, vol: VolumeId, ino: Ino) -> Result<FileSlices> {
        let req = pb::GetSlicesRequest { volume: vol, ino };
        let r: pb::GetSlicesResponse = self
            .lean(paths::GET_SLICES, &req, Retry::Idempotent)
            .await?;
        answer(r)
    }

    /// Commits written slices. Never sent twice: a commit whose connection
    /// broke may have been applied.
    pub async fn commit(&self, c: Commit) -> Result<Committed> {
        let req = pb::CommitWritesRequest::from(c);
        let r: pb::CommitWritesResponse =
            self.lean(paths::COMMIT_WRITES, &req, Retry::Once).await?;
        answer(r)
    }

    /// Extends the lease of `session`'s orphans among `inos`.
    pub async fn renew_orphans(&self, vol: VolumeId, session: u64, inos: Vec<Ino>) -> Result<()> {
        let req = pb::RenewOrphansRequest {
            volume: vol,
            session,
            inos,
        };
        self.rpc().renew_orphans(req).await?;
        Ok(())
    }

    /// Extends the lease of every lock of this mount's `session`.
    pub async fn renew_locks(&self, session: u64) -> Result<()> {
        let req = pb::RenewLocksRequest { session };
        let _: pb::Empty = self
            .lean(paths::RENEW_LOCKS, &req, Retry::Idempotent)
            .await?;
        Ok(())
    }

    /// The last handle of orphan `ino` closed: the file goes.
    pub async fn release_orphan(&self, vol: VolumeId, ino: Ino) -> Result<()> {
        let req = pb::OrphanRequest { volume: vol, ino };
        self.rpc().release_orphan(req).await?;
        Ok(())
    }
}
