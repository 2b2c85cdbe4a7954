//! Running a storage node: open the store, serve gRPC and lean RPC,
//! heartbeat to meta.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use tessera_proto::{
    pb::node_server::NodeServer,
    transport::{self, settings::MAX_MESSAGE, OnThreads},
};
use tracing::info;

use crate::{
    compactor::{self, CompactConfig, CompactStats},
    error::{Error, Result},
    heartbeat::{heartbeat_loop, Registration},
    lean::NodeHandler,
    scrub::{self, Reports, ScrubConfig, ScrubStats},
    service::NodeService,
    store::ShardStore,
};

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Directory holding `node.id`, `segments/` and `index/`.
    pub data_dir: PathBuf,
    /// Address the gRPC service listens on; also the address registered
    /// with meta, so it must be reachable by clients.
    pub listen: SocketAddr,
    /// The metadata service, e.g. "127.0.0.1:7400".
    pub meta: String,
    /// Placement labels (zone, rack, host).
    pub labels: BTreeMap<String, String>,
    /// Background verification of every shard.
    pub scrub: ScrubConfig,
    /// Background rewriting of mostly-garbage segments.
    pub compact: CompactConfig,
}

/// Runs a storage node until `shutdown` resolves. Meta being unreachable is
/// not an error: the node serves shards and keeps trying to register.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || ShardStore::open(dir))
        .await
        .map_err(|e| Error::Task {
            task: "open shard store",
            why: e.to_string(),
        })??;
    let store = Arc::new(store);
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| Error::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: listen,
        source,
    })?;
    info!(%addr, data_dir = %config.data_dir.display(), "storage node serving");

    let reg = Registration {
        meta: config.meta,
        addr: addr.to_string(),
        labels: config.labels,
    };
    let reports = Reports::default();
    let scrub_stats = Arc::new(ScrubStats::default());
    let stop_scrub = Arc::new(AtomicBool::new(false));
    let scrubber = scrub::spawn(
        store.clone(),
        config.scrub,
        scrub_stats.clone(),
        reports.clone(),
        stop_scrub.clone(),
    );
    let compact_stats = Arc::new(CompactStats::default());
    let compactor = compactor::spawn(
        store.clone(),
        config.compact,
        compact_stats.clone(),
        reports.clone(),
        stop_scrub.clone(),
    );
    let heartbeats = tokio::spawn(heartbeat_loop(store.clone(), reg, reports));
    let service = Arc::new(NodeService::new(store, scrub_stats, compact_stats));
    // gRPC and lean RPC on one port; shard traffic from mounts is lean.
    let grpc = transport::grpc::server().add_service(
        NodeServer::from_arc(service.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    );
    let lean = OnThreads::new(Arc::new(NodeHandler(service.calls())));
    let served = transport::serve(listener, grpc, lean, shutdown).await;
    heartbeats.abort();
    stop_scrub.store(true, Ordering::Relaxed);
    for t in [scrubber, compactor].into_iter().flatten() {
        let _ = tokio::task::spawn_blocking(move || t.join()).await;
    }
    // Wait for the task to be dropped so the store (and its RocksDB lock)
    // is released before we return.
    let _ = heartbeats.await;
    info!(%addr, "storage node stopped");
    served.map_err(|source| Error::Serve { addr, source })
}

#[cfg(test)]
mod tests;
