//! The cluster map: storage nodes (registration, heartbeats, up or down),
//! their membership (`membership.rs`), the placement table of each
//! protection class (`placement.rs`) and its remaps (`rebalance.rs`).
//! Heartbeats are kept in memory: they change every second and say nothing
//! that must survive a restart.

mod membership;
mod placement;
pub(crate) mod rebalance;

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use tessera_common::{Membership, NodeId, NodeInfo};
use tracing::info;

pub use membership::MemberRecord;
pub use rebalance::{stable_assign, RemapJob};

use crate::{
    keys,
    meta::{now_ns, Meta},
    records::{decode, load, store, NodeRecord},
    store::transact,
    MetaError, Result,
};

/// What a node reports with each heartbeat.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
}

/// A node as it registers: its stored id (0 the first time), where it is
/// dialled, and its failure-domain labels.
#[derive(Clone, Debug)]
pub struct Registration {
    pub id: NodeId,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
}

/// A node as the service sees it now.
#[derive(Clone, Debug)]
pub struct NodeView {
    pub record: NodeRecord,
    /// Heartbeats arrive.
    pub up: bool,
    pub membership: Membership,
    pub stats: NodeStats,
    pub last_seen: Option<Duration>,
}

impl NodeView {
    pub fn info(&self) -> NodeInfo {
        NodeInfo {
            id: self.record.id,
            addr: self.record.addr.clone(),
            labels: self.record.labels.clone(),
            reachable: self.up,
            membership: self.membership,
            capacity_bytes: self.stats.capacity,
            used_bytes: self.stats.used,
            shards: self.stats.shards,
            last_seen_ms: self.last_seen.map(|d| d.as_millis() as u64),
        }
    }
}

/// Heartbeats: when each node was last heard from.
pub(crate) struct Liveness {
    down_after: Duration,
    seen: Mutex<HashMap<NodeId, (Instant, NodeStats)>>,
    /// When this process started: a node never heard from counts as last
    /// seen then, so a restarted service does not declare everyone out.
    started: Instant,
}

impl Liveness {
    pub fn new(down_after: Duration) -> Self {
        Liveness {
            down_after,
            seen: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }

    fn heard(&self, id: NodeId, stats: NodeStats) {
        self.seen
            .lock()
            .expect("liveness lock")
            .insert(id, (Instant::now(), stats));
    }

    fn forget(&self, id: NodeId) {
        self.seen.lock().expect("liveness lock").remove(&id);
    }
}

/// The cluster map domain of a [`Meta`].
#[derive(Clone, Copy)]
pub struct ClusterMap<'m> {
    pub(crate) meta: &'m Meta,
}

impl ClusterMap<'_> {
    /// Registers a node (a new one gets an id); a node back from `out`
    /// becomes active again. Either takes its share of placement groups.
    pub fn register(&self, r: &Registration) -> Result<NodeId> {
        if r.addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(MetaError::Invalid(format!(
                "node address {:?} is not IP:PORT",
                r.addr
            )));
        }
        let id = match r.id {
            0 => self.meta.ids.node.alloc(self.meta.store(), 1)?,
            id => {
                self.meta.ids.node.past(self.meta.store(), id)?;
                id
            }
        };
        let was = self.membership(id)?;
        if was == Membership::Removed {
            return Err(MetaError::NotPermitted(format!(
                "node {id} was removed from the cluster; wipe its data directory to join as a new node"
            )));
        }
        transact(self.meta.store(), |txn| {
            let key = keys::node(id);
            let registered_ms = match load::<NodeRecord>(txn, &key)? {
                Some(old) => old.registered_ms,
                None => now_ns() / 1_000_000,
            };
            let record = NodeRecord {
                id,
                addr: r.addr.clone(),
                labels: r.labels.clone(),
                registered_ms,
            };
            store(txn, &key, &record)
        })?;
        self.meta.liveness.heard(id, NodeStats::default());
        info!(node = id, addr = %r.addr, "node registered");
        if was == Membership::Out {
            self.set_membership(id, Membership::Active)?;
        }
        // A new node or one back from `out` takes its share of the PGs.
        if was != Membership::Draining {
            self.rebalance()?;
        }
        Ok(id)
    }

    /// A node's heartbeat; returns the epoch (for now always 1).
    pub fn heartbeat(&self, id: NodeId, stats: NodeStats) -> Result<u64> {
        let key = keys::node(id);
        if self.meta.store().begin().get(&key)?.is_none() {
            return Err(MetaError::not_found(format!("node {id}")));
        }
        self.meta.liveness.heard(id, stats);
        if self.membership(id)? == Membership::Out {
            // Back before anyone removed it: it takes PGs again.
            self.set_membership(id, Membership::Active)?;
            self.rebalance()?;
        }
        Ok(1)
    }

    /// Every registered node, with its state.
    pub fn nodes(&self) -> Result<Vec<NodeView>> {
        let store_ = self.meta.store();
        let (start, end) = keys::prefix_range(&[keys::NODE]);
        let rows = store_.begin().scan(&start, &end, usize::MAX)?;
        let (mstart, mend) = keys::prefix_range(&[keys::MEMBER]);
        let members: HashMap<NodeId, Membership> = store_
            .begin()
            .scan(&mstart, &mend, usize::MAX)?
            .iter()
            .map(|(k, v)| {
                Ok((
                    keys::id_of(k, keys::MEMBER)?,
                    decode::<MemberRecord>(k, v)?.state,
                ))
            })
            .collect::<Result<_>>()?;
        let live = &self.meta.liveness;
        let seen = live.seen.lock().expect("liveness lock");
        rows.iter()
            .map(|(k, v)| {
                let record: NodeRecord = decode(k, v)?;
                let heard = seen.get(&record.id);
                let last_seen = heard.map(|(t, _)| t.elapsed());
                Ok(NodeView {
                    stats: heard.map(|s| s.1).unwrap_or_default(),
                    // Never heard from since this process started (it
                    // just took over, or restarted): as if heard then, so
                    // clients keep writing to nodes that are on their way
                    // to it.
                    up: last_seen.unwrap_or(live.started.elapsed()) < live.down_after,
                    membership: members
                        .get(&record.id)
                        .copied()
                        .unwrap_or(Membership::Active),
                    record,
                    last_seen,
                })
            })
            .collect()
    }

    pub(crate) fn node_record(&self, id: NodeId) -> Result<NodeRecord> {
        let key = keys::node(id);
        match self.meta.store().begin().get(&key)? {
            Some(v) => decode(&key, &v),
            None => Err(MetaError::not_found(format!("node {id}"))),
        }
    }

    /// The addresses of the nodes that are up.
    pub fn up_nodes(&self) -> Result<HashMap<NodeId, String>> {
        Ok(self
            .nodes()?
            .into_iter()
            .filter(|n| n.up)
            .map(|n| (n.record.id, n.record.addr))
            .collect())
    }
}
