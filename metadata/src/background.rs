//! What the background tasks (garbage collection, repair, membership)
//! share: store work runs on the blocking pool, never on a runtime worker;
//! placement tables are read once per round.

use std::{
    collections::{btree_map::Entry, BTreeMap},
    sync::Arc,
};

use tessera_common::Protection;

use crate::{records::PlacementRecord, Meta, Result};

/// The placement table of `p`, fetched once per round.
pub(crate) async fn cached_placement<'a>(
    meta: &Arc<Meta>,
    tables: &'a mut BTreeMap<(u8, u8), PlacementRecord>,
    p: Protection,
) -> Result<&'a PlacementRecord> {
    Ok(match tables.entry((p.k, p.m)) {
        Entry::Occupied(e) => e.into_mut(),
        Entry::Vacant(e) => {
            let m = meta.clone();
            e.insert(blocking(move || m.cluster().placement(p)).await?)
        }
    })
}

/// Runs store work `f` on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .expect("background store work does not panic")
}
