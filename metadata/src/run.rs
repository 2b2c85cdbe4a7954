//! `tessera meta`: open the store, run the background tasks, serve gRPC
//! and lean RPC on one port until shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tessera_proto::{
    pb::meta_server::MetaServer,
    transport::{self, settings::MAX_MESSAGE, OnThreads},
};
use tracing::{info, warn};

use crate::{background::blocking, store::StoreSpec, Meta, MetaError, MetaOptions, MetaService};

/// How often nodes silent for too long are looked for.
const MEMBERSHIP_EVERY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct MetaConfig {
    /// Where the metadata lives: embedded RocksDB, or etcd.
    pub store: StoreSpec,
    pub listen: SocketAddr,
    pub options: MetaOptions,
}

pub async fn run(
    config: MetaConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), MetaError> {
    let (spec, options) = (config.store.clone(), config.options.clone());
    info!(store = %spec, "opening the metadata store");
    // Opening finishes what a crash cut short: store work, off the runtime.
    let meta = blocking(move || {
        let store = spec.open()?;
        if crate::store::copy::unfinished(store.as_ref())? {
            return Err(MetaError::Unavailable(format!(
                "{spec} holds a `tessera meta migrate` that did not finish: empty it and migrate again"
            )));
        }
        Meta::open(store, options)
    })
    .await?;
    let meta = Arc::new(meta);
    let tasks = [
        tokio::spawn(crate::gc::collect_forever(
            meta.clone(),
            config.options.gc_interval,
        )),
        tokio::spawn(crate::repair::repair_forever(
            meta.clone(),
            config.options.repair.clone(),
        )),
        tokio::spawn(mark_out_forever(meta.clone(), config.options.out_after)),
    ];
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| MetaError::Unavailable(format!("listening on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| MetaError::Unavailable(e.to_string()))?;
    info!(listen = %addr, "metadata service ready");
    let service = MetaService::new(meta);
    let grpc = transport::grpc::server().add_service(
        MetaServer::new(service.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    );
    let served = transport::serve(listener, grpc, OnThreads::new(Arc::new(service)), shutdown)
        .await
        .map_err(|e| MetaError::Unavailable(format!("metadata server on {addr}: {e}")));
    for t in tasks {
        t.abort();
    }
    served
}

/// Marks nodes silent for `out_after` out, every second.
async fn mark_out_forever(meta: Arc<Meta>, out_after: Duration) {
    loop {
        tokio::time::sleep(MEMBERSHIP_EVERY).await;
        let m = meta.clone();
        if let Err(e) = blocking(move || m.cluster().mark_out(out_after)).await {
            warn!(error = %e, "marking nodes out failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MetaStore, RocksStore};

    /// A store a migration did not finish is refused at start, with the
    /// reason, and nothing is served.
    #[tokio::test]
    async fn a_store_holding_an_unfinished_copy_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = RocksStore::open(dir.path()).unwrap();
            let mut t = s.begin();
            t.put(crate::store::copy::COPYING, b"").unwrap();
            t.commit().unwrap();
        }
        let config = MetaConfig {
            store: StoreSpec::Rocks(dir.path().to_path_buf()),
            listen: "127.0.0.1:0".parse().unwrap(),
            options: MetaOptions::default(),
        };
        let r = run(config, std::future::pending()).await;
        match r {
            Err(e) => assert!(e.to_string().contains("did not finish"), "{e}"),
            Ok(()) => panic!("a store with an unfinished copy was served"),
        }
    }
}
