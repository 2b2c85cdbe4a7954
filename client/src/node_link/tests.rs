use std::{collections::HashMap, sync::Arc};

use tessera_proto::{
    pb::node_server::{Node, NodeServer},
    transport::{self, Handler, OnTasks, Reply},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{transport::server::TcpIncoming, Code, Request, Response};

use super::*;

/// Keeps shards in memory; answers PutShard and GetShard.
#[derive(Default)]
struct FakeNode {
    shards: Mutex<HashMap<(u64, u32), Bytes>>,
}

fn key_of(k: Option<pb::ShardKey>) -> (u64, u32) {
    k.map_or((0, 0), |k| (k.block, k.index))
}

#[tonic::async_trait]
impl Node for FakeNode {
    async fn put_shard(
        &self,
        r: Request<pb::PutShardRequest>,
    ) -> Result<Response<pb::PutShardResponse>, Status> {
        let r = r.into_inner();
        if tessera_common::crc32(&r.data) != r.crc {
            return Err(Status::invalid_argument("crc mismatch"));
        }
        self.shards.lock().unwrap().insert(key_of(r.key), r.data);
        Ok(Response::new(pb::PutShardResponse {}))
    }

    async fn get_shard(
        &self,
        r: Request<pb::GetShardRequest>,
    ) -> Result<Response<pb::GetShardResponse>, Status> {
        let key = key_of(r.into_inner().key);
        let data = self.shards.lock().unwrap().get(&key).cloned();
        let data = data.ok_or_else(|| Status::not_found(format!("shard {key:?}")))?;
        Ok(Response::new(pb::GetShardResponse {
            shard_crc: tessera_common::crc32(&data),
            shard_len: data.len() as u32,
            data,
        }))
    }

    async fn get_shards(
        &self,
        _: Request<pb::GetShardsRequest>,
    ) -> Result<Response<pb::GetShardsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_shards(
        &self,
        _: Request<pb::DeleteShardsRequest>,
    ) -> Result<Response<pb::DeleteShardsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_shards(
        &self,
        _: Request<pb::ListShardsRequest>,
    ) -> Result<Response<pb::ListShardsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn stat(
        &self,
        _: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Answers PutShard and GetShard over lean RPC, as a storage node does.
#[derive(Clone)]
struct LeanFake(Arc<FakeNode>);

impl Handler for LeanFake {
    async fn call(&mut self, path: &str, message: Bytes) -> Reply {
        let answer = match path {
            node::PUT_SHARD => match pb::PutShardRequest::decode(message) {
                Ok(r) => self
                    .0
                    .put_shard(Request::new(r))
                    .await
                    .map(|a| Reply::message(&a.into_inner())),
                Err(e) => Err(Status::invalid_argument(e.to_string())),
            },
            node::GET_SHARD => match pb::GetShardRequest::decode(message) {
                Ok(r) => self
                    .0
                    .get_shard(Request::new(r))
                    .await
                    .map(|a| Reply::message(&a.into_inner())),
                Err(e) => Err(Status::invalid_argument(e.to_string())),
            },
            _ => return Reply::unknown_method("fake node", path),
        };
        answer.unwrap_or_else(|s| Reply::status(&s))
    }
}

/// Serves `node` at `addr` (lean RPC; a gRPC router with no service)
/// until the sender is dropped or sent to.
async fn serve_lean(node: Arc<FakeNode>, addr: &str) -> (oneshot::Sender<()>, JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let grpc = transport::grpc::server().add_routes(Default::default());
    let task = tokio::spawn(async move {
        let _ = transport::serve(listener, grpc, OnTasks(LeanFake(node)), async move {
            let _ = stopped.await;
        })
        .await;
    });
    (stop, task)
}

/// Serves `node` over gRPC only, as a node older than lean RPC does.
async fn serve_grpc_only(node: Arc<FakeNode>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let incoming = TcpIncoming::from_listener(listener, true, None).unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(NodeServer::from_arc(node))
            .serve_with_incoming(incoming),
    );
    addr
}

fn key(block: u64) -> ShardKey {
    ShardKey { block, index: 1 }
}

async fn put(link: &NodeLink, block: u64, data: &[u8]) -> Result<(), Status> {
    let crc = tessera_common::crc32(data);
    link.put_shard(key(block), Bytes::copy_from_slice(data), crc, 1)
        .await
}

async fn get(link: &NodeLink, block: u64) -> Result<Fetched, Status> {
    link.get_shard(key(block), 0, 0).await
}

/// `get_shard_now` on a thread of its own, as a FUSE worker calls it.
async fn get_now(link: &Arc<NodeLink>, block: u64) -> Option<Result<Fetched, Status>> {
    let link = link.clone();
    tokio::task::spawn_blocking(move || link.get_shard_now(key(block), 0, 0))
        .await
        .unwrap()
}

fn free_addr() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn shards_go_over_lean_rpc_and_failures_keep_their_status() {
    let node = Arc::new(FakeNode::default());
    let addr = free_addr();
    let (_stop, _task) = serve_lean(node.clone(), &addr).await;
    let link = NodeLink::new(&addr).unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    put(&link, 1, &data).await.unwrap();
    let got = get(&link, 1).await.unwrap();
    assert!(got.data == data);
    assert_eq!(got.shard_crc, tessera_common::crc32(&data));
    let e = get(&link, 2).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("(2, 1)"), "{e}");
    let bad = link
        .put_shard(key(3), Bytes::from_static(b"abc"), 1, 1)
        .await;
    assert_eq!(bad.unwrap_err().code(), Code::InvalidArgument);
    assert!(!link.grpc_only());
}

#[tokio::test]
async fn a_node_without_lean_rpc_is_called_over_grpc() {
    let node = Arc::new(FakeNode::default());
    let addr = serve_grpc_only(node.clone()).await;
    let link = NodeLink::new(&addr).unwrap();
    put(&link, 1, b"old node").await.unwrap();
    assert!(link.grpc_only());
    assert_eq!(&get(&link, 1).await.unwrap().data[..], b"old node");
    assert_eq!(node.shards.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_restarted_node_is_reached_on_a_new_connection() {
    let node = Arc::new(FakeNode::default());
    let addr = free_addr();
    let (stop, task) = serve_lean(node.clone(), &addr).await;
    let link = NodeLink::new(&addr).unwrap();
    put(&link, 1, b"before").await.unwrap();
    stop.send(()).unwrap();
    task.await.unwrap();
    // The pooled connection is closed; the node comes back on its port.
    let (_stop, _task) = serve_lean(node, &addr).await;
    assert_eq!(&get(&link, 1).await.unwrap().data[..], b"before");
    put(&link, 2, b"after").await.unwrap();
    assert!(!link.grpc_only());
}

#[tokio::test]
async fn a_node_nobody_serves_is_unavailable() {
    let link = NodeLink::new(&free_addr()).unwrap();
    let e = put(&link, 1, b"x").await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e}");
    // Down is not "speaks only gRPC": the next call tries lean RPC again.
    assert!(!link.grpc_only());
}

#[tokio::test]
async fn a_node_that_hangs_up_is_not_taken_for_an_old_one() {
    // Accepts and closes every connection, as a node dying or restarting
    // does: no hello, and no gRPC either.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            drop(s);
        }
    });
    let link = NodeLink::new(&addr).unwrap();
    assert!(put(&link, 1, b"x").await.is_err());
    assert!(get(&link, 1).await.is_err());
    // Lean RPC is tried again on the next call, not skipped for a minute.
    assert!(!link.grpc_only());
}

#[tokio::test]
async fn a_read_on_the_callers_thread_answers_or_leaves_the_node_to_the_async_path() {
    // A node speaking lean RPC: its bytes, or the status it failed with.
    let node = Arc::new(FakeNode::default());
    let addr = free_addr();
    let (_stop, _task) = serve_lean(node, &addr).await;
    let link = Arc::new(NodeLink::new(&addr).unwrap());
    put(&link, 1, b"page").await.unwrap();
    let got = get_now(&link, 1).await.expect("a lean node answers");
    assert_eq!(&got.unwrap().data[..], b"page");
    let e = get_now(&link, 2).await.expect("a lean node answers");
    assert_eq!(e.unwrap_err().code(), Code::NotFound);

    // Nobody there: unavailable (the reader makes the node suspect).
    let down = Arc::new(NodeLink::new(&free_addr()).unwrap());
    let e = get_now(&down, 1).await.expect("a failed call");
    assert_eq!(e.unwrap_err().code(), Code::Unavailable);

    // A node older than lean RPC: left to the async path, which calls it
    // over gRPC, both before and after the link has learnt that.
    let old = Arc::new(FakeNode::default());
    let old_link = Arc::new(NodeLink::new(&serve_grpc_only(old).await).unwrap());
    assert!(get_now(&old_link, 1).await.is_none());
    put(&old_link, 1, b"old").await.unwrap();
    assert!(old_link.grpc_only());
    assert!(get_now(&old_link, 1).await.is_none());
    assert_eq!(&get(&old_link, 1).await.unwrap().data[..], b"old");
}
