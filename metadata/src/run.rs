//! `tessera meta`: open the store, serve gRPC until shutdown.

use std::{future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use tessera_proto::{pb::meta_server::MetaServer, MAX_MESSAGE};
use tracing::info;

use crate::{store::RocksStore, Meta, MetaError, MetaOptions, MetaService};

/// How long a shutdown waits for clients to close their connections.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Directory of the embedded RocksDB store.
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub options: MetaOptions,
}

pub async fn run(
    config: MetaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetaError> {
    let path = config.data_dir.join("meta.db");
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        MetaError::Unavailable(format!("creating {}: {e}", config.data_dir.display()))
    })?;
    let store = Arc::new(RocksStore::open(&path)?);
    let meta = Arc::new(Meta::open(store, config.options.clone())?);
    let gc = tokio::spawn(crate::gc::collect_forever(
        meta.clone(),
        config.options.gc_interval,
    ));
    let repair = tokio::spawn(crate::repair::repair_forever(
        meta.clone(),
        config.options.repair.clone(),
    ));
    let out_after = config.options.out_after;
    let membership = tokio::spawn({
        let meta = meta.clone();
        async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let m = meta.clone();
                match tokio::task::spawn_blocking(move || m.mark_out(out_after)).await {
                    Ok(Err(e)) => tracing::warn!(error = %e, "marking nodes out failed"),
                    Err(e) => tracing::warn!(error = %e, "membership task"),
                    Ok(Ok(_)) => {}
                }
            }
        }
    });
    let service = MetaServer::new(MetaService::new(meta))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| MetaError::Unavailable(format!("listening on {}: {e}", config.listen)))?;
    info!(listen = %listener.local_addr().map_err(|e| MetaError::Unavailable(e.to_string()))?, "metadata service ready");
    // A graceful shutdown waits for clients to close their connections,
    // and a mount's per-thread connections are idle between calls (nobody
    // reads the server's goodbye on them). Every answered change is in
    // the WAL already, so after a short grace the rest are just dropped.
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_lean, lean_stopped) = tokio::sync::watch::channel(false);
    let (incoming, _lean) = tessera_proto::lean::server::accept(
        listener,
        crate::lean::LeanMeta(service.clone()),
        lean_stopped,
    );
    let serve = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            let _ = stop_lean.send(true);
            let _ = stopping.send(());
        });
    let grace = async {
        match stopped.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let served = tokio::select! {
        r = serve => r.map_err(|e| MetaError::Unavailable(format!("metadata server: {e}"))),
        () = grace => {
            info!(grace = ?SHUTDOWN_GRACE, "closing the connections still open");
            Ok(())
        }
    };
    gc.abort();
    repair.abort();
    membership.abort();
    served
}
