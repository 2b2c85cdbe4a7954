//! Cluster membership (registration, heartbeats, up/down) and placement
//! tables. Heartbeats are kept in memory: they change every second and say
//! nothing that must survive a restart.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use tessera_common::{
    placement::{place, Candidate},
    NodeId, Protection, PG_COUNT,
};
use tracing::info;

use crate::{
    keys,
    membership::{MemberRecord, Membership},
    meta::{now_ns, Meta},
    records::{decode, load, store, NodeRecord, PlacementRecord},
    store::transact,
    MetaError, Result,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeState {
    Up,
    Down,
}

impl NodeState {
    pub fn as_str(&self) -> &'static str {
        match self {
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NodeStats {
    pub capacity: u64,
    pub used: u64,
    pub shards: u64,
}

#[derive(Clone, Debug)]
pub struct NodeView {
    pub record: NodeRecord,
    /// Up or down, from heartbeats.
    pub state: NodeState,
    pub membership: Membership,
    pub stats: NodeStats,
    pub last_seen: Option<Duration>,
}

impl NodeView {
    /// What `node ls` shows: out and draining first, else up or down.
    pub fn display_state(&self) -> &'static str {
        match self.membership {
            Membership::Out | Membership::Draining | Membership::Removed => {
                self.membership.as_str()
            }
            Membership::Active => self.state.as_str(),
        }
    }
}

pub struct Cluster {
    pub(crate) down_after: Duration,
    pub(crate) live: Mutex<HashMap<NodeId, (Instant, NodeStats)>>,
    /// When this process started: a node never heard from counts as last
    /// seen then, so a restarted service does not declare everyone out.
    started: Instant,
}

impl Cluster {
    pub fn new(down_after: Duration) -> Self {
        Cluster {
            down_after,
            live: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }
}

/// A node as placement sees it.
pub(crate) fn candidate(n: &NodeView) -> Candidate {
    Candidate {
        id: n.record.id,
        domain: domain(&n.record),
        weight: 1.0,
    }
}

/// The failure domain of a node: its most specific location label, or the
/// node itself.
fn domain(record: &NodeRecord) -> String {
    for label in ["host", "rack", "zone"] {
        if let Some(v) = record.labels.get(label) {
            return format!("{label}={v}");
        }
    }
    format!("node={}", record.id)
}

impl Meta {
    pub fn register_node(
        &self,
        id: NodeId,
        addr: String,
        labels: BTreeMap<String, String>,
    ) -> Result<NodeId> {
        if addr.parse::<std::net::SocketAddr>().is_err() {
            return Err(MetaError::Invalid(format!(
                "node address {addr:?} is not IP:PORT"
            )));
        }
        let id = if id == 0 {
            self.node_ids.alloc(self.store.as_ref(), 1)?
        } else {
            id
        };
        let was = self.membership(id)?;
        if was == Membership::Removed {
            return Err(MetaError::NotPermitted(format!(
                "node {id} was removed from the cluster; wipe its data directory to join as a new node"
            )));
        }
        transact(self.store.as_ref(), |txn| {
            let key = keys::node(id);
            let registered_ms = match load::<NodeRecord>(txn, &key)? {
                Some(old) => old.registered_ms,
                None => now_ns() / 1_000_000,
            };
            let record = NodeRecord {
                id,
                addr: addr.clone(),
                labels: labels.clone(),
                registered_ms,
            };
            store(txn, &key, &record)
        })?;
        self.cluster
            .live
            .lock()
            .expect("liveness lock")
            .insert(id, (Instant::now(), NodeStats::default()));
        info!(node = id, %addr, "node registered");
        if was == Membership::Out {
            self.set_membership(id, Membership::Active)?;
        }
        // A new node or one back from `out` takes its share of the PGs.
        if was != Membership::Draining {
            self.rebalance()?;
        }
        Ok(id)
    }

    /// Marks `out` every active node not heard from for `out_after`, and
    /// remaps its placement groups. Returns the nodes marked.
    pub fn mark_out(&self, out_after: Duration) -> Result<Vec<NodeId>> {
        let since_start = self.cluster.started.elapsed();
        let mut marked = Vec::new();
        for n in self.list_nodes()? {
            let silent = n.last_seen.unwrap_or(since_start);
            if n.membership == Membership::Active && silent >= out_after {
                self.set_membership(n.record.id, Membership::Out)?;
                marked.push(n.record.id);
            }
        }
        if !marked.is_empty() {
            info!(nodes = ?marked, "nodes out: remapping their placement groups");
            self.rebalance()?;
        }
        Ok(marked)
    }

    pub fn heartbeat(&self, id: NodeId, stats: NodeStats) -> Result<u64> {
        let key = keys::node(id);
        if self.store.begin().get(&key)?.is_none() {
            return Err(MetaError::not_found(format!("node {id}")));
        }
        self.cluster
            .live
            .lock()
            .expect("liveness lock")
            .insert(id, (Instant::now(), stats));
        if self.membership(id)? == Membership::Out {
            // Back before anyone removed it: it takes PGs again.
            self.set_membership(id, Membership::Active)?;
            self.rebalance()?;
        }
        Ok(1)
    }

    pub fn list_nodes(&self) -> Result<Vec<NodeView>> {
        let (start, end) = keys::prefix_range(&[keys::NODE]);
        let rows = self.store.begin().scan(&start, &end, usize::MAX)?;
        let (mstart, mend) = keys::prefix_range(&[keys::MEMBER]);
        let members: HashMap<NodeId, Membership> = self
            .store
            .begin()
            .scan(&mstart, &mend, usize::MAX)?
            .iter()
            .map(|(k, v)| {
                Ok((
                    keys::block_of(k, keys::MEMBER)?,
                    decode::<MemberRecord>(k, v)?.state,
                ))
            })
            .collect::<Result<_>>()?;
        let live = self.cluster.live.lock().expect("liveness lock");
        rows.iter()
            .map(|(k, v)| {
                let record: NodeRecord = decode(k, v)?;
                let seen = live.get(&record.id);
                let last_seen = seen.map(|(t, _)| t.elapsed());
                let state = match last_seen {
                    Some(d) if d < self.cluster.down_after => NodeState::Up,
                    _ => NodeState::Down,
                };
                Ok(NodeView {
                    stats: seen.map(|s| s.1).unwrap_or_default(),
                    membership: members
                        .get(&record.id)
                        .copied()
                        .unwrap_or(Membership::Active),
                    record,
                    state,
                    last_seen,
                })
            })
            .collect()
    }

    /// The placement table of a protection class, created from the nodes that
    /// are up the first time the class is used. Later membership changes do
    /// not move it (rebalancing is a separate, explicit step).
    pub fn placement(&self, p: Protection) -> Result<PlacementRecord> {
        let key = keys::placement(p.k, p.m);
        if let Some(v) = self.store.begin().get(&key)? {
            return decode(&key, &v);
        }
        let candidates: Vec<Candidate> = self
            .list_nodes()?
            .into_iter()
            .filter(|n| n.state == NodeState::Up && n.membership == Membership::Active)
            .map(|n| candidate(&n))
            .collect();
        let seed = (u64::from(p.k) << 8) | u64::from(p.m);
        let pgs = (0..PG_COUNT)
            .map(|pg| place(seed, pg, &candidates, p.width()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                MetaError::Unavailable(format!(
                    "cannot place {p}: {e} ({} nodes up)",
                    candidates.len()
                ))
            })?;
        let record = PlacementRecord { epoch: 1, pgs };
        transact(self.store.as_ref(), |txn| {
            // Another request may have created it meanwhile: keep theirs.
            if let Some(existing) = load::<PlacementRecord>(txn, &key)? {
                return Ok(existing);
            }
            store(txn, &key, &record)?;
            Ok(record.clone())
        })
    }
}
