use std::{collections::HashMap, sync::Arc};

use tessera_proto::{
    lean::{node::NodeHandler, server::accept},
    pb::node_server::{Node, NodeServer},
};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
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

/// Serves `node` over lean RPC only (gRPC connections are dropped) at
/// `addr` until the sender is dropped or sent true.
async fn serve_lean(node: Arc<FakeNode>, addr: &str) -> (watch::Sender<bool>, JoinHandle<()>) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let (_grpc, task) = accept(listener, NodeHandler(node), stopped);
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

fn put(block: u64, data: &[u8]) -> pb::PutShardRequest {
    pb::PutShardRequest {
        key: Some(pb::ShardKey { block, index: 1 }),
        data: Bytes::copy_from_slice(data),
        crc: tessera_common::crc32(data),
        epoch: 1,
    }
}

fn get(block: u64) -> pb::GetShardRequest {
    pb::GetShardRequest {
        key: Some(pb::ShardKey { block, index: 1 }),
        offset: 0,
        len: 0,
    }
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
    link.put_shard(put(1, &data)).await.unwrap();
    let got = link.get_shard(get(1)).await.unwrap();
    assert!(got.data == data);
    assert_eq!(got.shard_crc, tessera_common::crc32(&data));
    let e = link.get_shard(get(2)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("(2, 1)"), "{e}");
    let mut bad = put(3, b"abc");
    bad.crc ^= 1;
    assert_eq!(
        link.put_shard(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    assert!(!link.grpc_only());
    // Calls one after another share one connection.
    assert_eq!(link.idle.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_node_without_lean_rpc_is_called_over_grpc() {
    let node = Arc::new(FakeNode::default());
    let addr = serve_grpc_only(node.clone()).await;
    let link = NodeLink::new(&addr).unwrap();
    link.put_shard(put(1, b"old node")).await.unwrap();
    assert!(link.grpc_only());
    assert_eq!(&link.get_shard(get(1)).await.unwrap().data[..], b"old node");
    assert_eq!(node.shards.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_restarted_node_is_reached_on_a_new_connection() {
    let node = Arc::new(FakeNode::default());
    let addr = free_addr();
    let (stop, task) = serve_lean(node.clone(), &addr).await;
    let link = NodeLink::new(&addr).unwrap();
    link.put_shard(put(1, b"before")).await.unwrap();
    stop.send(true).unwrap();
    task.await.unwrap();
    // The pooled connection is closed; the node comes back on its port.
    let (_stop, _task) = serve_lean(node, &addr).await;
    assert_eq!(&link.get_shard(get(1)).await.unwrap().data[..], b"before");
    link.put_shard(put(2, b"after")).await.unwrap();
    assert!(!link.grpc_only());
}

#[tokio::test]
async fn a_node_nobody_serves_is_unavailable() {
    let link = NodeLink::new(&free_addr()).unwrap();
    let e = link.put_shard(put(1, b"x")).await.unwrap_err();
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
    assert!(link.put_shard(put(1, b"x")).await.is_err());
    assert!(link.get_shard(get(1)).await.is_err());
    // Lean RPC is tried again on the next call, not skipped for a minute.
    assert!(!link.grpc_only());
}
