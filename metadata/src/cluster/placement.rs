//! Placement tables: for each protection class, the nodes of each
//! placement group, chosen by weighted rendezvous hashing with no two
//! shards in one failure domain.

use tessera_common::{
    placement::{place, Candidate},
    Membership, PlacementTable, Protection, PG_COUNT,
};

use super::{ClusterMap, NodeView};
use crate::{
    keys,
    records::{decode, load, store, NodeRecord, PlacementRecord},
    store::transact,
    MetaError, Result,
};

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

impl ClusterMap<'_> {
    /// The placement table of a protection class, created from the nodes
    /// that are up the first time the class is used. Membership changes
    /// remap it (`rebalance.rs`).
    pub fn placement(&self, p: Protection) -> Result<PlacementRecord> {
        let key = keys::placement(p.k, p.m);
        if let Some(v) = self.meta.store().begin().get(&key)? {
            return decode(&key, &v);
        }
        let candidates: Vec<Candidate> = self
            .nodes()?
            .into_iter()
            .filter(|n| n.up && n.membership == Membership::Active)
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
        transact(self.meta.store(), |txn| {
            // Another request may have created it meanwhile: keep theirs.
            if let Some(existing) = load::<PlacementRecord>(txn, &key)? {
                return Ok(existing);
            }
            store(txn, &key, &record)?;
            Ok(record.clone())
        })
    }

    /// The placement table of a class with every node it may name, as
    /// clients need it.
    pub fn placement_table(&self, p: Protection) -> Result<PlacementTable> {
        let table = self.placement(p)?;
        Ok(PlacementTable {
            epoch: table.epoch,
            pgs: table.pgs,
            nodes: self.nodes()?.iter().map(NodeView::info).collect(),
        })
    }
}
