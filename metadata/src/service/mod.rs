//! The metadata service's edge: every call of the `Meta` gRPC service,
//! over HTTP/2 or lean RPC, lands here. A handler converts the request
//! into domain types (validating it), calls one domain operation and
//! converts the answer back; `pb` is used nowhere else in this crate.
//!
//! Handlers are synchronous and may wait on the store (a transaction, an
//! fsync, a conflict's back-off). A gRPC call runs its handler on the
//! blocking pool; a lean RPC connection is served on a thread of its own
//! (`transport::OnThreads`), which runs the handler itself, so a FUSE
//! thread's call costs no hand-off between threads. Neither ever runs on
//! a runtime worker: heartbeats and small calls are answered while large
//! files are released.

mod cluster;
mod data;
mod tree;
mod volumes;

use std::sync::{Arc, RwLock};

use bytes::Bytes;
use prost::Message;
use tessera_proto::{
    lean::meta as paths,
    pb::{self, meta_server::Meta as MetaRpc},
    transport::{BlockingHandler, Reply},
};
use tonic::{Request, Response, Status};

use crate::{store::Leadership, Meta, MetaError};

/// The `Meta` service over gRPC ([`MetaRpc`]) and lean RPC
/// ([`BlockingHandler`]).
#[derive(Clone)]
pub struct MetaService {
    serving: Serving,
}

impl MetaService {
    pub fn new(serving: Serving) -> Self {
        MetaService { serving }
    }
}

/// What the service answers with: the metadata while this process leads
/// (`run.rs`), else every call is answered [`tessera_proto::STANDBY`]
/// and why.
#[derive(Clone)]
pub struct Serving(Arc<RwLock<Result<Leading, String>>>);

/// The service of a process that leads, and its lead, checked on every
/// call: a lead lost between the serving loop's checks answers at once.
#[derive(Clone)]
struct Leading {
    meta: Arc<Meta>,
    lead: Arc<dyn Leadership>,
}

impl Default for Serving {
    fn default() -> Self {
        Serving(Arc::new(RwLock::new(Err("starting".into()))))
    }
}

impl Serving {
    /// Serves `meta` while `lead` holds.
    pub fn serve(&self, meta: Arc<Meta>, lead: Arc<dyn Leadership>) {
        *self.0.write().expect("serving lock") = Ok(Leading { meta, lead });
    }

    /// Serves nothing, saying `why`.
    pub fn stand_by(&self, why: impl Into<String>) {
        *self.0.write().expect("serving lock") = Err(why.into());
    }

    fn get(&self) -> Result<Arc<Meta>, String> {
        match &*self.0.read().expect("serving lock") {
            Ok(l) if l.lead.held() => Ok(l.meta.clone()),
            Ok(_) => Err("this process lost the lead".into()),
            Err(why) => Err(why.clone()),
        }
    }
}

fn standby(why: String) -> Status {
    Status::unavailable(format!("{}: {why}", tessera_proto::STANDBY))
}

/// Runs a handler on the blocking pool.
async fn on_blocking_pool<Q: Send + 'static, A: Send + 'static>(
    serving: &Serving,
    method: &'static str,
    request: Q,
    handler: fn(&Meta, Q) -> Result<A, MetaError>,
) -> Result<Response<A>, Status> {
    let meta = serving.get().map_err(standby)?;
    tokio::task::spawn_blocking(move || {
        let _span = tracing::debug_span!("rpc", method).entered();
        handler(&meta, request)
    })
    .await
    .map_err(|e| Status::internal(format!("{method} failed: {e}")))?
    .map(Response::new)
    .map_err(Status::from)
}

/// Runs a handler on a lean connection's thread.
fn on_this_thread<Q: Message + Default, A: Message>(
    serving: &Serving,
    method: &'static str,
    message: Bytes,
    handler: fn(&Meta, Q) -> Result<A, MetaError>,
) -> Reply {
    let meta = match serving.get() {
        Ok(m) => m,
        Err(why) => return Reply::status(&standby(why)),
    };
    let _span = tracing::debug_span!("rpc", method).entered();
    let request = match Q::decode(message) {
        Ok(q) => q,
        Err(e) => {
            return Reply::status(&Status::invalid_argument(format!(
                "malformed {method} request: {e}"
            )))
        }
    };
    match handler(&meta, request) {
        Ok(answer) => Reply::message(&answer),
        Err(e) => Reply::status(&Status::from(e)),
    }
}

/// Every method once: its handler, request and answer types, and its path.
macro_rules! meta_service {
    ($($method:ident: $handler:path, $Req:ty => $Resp:ty, $path:ident;)*) => {
        #[tonic::async_trait]
        impl MetaRpc for MetaService {
            $(
                async fn $method(&self, r: Request<$Req>) -> Result<Response<$Resp>, Status> {
                    on_blocking_pool(&self.serving, stringify!($method), r.into_inner(), $handler)
                        .await
                }
            )*
        }

        impl BlockingHandler for MetaService {
            fn call(&self, path: &str, message: Bytes) -> Reply {
                match path {
                    $(paths::$path => on_this_thread(&self.serving, stringify!($method), message, $handler),)*
                    _ => Reply::unknown_method("metadata service", path),
                }
            }
        }
    };
}

meta_service! {
    register_node: cluster::register_node, pb::RegisterNodeRequest => pb::RegisterNodeResponse, REGISTER_NODE;
    heartbeat: cluster::heartbeat, pb::HeartbeatRequest => pb::HeartbeatResponse, HEARTBEAT;
    list_nodes: cluster::list_nodes, pb::ListNodesRequest => pb::ListNodesResponse, LIST_NODES;
    get_placement: cluster::get_placement, pb::GetPlacementRequest => pb::GetPlacementResponse, GET_PLACEMENT;
    cluster_status: cluster::cluster_status, pb::ClusterStatusRequest => pb::ClusterStatusResponse, CLUSTER_STATUS;
    drain_node: cluster::drain_node, pb::NodeIdRequest => pb::DrainNodeResponse, DRAIN_NODE;
    remove_node: cluster::remove_node, pb::NodeIdRequest => pb::Empty, REMOVE_NODE;
    report_corrupt: cluster::report_corrupt, pb::ReportCorruptRequest => pb::Empty, REPORT_CORRUPT;
    backup_page: cluster::backup_page, pb::BackupPageRequest => pb::BackupPageResponse, BACKUP_PAGE;
    create_volume: volumes::create_volume, pb::CreateVolumeRequest => pb::Volume, CREATE_VOLUME;
    get_volume: volumes::get_volume, pb::GetVolumeRequest => pb::Volume, GET_VOLUME;
    list_volumes: volumes::list_volumes, pb::ListVolumesRequest => pb::ListVolumesResponse, LIST_VOLUMES;
    delete_volume: volumes::delete_volume, pb::DeleteVolumeRequest => pb::DeleteVolumeResponse, DELETE_VOLUME;
    stat_fs: volumes::stat_fs, pb::StatFsRequest => pb::StatFsResponse, STAT_FS;
    alloc_blocks: data::alloc_blocks, pb::AllocBlocksRequest => pb::AllocBlocksResponse, ALLOC_BLOCKS;
    get_slices: data::get_slices, pb::GetSlicesRequest => pb::GetSlicesResponse, GET_SLICES;
    commit_writes: data::commit_writes, pb::CommitWritesRequest => pb::CommitWritesResponse, COMMIT_WRITES;
    sync: tree::sync, pb::SyncRequest => pb::Empty, SYNC;
    lookup: tree::lookup, pb::LookupRequest => pb::Attr, LOOKUP;
    lookup_page: tree::lookup_page, pb::LookupPageRequest => pb::LookupPageResponse, LOOKUP_PAGE;
    get_attr: tree::get_attr, pb::GetAttrRequest => pb::Attr, GET_ATTR;
    set_attr: tree::set_attr, pb::SetAttrRequest => pb::Attr, SET_ATTR;
    make_node: tree::make_node, pb::MakeNodeRequest => pb::Attr, MAKE_NODE;
    link: tree::link, pb::LinkRequest => pb::Attr, LINK;
    unlink: tree::unlink, pb::UnlinkRequest => pb::UnlinkResponse, UNLINK;
    rename: tree::rename, pb::RenameRequest => pb::UnlinkResponse, RENAME;
    release_orphan: tree::release_orphan, pb::OrphanRequest => pb::Empty, RELEASE_ORPHAN;
    renew_orphans: tree::renew_orphans, pb::RenewOrphansRequest => pb::Empty, RENEW_ORPHANS;
    read_dir: tree::read_dir, pb::ReadDirRequest => pb::ReadDirResponse, READ_DIR;
    read_link: tree::read_link, pb::ReadLinkRequest => pb::ReadLinkResponse, READ_LINK;
    get_xattr: tree::get_xattr, pb::XattrRequest => pb::XattrValue, GET_XATTR;
    set_xattr: tree::set_xattr, pb::SetXattrRequest => pb::Empty, SET_XATTR;
    list_xattr: tree::list_xattr, pb::GetAttrRequest => pb::XattrNames, LIST_XATTR;
    remove_xattr: tree::remove_xattr, pb::XattrRequest => pb::Empty, REMOVE_XATTR;
    set_lock: tree::set_lock, pb::LockRequest => pb::LockResponse, SET_LOCK;
    test_lock: tree::test_lock, pb::LockRequest => pb::LockResponse, TEST_LOCK;
    renew_locks: tree::renew_locks, pb::RenewLocksRequest => pb::Empty, RENEW_LOCKS;
}
