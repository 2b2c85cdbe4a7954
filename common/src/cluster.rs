//! The cluster as clients and admins see it: storage nodes, placement
//! tables and the background queues.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Error, NodeId};

/// Whether a node holds placement slots.
///
/// - `active`: placed on. A node that stops heartbeating is down but keeps
///   its slots, so a short outage moves nothing.
/// - `draining`: asked to leave; its slots are remapped and its shards
///   copied away while it still serves them.
/// - `out`: down for longer than the cluster's `out_after`; its slots are
///   remapped and its shards rebuilt elsewhere. Active again if it returns.
/// - `removed`: gone for good (a tombstone, so its id cannot come back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Membership {
    Active,
    Draining,
    Out,
    Removed,
}

impl Membership {
    pub fn as_str(&self) -> &'static str {
        match self {
            Membership::Active => "active",
            Membership::Draining => "draining",
            Membership::Out => "out",
            Membership::Removed => "removed",
        }
    }
}

impl std::str::FromStr for Membership {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "active" => Membership::Active,
            "draining" => Membership::Draining,
            "out" => Membership::Out,
            "removed" => Membership::Removed,
            _ => return Err(Error::invalid("membership", s, "unknown")),
        })
    }
}

/// A storage node and its last heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: NodeId,
    /// Where clients dial it.
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    /// Heartbeats arrive: the node serves requests.
    pub reachable: bool,
    pub membership: Membership,
    pub capacity_bytes: u64,
    pub used_bytes: u64,
    pub shards: u64,
    /// Milliseconds since the last heartbeat; None if never heard from.
    pub last_seen_ms: Option<u64>,
}

impl NodeInfo {
    /// What `node ls` shows: `up` or `down` for an active node, else its
    /// membership.
    pub fn state(&self) -> &'static str {
        match (self.membership, self.reachable) {
            (Membership::Active, true) => "up",
            (Membership::Active, false) => "down",
            (m, _) => m.as_str(),
        }
    }
}

/// Where each placement group of one protection class lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacementTable {
    pub epoch: u64,
    /// For each PG, the node of each shard index.
    pub pgs: Vec<Vec<NodeId>>,
    /// Every node the table may name.
    pub nodes: Vec<NodeInfo>,
}

/// The repair and garbage collection queues, for `cluster status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    pub repair_blocks: u64,
    pub repair_shards: u64,
    pub repair_bytes: u64,
    pub repaired_shards: u64,
    pub repaired_bytes: u64,
    pub gc_blocks: u64,
    /// Bytes per second repair wrote recently.
    pub repair_rate: u64,
    pub corrupt_reported: u64,
    /// Removed files whose rows are still being deleted in the background.
    pub releasing_files: u64,
}
