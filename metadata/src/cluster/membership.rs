//! Membership: whether a node holds placement slots (see
//! [`tessera_common::Membership`] for the four states). `down` is not a
//! membership: it is heartbeats, in memory; a down node keeps its slots,
//! so a short outage moves nothing. Changes are durable (`M` + node id).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tessera_common::{Membership, NodeId};
use tracing::info;

use super::ClusterMap;
use crate::{
    keys,
    meta::now_ns,
    records::{decode, load, store, PlacementRecord},
    store::transact,
    MetaError, Result,
};

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct MemberRecord {
    pub state: Membership,
    pub since_ms: i64,
}

impl ClusterMap<'_> {
    pub fn membership(&self, id: NodeId) -> Result<Membership> {
        let key = keys::member(id);
        Ok(self
            .meta
            .store()
            .begin()
            .get(&key)?
            .map(|v| decode::<MemberRecord>(&key, &v))
            .transpose()?
            .map_or(Membership::Active, |r| r.state))
    }

    /// Sets a node's membership; returns whether it changed.
    pub(crate) fn set_membership(&self, id: NodeId, state: Membership) -> Result<bool> {
        let changed = transact(self.meta.store(), |txn| {
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

    /// Marks `out` every active node not heard from for `out_after`, and
    /// remaps its placement groups. Returns the nodes marked.
    pub fn mark_out(&self, out_after: Duration) -> Result<Vec<NodeId>> {
        let since_start = self.meta.liveness.started.elapsed();
        let mut marked = Vec::new();
        for n in self.nodes()? {
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

    /// `tessera node drain ID`: move every shard of the node elsewhere.
    /// Returns how many placement slots moved.
    pub fn drain(&self, id: NodeId) -> Result<usize> {
        self.node_record(id)?;
        self.set_membership(id, Membership::Draining)?;
        self.rebalance()
    }

    /// `tessera node rm ID`: forget a drained (or out) node. Refused while
    /// any placement group still maps to it or it may hold the only copy of
    /// a shard that is still to be moved.
    pub fn remove(&self, id: NodeId) -> Result<()> {
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
        let store_ = self.meta.store();
        let (start, end) = keys::prefix_range(&[keys::REMAP_JOB]);
        if !store_.begin().scan(&start, &end, 1)?.is_empty() {
            return busy("placement changes are still being queued".into());
        }
        let (start, end) = keys::prefix_range(&[keys::PLACEMENT]);
        for (k, v) in store_.begin().scan(&start, &end, usize::MAX)? {
            let table: PlacementRecord = decode(&k, &v)?;
            if table.pgs.iter().any(|pg| pg.contains(&id)) {
                return busy("placement groups still map to it".into());
            }
        }
        let pending = self.meta.repair().blocks_sourced_from(id)?;
        if pending > 0 {
            return busy(format!("{pending} blocks still have shards to copy off it"));
        }
        transact(store_, |txn| {
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
        self.meta.liveness.forget(id);
        info!(node = id, "node removed");
        Ok(())
    }
}
