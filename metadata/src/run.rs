//! `tessera meta`: open the store, run the background tasks, serve gRPC
//! and lean RPC on one port until shutdown.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tessera_proto::{
    pb::meta_server::MetaServer,
    transport::{self, settings::MAX_MESSAGE, OnThreads},
};
use tracing::{info, warn};

use tokio::sync::watch;

use crate::{
    background::blocking,
    store::{Leadership, MetaStore, StoreError, StoreSpec},
    Meta, MetaError, MetaOptions, MetaService, Serving,
};

/// How often nodes silent for too long are looked for.
const MEMBERSHIP_EVERY: Duration = Duration::from_secs(1);
/// How often a standby asks for the lead.
const CAMPAIGN_EVERY: Duration = Duration::from_millis(500);
/// How often a leader checks that it still leads.
const LEAD_CHECK_EVERY: Duration = Duration::from_millis(100);
/// Pause before a process that failed to open the service tries again.
const OPEN_AGAIN_AFTER: Duration = Duration::from_secs(2);

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
    let store = blocking(move || {
        let store = spec.open()?;
        if crate::store::copy::unfinished(store.as_ref())? {
            return Err(MetaError::Unavailable(format!(
                "{spec} holds a `tessera meta migrate` that did not finish: empty it and migrate again"
            )));
        }
        Ok(store)
    })
    .await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| MetaError::Unavailable(format!("listening on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| MetaError::Unavailable(e.to_string()))?;
    // Calls are answered from the start: "standby" until this process
    // leads.
    let serving = Serving::default();
    let service = MetaService::new(serving.clone());
    let grpc = transport::grpc::server().add_service(
        MetaServer::new(service.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
    );
    let (stop, mut server_stopped) = watch::channel(false);
    let server = tokio::spawn(transport::serve(
        listener,
        grpc,
        OnThreads::new(Arc::new(service)),
        async move {
            let _ = server_stopped.wait_for(|s| *s).await;
        },
    ));
    let who = format!("{addr} (pid {})", std::process::id());
    let store_name = config.store.to_string();
    let held = HeldLead::default();
    let led = tokio::select! {
        led = lead(store.clone(), options, &who, &store_name, &serving, &held) => led,
        () = shutdown => Ok(()),
    };
    // New calls are turned away, the ones under way finish, then the lead
    // is given up (while the store is still open): a successor need not
    // wait for the lease to run out.
    serving.stand_by("stopping");
    let _ = stop.send(true);
    let served = server
        .await
        .map_err(|e| MetaError::Unavailable(format!("metadata server on {addr}: {e}")))?
        .map_err(|e| MetaError::Unavailable(format!("metadata server on {addr}: {e}")));
    held.resign().await;
    drop(store);
    led.and(served)
}

/// The lead this process holds, if any: given up at shutdown.
#[derive(Default)]
struct HeldLead(std::sync::Mutex<Option<Arc<dyn Leadership>>>);

impl HeldLead {
    fn set(&self, lead: Option<Arc<dyn Leadership>>) {
        *self.0.lock().expect("lead lock") = lead;
    }

    /// Gives the lead up (on a blocking thread: it waits on the store).
    async fn resign(&self) {
        let lead = self.0.lock().expect("lead lock").take();
        if let Some(lead) = lead {
            let _ = blocking(move || {
                lead.resign();
                Ok(())
            })
            .await;
        }
    }
}

/// Waits to lead, serves while it leads (with the background tasks), and
/// waits again when the lead is lost. Returns only on an error that
/// another try would not mend; `run` drops it at shutdown.
async fn lead(
    store: Arc<dyn MetaStore>,
    options: MetaOptions,
    who: &str,
    store_name: &str,
    serving: &Serving,
    held: &HeldLead,
) -> Result<(), MetaError> {
    let mut waiting_said = false;
    loop {
        let (s, w) = (store.clone(), who.to_string());
        let lead: Arc<dyn Leadership> = match blocking(move || Ok(s.try_lead(&w)?)).await {
            Ok(Some(lead)) => Arc::from(lead),
            Ok(None) => {
                serving.stand_by("another metadata process leads");
                if !waiting_said {
                    info!("another metadata process leads: standing by");
                    waiting_said = true;
                }
                tokio::time::sleep(CAMPAIGN_EVERY).await;
                continue;
            }
            Err(e) => {
                serving.stand_by(format!("no process can lead: {e}"));
                warn!(error = %e, "asking for the lead failed; asking again");
                tokio::time::sleep(CAMPAIGN_EVERY).await;
                continue;
            }
        };
        waiting_said = false;
        held.set(Some(lead.clone()));
        // Opening finishes what a crash (or the last leader) cut short.
        let (s, o) = (store.clone(), options.clone());
        let meta = match blocking(move || Meta::open(s, o)).await {
            Ok(m) => Arc::new(m),
            Err(e) if lead.exclusive() => return Err(e),
            // A store that cannot be reached a moment, or a lead lost while
            // opening, need not end the process (with other processes
            // over the store): give the lead up and try again. Anything
            // else (a corrupt record), or an embedded store, ends it.
            Err(e @ MetaError::Store(StoreError::Backend(_) | StoreError::Deposed(_)))
                if !lead.exclusive() =>
            {
                warn!(error = %e, "opening the metadata service failed; trying again");
                serving.stand_by(format!("opening the metadata service failed: {e}"));
                held.resign().await;
                tokio::time::sleep(OPEN_AGAIN_AFTER).await;
                continue;
            }
            Err(e) => {
                held.resign().await;
                return Err(e);
            }
        };
        let tasks = Tasks(vec![
            tokio::spawn(crate::gc::collect_forever(
                meta.clone(),
                options.gc_interval,
            )),
            tokio::spawn(crate::repair::repair_forever(
                meta.clone(),
                options.repair.clone(),
            )),
            tokio::spawn(mark_out_forever(meta.clone(), options.out_after)),
        ]);
        info!(
            leader = who,
            cluster = meta.cluster_id(),
            "metadata service ready"
        );
        // Every call checks the lead too (`Serving`).
        serving.serve(meta.clone(), lead.clone());
        while lead.held() {
            tokio::time::sleep(LEAD_CHECK_EVERY).await;
        }
        serving.stand_by(format!(
            "this process lost the lead: {store_name} did not keep its lease alive"
        ));
        drop(tasks);
        // Revoked at once, if etcd still has it: a successor need not wait.
        held.resign().await;
        warn!("lost the lead: standing by until it is this process's again");
        // The lost service's last calls and background work (fenced: their
        // commits fail) end before this process may lead again under a
        // new fence, which they would share.
        while Arc::strong_count(&meta) > 1 {
            tokio::time::sleep(LEAD_CHECK_EVERY).await;
        }
    }
}

/// Background tasks, stopped when dropped.
struct Tasks(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
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
