//! Nodes, placement tables and the cluster's queues.

use tessera_common::{ClusterStatus, Error, NodeInfo, PlacementTable};

use crate::pb;

impl From<NodeInfo> for pb::NodeInfo {
    fn from(n: NodeInfo) -> Self {
        pb::NodeInfo {
            state: n.state().to_string(),
            id: n.id,
            addr: n.addr,
            labels: n.labels.into_iter().collect(),
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            shard_count: n.shards,
            last_seen_ms: n.last_seen_ms.unwrap_or(u64::MAX),
            reachable: n.reachable,
            membership: n.membership.as_str().to_string(),
        }
    }
}

impl TryFrom<pb::NodeInfo> for NodeInfo {
    type Error = Error;

    fn try_from(n: pb::NodeInfo) -> Result<Self, Error> {
        Ok(NodeInfo {
            id: n.id,
            addr: n.addr,
            labels: n.labels.into_iter().collect(),
            reachable: n.reachable,
            membership: n.membership.parse()?,
            capacity_bytes: n.capacity_bytes,
            used_bytes: n.used_bytes,
            shards: n.shard_count,
            last_seen_ms: (n.last_seen_ms != u64::MAX).then_some(n.last_seen_ms),
        })
    }
}

impl From<PlacementTable> for pb::GetPlacementResponse {
    fn from(t: PlacementTable) -> Self {
        pb::GetPlacementResponse {
            epoch: t.epoch,
            pgs: t
                .pgs
                .into_iter()
                .map(|nodes| pb::PgNodes { nodes })
                .collect(),
            nodes: t.nodes.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::GetPlacementResponse> for PlacementTable {
    type Error = Error;

    fn try_from(r: pb::GetPlacementResponse) -> Result<Self, Error> {
        Ok(PlacementTable {
            epoch: r.epoch,
            pgs: r.pgs.into_iter().map(|p| p.nodes).collect(),
            nodes: r
                .nodes
                .into_iter()
                .map(NodeInfo::try_from)
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<ClusterStatus> for pb::ClusterStatusResponse {
    fn from(s: ClusterStatus) -> Self {
        pb::ClusterStatusResponse {
            repair_blocks: s.repair_blocks,
            repair_shards: s.repair_shards,
            repair_bytes: s.repair_bytes,
            repaired_shards: s.repaired_shards,
            repaired_bytes: s.repaired_bytes,
            gc_blocks: s.gc_blocks,
            repair_rate: s.repair_rate,
            corrupt_reported: s.corrupt_reported,
            releasing_files: s.releasing_files,
        }
    }
}

impl From<pb::ClusterStatusResponse> for ClusterStatus {
    fn from(s: pb::ClusterStatusResponse) -> Self {
        ClusterStatus {
            repair_blocks: s.repair_blocks,
            repair_shards: s.repair_shards,
            repair_bytes: s.repair_bytes,
            repaired_shards: s.repaired_shards,
            repaired_bytes: s.repaired_bytes,
            gc_blocks: s.gc_blocks,
            repair_rate: s.repair_rate,
            corrupt_reported: s.corrupt_reported,
            releasing_files: s.releasing_files,
        }
    }
}
