//! Handlers of the cluster calls: nodes, placement, repair's queue.

use tessera_common::Protection;
use tessera_proto::pb;

use crate::{
    cluster::{NodeStats, NodeView, Registration},
    Meta, MetaError,
};

type Result<T> = std::result::Result<T, MetaError>;

pub(super) fn register_node(
    m: &Meta,
    r: pb::RegisterNodeRequest,
) -> Result<pb::RegisterNodeResponse> {
    let id = m.cluster().register(&Registration {
        id: r.id,
        addr: r.addr,
        labels: r.labels.into_iter().collect(),
    })?;
    Ok(pb::RegisterNodeResponse { id })
}

pub(super) fn heartbeat(m: &Meta, r: pb::HeartbeatRequest) -> Result<pb::HeartbeatResponse> {
    let stats = NodeStats {
        capacity: r.capacity_bytes,
        used: r.used_bytes,
        shards: r.shard_count,
    };
    Ok(pb::HeartbeatResponse {
        epoch: m.cluster().heartbeat(r.id, stats)?,
    })
}

pub(super) fn list_nodes(m: &Meta, _: pb::ListNodesRequest) -> Result<pb::ListNodesResponse> {
    let nodes = m.cluster().nodes()?;
    Ok(pb::ListNodesResponse {
        nodes: nodes.iter().map(NodeView::info).map(Into::into).collect(),
    })
}

pub(super) fn get_placement(
    m: &Meta,
    r: pb::GetPlacementRequest,
) -> Result<pb::GetPlacementResponse> {
    let (Ok(k), Ok(mm)) = (u8::try_from(r.k), u8::try_from(r.m)) else {
        return Err(MetaError::Invalid(format!("protection {}+{}", r.k, r.m)));
    };
    let p = Protection::new(k, mm)?;
    Ok(m.cluster().placement_table(p)?.into())
}

pub(super) fn cluster_status(
    m: &Meta,
    _: pb::ClusterStatusRequest,
) -> Result<pb::ClusterStatusResponse> {
    Ok(m.repair().status()?.into())
}

pub(super) fn drain_node(m: &Meta, r: pb::NodeIdRequest) -> Result<pb::DrainNodeResponse> {
    Ok(pb::DrainNodeResponse {
        moved_slots: m.cluster().drain(r.id)? as u64,
    })
}

pub(super) fn remove_node(m: &Meta, r: pb::NodeIdRequest) -> Result<pb::Empty> {
    m.cluster().remove(r.id)?;
    Ok(pb::Empty {})
}

pub(super) fn report_corrupt(m: &Meta, r: pb::ReportCorruptRequest) -> Result<pb::Empty> {
    let keys = r
        .keys
        .into_iter()
        .map(|k| tessera_proto::shard_key(Some(k)))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    m.repair().report_corrupt(r.node, &keys)?;
    Ok(pb::Empty {})
}

pub(super) fn backup_page(m: &Meta, r: pb::BackupPageRequest) -> Result<pb::BackupPageResponse> {
    let (session, page) = m.backup_page(r.session, r.page)?;
    let last = page.end.is_some();
    let end = page.end.unwrap_or_default();
    Ok(pb::BackupPageResponse {
        session,
        records: page
            .records
            .into_iter()
            .map(|(key, value)| pb::BackupRecord {
                key: key.into(),
                value: value.into(),
            })
            .collect(),
        last,
        keys: end.summary.keys,
        bytes: end.summary.bytes,
        crc32: end.summary.crc,
        cluster_id: end.cluster_id,
    })
}
