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

mod failover;
pub(crate) mod names;

use std::{future::Future, ops::Range, sync::Arc, time::Duration};

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
        lean_client::{CallError, LeanClient, Retry},
        settings::MAX_MESSAGE,
    },
};
use tonic::{transport::Channel, Status};

pub use names::NamesClient;

use crate::{error::malformed, ClientError, Result};
use failover::{Attempts, Rotation};

/// The metadata service, at one address or several (`a,b,c`: one
/// process leads, `failover.rs`). Cheap to clone: clones share one HTTP/2
/// connection per address, which reconnects by itself after a failure,
/// and one pool of lean connections per address.
#[derive(Clone)]
pub struct MetaClient {
    addr: String,
    peers: Arc<Vec<Peer>>,
    rotation: Arc<Rotation>,
    /// Longest a lean call may take, if bounded.
    timeout: Option<Duration>,
}

/// One metadata process.
struct Peer {
    addr: String,
    rpc: Rpc<Channel>,
    lean: LeanClient,
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

/// A gRPC call of `method` with `request`, at the leading process (see
/// [`MetaClient::grpc`]).
macro_rules! call {
    ($client:ident, $method:ident, $request:expr) => {{
        let request = $request;
        $client
            .grpc(|mut rpc| {
                let request = request.clone();
                async move { rpc.$method(request).await }
            })
            .await
    }};
}

/// Converts an answer, or calls it malformed.
fn answer<A, B: TryFrom<A, Error = tessera_common::Error>>(a: A) -> Result<B> {
    B::try_from(a).map_err(malformed)
}

impl MetaClient {
    /// Connects to the metadata service at `addr` (`host:port`, or a list
    /// `host:port,host:port,...`: at least one must be reachable).
    pub async fn connect(addr: &str) -> Result<MetaClient> {
        let mut channels = Vec::new();
        let (mut reached, mut first_error) = (false, None);
        for a in failover::addresses(addr) {
            match grpc::channel(&a, None).await {
                Ok(c) => {
                    reached = true;
                    channels.push((a, c));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                    let lazy = grpc::lazy_channel(&a, None)?;
                    channels.push((a, lazy));
                }
            }
        }
        match first_error {
            Some(e) if !reached => Err(e.into()),
            _ => Ok(Self::on(addr, channels, None)),
        }
    }

    /// A client of `addr` (one address or a list) that connects on its
    /// first call, with each call bounded by `timeout`. Made on a
    /// runtime, whose tasks carry the connection.
    pub fn lazy(addr: &str, timeout: Duration) -> Result<MetaClient> {
        let channels = failover::addresses(addr)
            .into_iter()
            .map(|a| Ok((a.clone(), grpc::lazy_channel(&a, Some(timeout))?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self::on(addr, channels, Some(timeout)))
    }

    fn on(addr: &str, channels: Vec<(String, Channel)>, timeout: Option<Duration>) -> MetaClient {
        let peers: Vec<Peer> = channels
            .into_iter()
            .map(|(a, channel)| Peer {
                rpc: Rpc::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
                lean: LeanClient::new(&a),
                addr: a,
            })
            .collect();
        MetaClient {
            addr: addr.to_string(),
            rotation: Arc::new(Rotation::new(peers.len())),
            peers: Arc::new(peers),
            timeout,
        }
    }

    /// Makes a gRPC call, at the leading process (`failover.rs`).
    async fn grpc<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: Fn(Rpc<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, Status>>,
    {
        let mut attempts = Attempts::new();
        loop {
            let i = self.rotation.current();
            let status = match call(self.peers[i].rpc.clone()).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => status,
            };
            let Some(failure) = failover::of_status(&status) else {
                return Err(status.into());
            };
            match attempts.after(&self.rotation, i, failure) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(status.into()),
            }
        }
    }

    /// Calls `path` over lean RPC, at the leading process
    /// (`failover.rs`).
    async fn lean<A: Message + Default>(
        &self,
        path: &str,
        request: &impl Message,
        retry: Retry,
    ) -> Result<A> {
        let (message, payload) = (request.encode_to_vec(), Bytes::new());
        let mut attempts = Attempts::new();
        loop {
            let i = self.rotation.current();
            let peer = &self.peers[i];
            let call = peer.lean.call(path, &message, &payload, retry);
            let answered = match self.timeout {
                Some(t) => match tokio::time::timeout(t, call).await {
                    Ok(a) => a,
                    Err(_) => Err(CallError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer in {t:?}"),
                    ))),
                },
                None => call.await,
            };
            let (failure, error) = match failover::of_lean(path, &peer.addr, answered) {
                Ok(done) => return done,
                Err(failed) => failed,
            };
            match attempts.after(&self.rotation, i, failure) {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(error),
            }
        }
    }

    /// Where the metadata service is (as given: one address or a list).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    // ---------- volumes ----------

    pub async fn create_volume(&self, spec: VolumeSpec) -> Result<VolumeInfo> {
        answer(call!(
            self,
            create_volume,
            pb::CreateVolumeRequest::from(spec)
        )?)
    }

    pub async fn volume(&self, name: &str) -> Result<VolumeInfo> {
        let req = pb::GetVolumeRequest { name: name.into() };
        answer(call!(self, get_volume, req)?)
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>> {
        let r = call!(self, list_volumes, pb::ListVolumesRequest {})?;
        r.volumes.into_iter().map(answer).collect()
    }

    pub async fn delete_volume(&self, name: &str) -> Result<()> {
        let req = pb::DeleteVolumeRequest { name: name.into() };
        call!(self, delete_volume, req)?;
        Ok(())
    }

    // ---------- the cluster ----------

    pub async fn nodes(&self) -> Result<Vec<NodeInfo>> {
        let r = call!(self, list_nodes, pb::ListNodesRequest {})?;
        r.nodes.into_iter().map(answer).collect()
    }

    /// Drains a node; returns how many placement slots moved.
    pub async fn drain_node(&self, id: NodeId) -> Result<u64> {
        let r = call!(self, drain_node, pb::NodeIdRequest { id })?;
        Ok(r.moved_slots)
    }

    pub async fn remove_node(&self, id: NodeId) -> Result<()> {
        call!(self, remove_node, pb::NodeIdRequest { id })?;
        Ok(())
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatus> {
        let r = call!(self, cluster_status, pb::ClusterStatusRequest {})?;
        Ok(r.into())
    }

    /// Page `page` of online backup `session` (0: start one). Whole
    /// pages of key/value records, the last with the snapshot summed up.
    pub async fn backup_page(&self, session: u64, page: u64) -> Result<BackupPage> {
        let r = call!(self, backup_page, pb::BackupPageRequest { session, page })?;
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
        let table: PlacementTable = answer(call!(self, get_placement, req)?)?;
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
        call!(self, report_corrupt, req)?;
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
        call!(self, renew_orphans, req)?;
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
        call!(self, release_orphan, req)?;
        Ok(())
    }
}
