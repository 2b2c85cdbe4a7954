//! The Node service over lean RPC: its method names dispatched straight
//! to [`NodeCalls`], on the connection's own thread (`OnThreads`): a shard
//! is stored or read by the thread that read the request and writes the
//! answer, with no hop to a pool and back. A shard arrives in the buffer
//! its frame was read into and is handed on from there; a shard read goes
//! from the store's buffer to the socket.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use tonic::Status;

use tessera_proto::{
    lean::node::*,
    transport::settings::GET_SHARDS_MAX_MESSAGE,
    transport::{BlockingHandler, Reply},
};

use crate::service::NodeCalls;

/// Serves lean calls with the node's calls.
pub struct NodeHandler(pub Arc<NodeCalls>);

impl BlockingHandler for NodeHandler {
    fn call(&self, path: &str, message: Bytes) -> Reply {
        let node = &*self.0;
        match path {
            PUT_SHARD => serve(node, message, NodeCalls::put_shard, reply),
            GET_SHARD => serve(node, message, NodeCalls::get_shard, |mut a| {
                let data = std::mem::take(&mut a.data);
                Reply::message_with_bytes(&a, GET_DATA_TAG, data)
            }),
            // Refused before decoding: a message of empty entries would
            // decode to millions of them.
            GET_SHARDS if message.len() > GET_SHARDS_MAX_MESSAGE => {
                Reply::status(&Status::invalid_argument(format!(
                    "GetShards: a {} byte request, at most {GET_SHARDS_MAX_MESSAGE}",
                    message.len()
                )))
            }
            GET_SHARDS => serve(node, message, NodeCalls::get_shards, reply),
            DELETE_SHARDS => serve(node, message, NodeCalls::delete_shards, reply),
            LIST_SHARDS => serve(node, message, NodeCalls::list_shards, reply),
            STAT => serve(node, message, NodeCalls::stat, reply),
            _ => Reply::unknown_method("storage node", path),
        }
    }
}

fn reply(m: impl Message) -> Reply {
    Reply::message(&m)
}

/// Decodes the request, makes the call, answers with its answer (`to`) or
/// the status it failed with.
fn serve<Q: Message + Default, A>(
    node: &NodeCalls,
    message: Bytes,
    call: fn(&NodeCalls, Q) -> crate::error::Result<A>,
    to: impl FnOnce(A) -> Reply,
) -> Reply {
    let q = match Q::decode(message) {
        Ok(q) => q,
        Err(e) => {
            let name = std::any::type_name::<Q>().rsplit("::").next().unwrap_or("");
            return Reply::status(&Status::invalid_argument(format!("malformed {name}: {e}")));
        }
    };
    match call(node, q) {
        Ok(a) => to(a),
        Err(e) => Reply::status(&Status::from(e)),
    }
}
