//! gRPC channels from the metadata service to storage nodes, for its
//! background work (garbage collection, repair). One per node, reconnected
//! after a failure.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use tessera_common::NodeId;
use tessera_proto::{
    pb::node_client::NodeClient,
    transport::{grpc, settings::MAX_MESSAGE},
};
use tonic::transport::Channel;

/// A call to a node that takes longer than this failed.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
pub struct NodeClients {
    channels: Mutex<HashMap<NodeId, NodeClient<Channel>>>,
}

impl NodeClients {
    /// The client of `node` at `addr`, connecting first if needed.
    pub async fn get(&self, node: NodeId, addr: &str) -> Result<NodeClient<Channel>, String> {
        if let Some(c) = self.channels.lock().expect("channels lock").get(&node) {
            return Ok(c.clone());
        }
        let channel = grpc::channel(addr, Some(CALL_TIMEOUT))
            .await
            .map_err(|e| format!("node {node}: {e}"))?;
        let client = NodeClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        self.channels
            .lock()
            .expect("channels lock")
            .insert(node, client.clone());
        Ok(client)
    }

    /// The client of `node` if it is in `up` (id -> address); a node that
    /// cannot be reached is forgotten so the next call reconnects.
    pub async fn get_up(
        &self,
        up: &HashMap<NodeId, String>,
        node: NodeId,
    ) -> Result<NodeClient<Channel>, String> {
        let addr = up
            .get(&node)
            .ok_or_else(|| format!("node {node} is down"))?;
        self.get(node, addr)
            .await
            .inspect_err(|_| self.forget(node))
    }

    /// Drops the channel of a node that failed, so the next call reconnects.
    pub fn forget(&self, node: NodeId) {
        self.channels.lock().expect("channels lock").remove(&node);
    }
}
