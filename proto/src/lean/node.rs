//! The Node service over lean RPC: its method names, and a [`Handler`]
//! that dispatches them straight to a [`Node`] implementation. A shard
//! arrives in the buffer its frame was read into and is handed on from
//! there; a shard read goes from the implementation's buffer to the socket.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use super::server::{Handler, Reply};
use crate::pb::node_server::Node;

pub const PUT_SHARD: &str = "/tessera.v1.Node/PutShard";
pub const GET_SHARD: &str = "/tessera.v1.Node/GetShard";
pub const DELETE_SHARDS: &str = "/tessera.v1.Node/DeleteShards";
pub const LIST_SHARDS: &str = "/tessera.v1.Node/ListShards";
pub const STAT: &str = "/tessera.v1.Node/Stat";
/// Field numbers of the shard bytes in PutShardRequest and
/// GetShardResponse.
pub const PUT_DATA_TAG: u32 = 2;
pub const GET_DATA_TAG: u32 = 1;

/// Serves lean calls with `S`, as `NodeServer` serves gRPC ones.
pub struct NodeHandler<S>(pub Arc<S>);

impl<S> Clone for NodeHandler<S> {
    fn clone(&self) -> Self {
        NodeHandler(self.0.clone())
    }
}

impl<S: Node> Handler for NodeHandler<S> {
    async fn call(&mut self, path: &str, message: Bytes) -> Reply {
        let node = &*self.0;
        let answer = match path {
            PUT_SHARD => unary(message, |r| node.put_shard(r)).await.map(reply),
            GET_SHARD => unary(message, |r| node.get_shard(r)).await.map(|mut a| {
                let data = std::mem::take(&mut a.data);
                Reply::message_with_bytes(&a, GET_DATA_TAG, data)
            }),
            DELETE_SHARDS => unary(message, |r| node.delete_shards(r)).await.map(reply),
            LIST_SHARDS => unary(message, |r| node.list_shards(r)).await.map(reply),
            STAT => unary(message, |r| node.stat(r)).await.map(reply),
            _ => Err(Status::unimplemented(format!(
                "a storage node has no method {path:?}"
            ))),
        };
        answer.unwrap_or_else(|s| Reply::status(&s))
    }
}

fn reply(m: impl Message) -> Reply {
    Reply::message(&m)
}

/// Decodes the request, makes the call, returns its answer.
async fn unary<Q, A, F>(message: Bytes, call: impl FnOnce(Request<Q>) -> F) -> Result<A, Status>
where
    Q: Message + Default,
    F: Future<Output = Result<Response<A>, Status>>,
{
    let q = Q::decode(message).map_err(|e| {
        let name = std::any::type_name::<Q>().rsplit("::").next().unwrap_or("");
        Status::invalid_argument(format!("malformed {name}: {e}"))
    })?;
    Ok(call(Request::new(q)).await?.into_inner())
}
