//! gRPC channels from the metadata service to storage nodes, for its
//! background work (garbage collection, repair). One per node, reconnected
//! after a failure.

use std::{
    collections::{hash_map::Entry, HashMap},
    time::Duration,
};

use tessera_common::NodeId;
use tessera_proto::{pb::node_client::NodeClient, MAX_MESSAGE};
use tonic::transport::{Channel, Endpoint};

#[derive(Default)]
pub struct NodeClients {
    channels: HashMap<NodeId, NodeClient<Channel>>,
}

impl NodeClients {
    /// The client of `node` at `addr`, connecting first if needed.
    pub async fn get(&mut self, node: NodeId, addr: &str) -> Result<NodeClient<Channel>, String> {
        match self.channels.entry(node) {
            Entry::Occupied(e) => Ok(e.get().clone()),
            Entry::Vacant(e) => {
                let channel = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| e.to_string())?
                    .connect_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(30))
                    .connect()
                    .await
                    .map_err(|e| format!("connecting to node {node} at {addr}: {e}"))?;
                let client = NodeClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE);
                Ok(e.insert(client).clone())
            }
        }
    }

    /// Drops the channel of a node that failed, so the next call reconnects.
    pub fn forget(&mut self, node: NodeId) {
        self.channels.remove(&node);
    }
}
