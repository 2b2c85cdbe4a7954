//! Registration with the metadata service and the heartbeat loop.
//!
//! The loop never ends on its own: while meta is unreachable it retries with
//! exponential backoff, and the node keeps serving shards meanwhile.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tessera_proto::{
    pb::{self, meta_client::MetaClient},
    transport::grpc,
};
use tonic::transport::Channel;
use tracing::{debug, error, info, warn};

use tessera_common::ShardKey;

use crate::{scrub::Reports, store::ShardStore};

pub const INTERVAL: Duration = Duration::from_secs(1);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A registration or heartbeat that takes longer than this failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What the node tells meta about itself.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Meta's address, `host:port` or a URL, or a list of them
    /// (`a,b,c`: the process that leads answers, the others stand by).
    pub meta: String,
    /// Address clients reach this node at.
    pub addr: String,
    pub labels: BTreeMap<String, String>,
}

/// Registers, then heartbeats every [`INTERVAL`], forever; corrupt shards
/// the scrubber found are reported with the heartbeats.
pub async fn heartbeat_loop(store: Arc<ShardStore>, reg: Registration, reports: Reports) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    let metas: Vec<String> = reg
        .meta
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let mut at = 0;
    loop {
        let meta = metas.get(at % metas.len().max(1)).unwrap_or(&reg.meta);
        let e = session(&store, &reg, meta, &reports, &mut backoff, &mut failures).await;
        // The next try goes to the next address (a standby, or a process
        // that died, tells nothing about the others).
        at += 1;
        // WARN once per outage, then quietly keep trying.
        if failures == 0 {
            warn!(meta = %reg.meta, error = %e, "metadata service unreachable; retrying");
        } else {
            debug!(meta = %reg.meta, error = %e, "metadata service still unreachable");
        }
        failures += 1;
        tokio::time::sleep(backoff).await;
        // With several addresses a failover takes a lease's time: try
        // them all at least every second.
        let most = if metas.len() > 1 {
            Duration::from_secs(1)
        } else {
            MAX_BACKOFF
        };
        backoff = (backoff * 2).min(most);
    }
}

/// One connection: register, then heartbeat until something fails.
async fn session(
    store: &Arc<ShardStore>,
    reg: &Registration,
    meta: &str,
    reports: &Reports,
    backoff: &mut Duration,
    failures: &mut u32,
) -> String {
    let channel = match grpc::channel(meta, Some(CALL_TIMEOUT)).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
    };
    let mut client = MetaClient::new(channel);
    let id = match register(store, reg, &mut client).await {
        Ok(id) => id,
        Err(e) => return e,
    };
    if *failures > 0 {
        info!(node = id, meta, "metadata service reachable again");
    }
    (*backoff, *failures) = (MIN_BACKOFF, 0);
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = store.clone();
        let st = match tokio::task::spawn_blocking(move || s.stat()).await {
            Ok(Ok(st)) => st,
            Ok(Err(e)) => return format!("stat: {e}"),
            Err(e) => return format!("stat task: {e}"),
        };
        let req = pb::HeartbeatRequest {
            id,
            capacity_bytes: st.capacity_bytes,
            used_bytes: st.used_bytes,
            shard_count: st.shard_count,
        };
        if let Err(e) = client.heartbeat(req).await {
            return format!("heartbeat: {e}");
        }
        let corrupt: Vec<ShardKey> = std::mem::take(&mut *reports.lock().expect("reports lock"));
        if !corrupt.is_empty() {
            let req = pb::ReportCorruptRequest {
                keys: corrupt.iter().map(|k| (*k).into()).collect(),
                node: id,
            };
            if let Err(e) = client.report_corrupt(req).await {
                // Keep them for the next try.
                reports.lock().expect("reports lock").extend(corrupt);
                return format!("reporting corrupt shards: {e}");
            }
        }
    }
}

/// Registers with the stored id (0 the first time) and stores the id meta
/// gives back.
async fn register(
    store: &Arc<ShardStore>,
    reg: &Registration,
    client: &mut MetaClient<Channel>,
) -> Result<u64, String> {
    let stored = store.node_id();
    let req = pb::RegisterNodeRequest {
        id: stored.unwrap_or(0),
        addr: reg.addr.clone(),
        labels: reg.labels.clone().into_iter().collect(),
    };
    let id = client
        .register_node(req)
        .await
        .map_err(|e| format!("register: {e}"))?
        .into_inner()
        .id;
    if id == 0 {
        return Err("register: meta answered node id 0".into());
    }
    if stored != Some(id) {
        if let Some(old) = stored {
            error!(
                old,
                new = id,
                "metadata service gave this node a new id; was it reset?"
            );
        }
        let s = store.clone();
        match tokio::task::spawn_blocking(move || s.set_node_id(id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("saving node id: {e}")),
            Err(e) => return Err(format!("saving node id: {e}")),
        }
        info!(node = id, addr = %reg.addr, "registered with the metadata service");
    } else {
        debug!(node = id, "re-registered with the metadata service");
    }
    Ok(id)
}
