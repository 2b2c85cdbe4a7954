//! The gRPC face of `Meta`: each handler parses, calls one domain function
//! and maps the result. Calls that fsync or scan run on a blocking thread
//! (`call`); reads and buffered changes of the file tree take microseconds
//! and run on the request's own task (`inline`), which saves two thread
//! hand-offs on every lookup and create.

use std::{collections::BTreeMap, sync::Arc};

use tessera_proto::pb::{self, meta_server::Meta as MetaRpc};
use tonic::{Request, Response, Status};

use crate::{
    cluster::NodeStats,
    fs::{Attr, FileWrite, Holder, InlineBlock, NewNode, SetAttr},
    records::{Slice, VolumeRecord},
    repair::Degraded,
    Meta, MetaError,
};

#[derive(Clone)]
pub struct MetaService {
    meta: Arc<Meta>,
}

impl MetaService {
    pub fn new(meta: Arc<Meta>) -> Self {
        MetaService { meta }
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Meta) -> Result<T, MetaError> + Send + 'static,
    ) -> Result<Response<T>, Status> {
        let meta = self.meta.clone();
        tokio::task::spawn_blocking(move || f(&meta))
            .await
            .map_err(|e| Status::internal(format!("metadata task failed: {e}")))?
            .map(Response::new)
            .map_err(Status::from)
    }

    /// For calls that never wait on a disk: reads of the file tree and
    /// buffered (not fsynced) changes of it.
    #[allow(clippy::result_large_err)] // tonic's own result type
    fn inline<T>(
        &self,
        f: impl FnOnce(&Meta) -> Result<T, MetaError>,
    ) -> Result<Response<T>, Status> {
        f(&self.meta).map(Response::new).map_err(Status::from)
    }
}

/// Most inodes an unlink or rename may name as open.
const MAX_OPEN: usize = 1 << 20;

fn holder(open: &[u64], session: u64) -> Result<Holder<'_>, MetaError> {
    if open.len() > MAX_OPEN {
        return Err(MetaError::Invalid(format!(
            "{} open inodes named; at most {MAX_OPEN}",
            open.len()
        )));
    }
    Ok(Holder { open, session })
}

fn orphaned(m: &Meta, orphan: Option<u64>) -> pb::UnlinkResponse {
    pb::UnlinkResponse {
        orphaned: orphan.into_iter().collect(),
        lease_ms: m.orphan_lease().as_millis() as u64,
    }
}

fn attr(a: Attr) -> pb::Attr {
    let i = a.inode;
    pb::Attr {
        ino: a.ino,
        kind: i.kind,
        perm: i.perm,
        nlink: i.nlink,
        uid: i.uid,
        gid: i.gid,
        rdev: i.rdev,
        size: i.size,
        atime_ns: i.atime_ns,
        mtime_ns: i.mtime_ns,
        ctime_ns: i.ctime_ns,
        parent: None,
    }
}

fn volume(meta: &Meta, v: VolumeRecord) -> pb::Volume {
    let usage = meta.usage_of(v.id);
    let min_durable = meta
        .volume_settings(v.id)
        .map(|s| s.min_durable_for(v.protection))
        .unwrap_or_else(|_| v.protection.min_durable());
    pb::Volume {
        min_durable: min_durable as u32,
        inline_blocks: true,
        id: v.id,
        name: v.name,
        size_bytes: v.size,
        protection: v.protection.to_string(),
        used_bytes: usage.bytes,
        inodes: usage.inodes,
        created_ms: v.created_ms,
        labels: v.labels.into_iter().collect(),
    }
}

fn slice_to_pb(s: Slice) -> pb::Slice {
    pb::Slice {
        offset: s.offset,
        len: s.len,
        block: s.block,
        block_offset: s.block_offset,
        block_len: s.block_len,
    }
}

fn slice_from_pb(s: pb::Slice) -> Slice {
    Slice {
        offset: s.offset,
        len: s.len,
        block: s.block,
        block_offset: s.block_offset,
        block_len: s.block_len,
    }
}

type Rpc<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl MetaRpc for MetaService {
    async fn register_node(
        &self,
        r: Request<pb::RegisterNodeRequest>,
    ) -> Rpc<pb::RegisterNodeResponse> {
        let r = r.into_inner();
        self.call(move |m| {
            let labels: BTreeMap<_, _> = r.labels.into_iter().collect();
            let id = m.register_node(r.id, r.addr, labels)?;
            Ok(pb::RegisterNodeResponse { id })
        })
        .await
    }

    async fn heartbeat(&self, r: Request<pb::HeartbeatRequest>) -> Rpc<pb::HeartbeatResponse> {
        let r = r.into_inner();
        self.call(move |m| {
            let stats = NodeStats {
                capacity: r.capacity_bytes,
                used: r.used_bytes,
                shards: r.shard_count,
            };
            Ok(pb::HeartbeatResponse {
                epoch: m.heartbeat(r.id, stats)?,
            })
        })
        .await
    }

    async fn list_nodes(&self, _: Request<pb::ListNodesRequest>) -> Rpc<pb::ListNodesResponse> {
        self.call(|m| {
            Ok(pb::ListNodesResponse {
                nodes: node_infos(m)?,
            })
        })
        .await
    }

    async fn get_placement(
        &self,
        r: Request<pb::GetPlacementRequest>,
    ) -> Rpc<pb::GetPlacementResponse> {
        let r = r.into_inner();
        self.call(move |m| {
            let (k, m_) = (u8::try_from(r.k), u8::try_from(r.m));
            let (Ok(k), Ok(mm)) = (k, m_) else {
                return Err(MetaError::Invalid(format!("protection {}+{}", r.k, r.m)));
            };
            let p = tessera_common::Protection::new(k, mm)?;
            let table = m.placement(p)?;
            Ok(pb::GetPlacementResponse {
                epoch: table.epoch,
                pgs: table
                    .pgs
                    .into_iter()
                    .map(|nodes| pb::PgNodes { nodes })
                    .collect(),
                nodes: node_infos(m)?,
            })
        })
        .await
    }

    async fn drain_node(&self, r: Request<pb::NodeIdRequest>) -> Rpc<pb::DrainNodeResponse> {
        let id = r.into_inner().id;
        self.call(move |m| {
            Ok(pb::DrainNodeResponse {
                moved_slots: m.drain_node(id)? as u64,
            })
        })
        .await
    }

    async fn remove_node(&self, r: Request<pb::NodeIdRequest>) -> Rpc<pb::Empty> {
        let id = r.into_inner().id;
        self.call(move |m| m.remove_node(id).map(|()| pb::Empty {}))
            .await
    }

    async fn report_corrupt(&self, r: Request<pb::ReportCorruptRequest>) -> Rpc<pb::Empty> {
        let r = r.into_inner();
        self.call(move |m| {
            let keys = r
                .keys
                .into_iter()
                .map(|k| tessera_proto::shard_key(Some(k)).map_err(MetaError::from))
                .collect::<Result<Vec<_>, _>>()?;
            m.report_corrupt(r.node, &keys).map(|_| pb::Empty {})
        })
        .await
    }

    async fn cluster_status(
        &self,
        _r: Request<pb::ClusterStatusRequest>,
    ) -> Rpc<pb::ClusterStatusResponse> {
        self.call(move |m| {
            let q = m.queue_status()?;
            let (repaired_shards, repaired_bytes) = m.repaired();
            Ok(pb::ClusterStatusResponse {
                repair_blocks: q.repair_blocks,
                repair_shards: q.repair_shards,
                repair_bytes: q.repair_bytes,
                repaired_shards,
                repaired_bytes,
                gc_blocks: q.gc_blocks,
                repair_rate: m.repair_stats.rate(),
                corrupt_reported: m
                    .repair_stats
                    .corrupt
                    .load(std::sync::atomic::Ordering::Relaxed),
            })
        })
        .await
    }

    async fn create_volume(&self, r: Request<pb::CreateVolumeRequest>) -> Rpc<pb::Volume> {
        let r = r.into_inner();
        self.call(move |m| {
            let labels = r.labels.into_iter().collect();
            let min_durable = u8::try_from(r.min_durable).map_err(|_| {
                MetaError::Invalid(format!("min_durable {} is out of range", r.min_durable))
            })?;
            let settings = crate::volumes::VolumeSettings { min_durable };
            let v = m.create_volume_with(&r.name, r.size_bytes, &r.protection, labels, settings)?;
            Ok(volume(m, v))
        })
        .await
    }

    async fn get_volume(&self, r: Request<pb::GetVolumeRequest>) -> Rpc<pb::Volume> {
        let r = r.into_inner();
        self.call(move |m| Ok(volume(m, m.get_volume(&r.name)?)))
            .await
    }

    async fn list_volumes(
        &self,
        _: Request<pb::ListVolumesRequest>,
    ) -> Rpc<pb::ListVolumesResponse> {
        self.call(|m| {
            let volumes = m
                .list_volumes()?
                .into_iter()
                .map(|v| volume(m, v))
                .collect();
            Ok(pb::ListVolumesResponse { volumes })
        })
        .await
    }

    async fn delete_volume(
        &self,
        r: Request<pb::DeleteVolumeRequest>,
    ) -> Rpc<pb::DeleteVolumeResponse> {
        let r = r.into_inner();
        self.call(move |m| {
            m.delete_volume(&r.name)?;
            Ok(pb::DeleteVolumeResponse {})
        })
        .await
    }

    async fn alloc_blocks(
        &self,
        r: Request<pb::AllocBlocksRequest>,
    ) -> Rpc<pb::AllocBlocksResponse> {
        let count = r.into_inner().count;
        self.call(move |m| {
            Ok(pb::AllocBlocksResponse {
                first: m.alloc_blocks(count)?,
                count,
            })
        })
        .await
    }

    async fn get_slices(&self, r: Request<pb::GetSlicesRequest>) -> Rpc<pb::GetSlicesResponse> {
        let r = r.into_inner();
        self.inline(move |m| {
            let d = m.file_data(r.volume, r.ino)?;
            Ok(pb::GetSlicesResponse {
                attr: Some(attr(d.attr)),
                slices: d.slices.into_iter().map(slice_to_pb).collect(),
                inline_blocks: d
                    .inline
                    .into_iter()
                    .map(|b| pb::InlineBlock {
                        block: b.block,
                        data: b.data.into(),
                    })
                    .collect(),
            })
        })
    }

    async fn commit_writes(
        &self,
        r: Request<pb::CommitWritesRequest>,
    ) -> Rpc<pb::CommitWritesResponse> {
        let r = r.into_inner();
        self.call(move |m| {
            let files: Vec<FileWrite> = r
                .files
                .into_iter()
                .map(|f| FileWrite {
                    ino: f.ino,
                    slices: f.slices.into_iter().map(slice_from_pb).collect(),
                    mtime_ns: f.mtime_ns,
                })
                .collect();
            let degraded: Vec<Degraded> = r
                .degraded
                .into_iter()
                .map(|d| {
                    let missing = d
                        .missing
                        .iter()
                        .map(|i| u8::try_from(*i))
                        .collect::<Result<Vec<u8>, _>>()
                        .map_err(|_| {
                            MetaError::Invalid(format!(
                                "degraded block {}: bad shard index",
                                d.block
                            ))
                        })?;
                    Ok(Degraded {
                        block: d.block,
                        block_len: d.block_len,
                        missing,
                    })
                })
                .collect::<Result<_, MetaError>>()?;
            let inline: Vec<InlineBlock> = r
                .inline_blocks
                .into_iter()
                .map(|b| InlineBlock {
                    block: b.block,
                    data: b.data.to_vec(),
                })
                .collect();
            let (attrs, epoch) =
                m.commit_writes_inline(r.volume, &files, &degraded, &inline, r.placement_epoch)?;
            Ok(pb::CommitWritesResponse {
                attrs: attrs.into_iter().map(attr).collect(),
                placement_epoch: epoch,
            })
        })
        .await
    }

    async fn lookup(&self, r: Request<pb::LookupRequest>) -> Rpc<pb::Attr> {
        let r = r.into_inner();
        self.inline(move |m| Ok(attr(m.lookup(r.volume, r.parent, &r.name)?)))
    }

    async fn get_attr(&self, r: Request<pb::GetAttrRequest>) -> Rpc<pb::Attr> {
        let r = r.into_inner();
        self.inline(move |m| Ok(attr(m.get_attr(r.volume, r.ino)?)))
    }

    async fn set_attr(&self, r: Request<pb::SetAttrRequest>) -> Rpc<pb::Attr> {
        let r = r.into_inner();
        self.inline(move |m| {
            let change = SetAttr {
                perm: r.perm,
                uid: r.uid,
                gid: r.gid,
                size: r.size,
                atime_ns: r.atime_ns,
                mtime_ns: r.mtime_ns,
            };
            Ok(attr(m.set_attr(r.volume, r.ino, change)?))
        })
    }

    async fn make_node(&self, r: Request<pb::MakeNodeRequest>) -> Rpc<pb::Attr> {
        let r = r.into_inner();
        self.inline(move |m| {
            let new = NewNode {
                kind: r.kind,
                perm: r.perm,
                uid: r.uid,
                gid: r.gid,
                rdev: r.rdev,
                target: r.symlink_target.to_vec(),
            };
            let (child, parent) = m.make_node_in(r.volume, r.parent, &r.name, new)?;
            Ok(pb::Attr {
                parent: Some(Box::new(attr(parent))),
                ..attr(child)
            })
        })
    }

    async fn link(&self, r: Request<pb::LinkRequest>) -> Rpc<pb::Attr> {
        let r = r.into_inner();
        self.inline(move |m| Ok(attr(m.link(r.volume, r.ino, r.new_parent, &r.new_name)?)))
    }

    async fn unlink(&self, r: Request<pb::UnlinkRequest>) -> Rpc<pb::UnlinkResponse> {
        let r = r.into_inner();
        self.inline(move |m| {
            let holder = holder(&r.open, r.session)?;
            let orphan = m.unlink_held(r.volume, r.parent, &r.name, r.dir, holder)?;
            Ok(orphaned(m, orphan))
        })
    }

    async fn rename(&self, r: Request<pb::RenameRequest>) -> Rpc<pb::UnlinkResponse> {
        let r = r.into_inner();
        self.inline(move |m| {
            let holder = holder(&r.open, r.session)?;
            let orphan = m.rename_held(
                r.volume,
                r.parent,
                &r.name,
                r.new_parent,
                &r.new_name,
                r.flags,
                holder,
            )?;
            Ok(orphaned(m, orphan))
        })
    }

    async fn release_orphan(&self, r: Request<pb::OrphanRequest>) -> Rpc<pb::Empty> {
        let r = r.into_inner();
        self.inline(move |m| {
            m.release_orphan(r.volume, r.ino)?;
            Ok(pb::Empty {})
        })
    }

    async fn renew_orphans(&self, r: Request<pb::RenewOrphansRequest>) -> Rpc<pb::Empty> {
        let r = r.into_inner();
        self.inline(move |m| {
            m.renew_orphans(r.volume, r.session, &r.inos)?;
            Ok(pb::Empty {})
        })
    }

    async fn read_dir(&self, r: Request<pb::ReadDirRequest>) -> Rpc<pb::ReadDirResponse> {
        let r = r.into_inner();
        self.inline(move |m| {
            let entries = m
                .read_dir(r.volume, r.ino, &r.after, r.limit as usize)?
                .into_iter()
                .map(|(name, d)| pb::DirEntry {
                    name: name.into(),
                    ino: d.ino,
                    kind: d.kind,
                })
                .collect();
            Ok(pb::ReadDirResponse { entries })
        })
    }

    async fn read_link(&self, r: Request<pb::ReadLinkRequest>) -> Rpc<pb::ReadLinkResponse> {
        let r = r.into_inner();
        self.inline(move |m| {
            Ok(pb::ReadLinkResponse {
                target: m.read_link(r.volume, r.ino)?.into(),
            })
        })
    }

    async fn get_xattr(&self, r: Request<pb::XattrRequest>) -> Rpc<pb::XattrValue> {
        let r = r.into_inner();
        self.inline(move |m| {
            Ok(pb::XattrValue {
                value: m.get_xattr(r.volume, r.ino, &r.name)?.into(),
            })
        })
    }

    async fn set_xattr(&self, r: Request<pb::SetXattrRequest>) -> Rpc<pb::Empty> {
        let r = r.into_inner();
        self.inline(move |m| {
            m.set_xattr(r.volume, r.ino, &r.name, &r.value, r.flags)?;
            Ok(pb::Empty {})
        })
    }

    async fn list_xattr(&self, r: Request<pb::GetAttrRequest>) -> Rpc<pb::XattrNames> {
        let r = r.into_inner();
        self.inline(move |m| {
            let names = m
                .list_xattr(r.volume, r.ino)?
                .into_iter()
                .map(Into::into)
                .collect();
            Ok(pb::XattrNames { names })
        })
    }

    async fn remove_xattr(&self, r: Request<pb::XattrRequest>) -> Rpc<pb::Empty> {
        let r = r.into_inner();
        self.inline(move |m| {
            m.remove_xattr(r.volume, r.ino, &r.name)?;
            Ok(pb::Empty {})
        })
    }

    async fn sync(&self, r: Request<pb::SyncRequest>) -> Rpc<pb::Empty> {
        let r = r.into_inner();
        self.call(move |m| {
            m.sync(r.volume)?;
            Ok(pb::Empty {})
        })
        .await
    }

    async fn stat_fs(&self, r: Request<pb::StatFsRequest>) -> Rpc<pb::StatFsResponse> {
        let r = r.into_inner();
        self.call(move |m| {
            let s = m.stat_fs(r.volume)?;
            Ok(pb::StatFsResponse {
                size_bytes: s.size,
                used_bytes: s.used,
                inodes: s.inodes,
            })
        })
        .await
    }
}

fn node_infos(m: &Meta) -> Result<Vec<pb::NodeInfo>, MetaError> {
    Ok(m.list_nodes()?
        .into_iter()
        .map(|n| pb::NodeInfo {
            reachable: n.state == crate::NodeState::Up,
            membership: n.membership.as_str().to_string(),
            state: n.display_state().to_string(),
            id: n.record.id,
            addr: n.record.addr,
            labels: n.record.labels.into_iter().collect(),
            capacity_bytes: n.stats.capacity,
            used_bytes: n.stats.used,
            shard_count: n.stats.shards,
            last_seen_ms: n
                .last_seen
                .map(|d| d.as_millis() as u64)
                .unwrap_or(u64::MAX),
        })
        .collect())
}
