//! The Node service over lean RPC: its method names, and a [`Handler`]
//! that dispatches them straight to a [`Node`] implementation. A shard
//! arrives in the buffer its frame was read into and is handed on from
//! there; a shard read goes from the implementation's buffer to the socket.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use prost::Message;
use tonic::{Request, Response, Status};

use tessera_proto::{
    lean::node::*,
    pb::node_server::Node,
    transport::{Handler, Reply},
};

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
            _ => return Reply::unknown_method("storage node", path),
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
