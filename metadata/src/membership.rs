//! Membership: whether a node holds placement slots.
//!
//! - `active`: placed on. A node that stops heartbeating is `down` (in
//!   memory) but keeps its slots, so a short outage moves nothing: writes
//!   queue its shards for repair and it catches up when it returns.
//! - `out`: down for longer than `out_after`; its slots are remapped to
//!   other nodes and its shards rebuilt there. It becomes active again if it
//!   comes back.
//! - `draining`: asked to leave; its slots are remapped and its shards
//!   copied away while it still serves them.
//! - `removed`: gone for good (a tombstone, so its id cannot come back).

use serde::{Deserialize, Serialize};
use tessera_common::NodeId;
use tracing::info;

use crate::{
    keys,
    meta::now_ns,
    records::{load, store, NodeRecord, PlacementRecord},
    store::transact,
    Meta, MetaError, Result,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MemberRecord {
    pub state: Membership,
    pub since_ms: i64,
}

impl Meta {
    pub fn membership(&self, id: NodeId) -> Result<Membership> {
        let key = keys::member(id);
        Ok(self
            .store
            .begin()
            .get(&key)?
            .map(|v| crate::records::decode::<MemberRecord>(&key, &v))
            .transpose()?
            .map_or(Membership::Active, |r| r.state))
    }

    /// Sets a node's membership; returns whether it changed.
    pub(crate) fn set_membership(&self, id: NodeId, state: Membership) -> Result<bool> {
        let changed = transact(self.store.as_ref(), |txn| {
            let key = keys::member(id);
            let old = load::<MemberRecord>(txn, &key)?.map_or(Membership::Active, |r| r.state);
            if old == state {
                return Ok(false);
            }
            store(
                txn,
                &key,
                &MemberRecord {
                    state,
                    since_ms: now_ns() / 1_000_000,
                },
            )?;
            Ok(true)
        })?;
        if changed {
            info!(node = id, state = state.as_str(), "node membership changed");
        }
        Ok(changed)
    }

    /// `tessera node drain ID`: move every shard of the node elsewhere.
    pub fn drain_node(&self, id: NodeId) -> Result<usize> {
        self.node_record(id)?;
        self.set_membership(id, Membership::Draining)?;
        self.rebalance()
    }

    /// `tessera node rm ID`: forget a drained (or out) node. Refused while
    /// any placement group still maps to it or it may hold the only copy of
    /// a shard that is still to be moved.
    pub fn remove_node(&self, id: NodeId) -> Result<()> {
        self.node_record(id)?;
        let state = self.membership(id)?;
        if !matches!(state, Membership::Draining | Membership::Out) {
            return Err(MetaError::Invalid(format!(
                "node {id} is {}: drain it first (tessera node drain {id})",
                state.as_str()
            )));
        }
        let busy = |why: String| {
            Err(MetaError::Busy(format!(
                "node {id} cannot be removed yet: {why}"
            )))
        };
        let (start, end) = keys::prefix_range(&[keys::REMAP_JOB]);
        if !self.store.begin().scan(&start, &end, 1)?.is_empty() {
            return busy("placement changes are still being queued".into());
        }
        let (start, end) = keys::prefix_range(&[keys::PLACEMENT]);
        for (k, v) in self.store.begin().scan(&start, &end, usize::MAX)? {
            let table: PlacementRecord = crate::records::decode(&k, &v)?;
            if table.pgs.iter().any(|pg| pg.contains(&id)) {
                return busy("placement groups still map to it".into());
            }
        }
        let pending = self
            .repair_pending(usize::MAX)?
            .into_iter()
            .filter(|(_, r)| r.sources.values().any(|n| *n == id))
            .count();
        if pending > 0 {
            return busy(format!("{pending} blocks still have shards to copy off it"));
        }
        transact(self.store.as_ref(), |txn| {
            txn.delete(&keys::node(id))?;
            store(
                txn,
                &keys::member(id),
                &MemberRecord {
                    state: Membership::Removed,
                    since_ms: now_ns() / 1_000_000,
                },
            )
        })?;
        self.cluster.live.lock().expect("liveness lock").remove(&id);
        info!(node = id, "node removed");
        Ok(())
    }

    pub(crate) fn node_record(&self, id: NodeId) -> Result<NodeRecord> {
        let key = keys::node(id);
        match self.store.begin().get(&key)? {
            Some(v) => crate::records::decode(&key, &v),
            None => Err(MetaError::not_found(format!("node {id}"))),
        }
    }
}
