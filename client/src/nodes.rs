//! The storage nodes a volume's blocks live on: the placement table of its
//! protection class, a lazily connected channel per node, and a short
//! "suspect" list so reads stop waiting on a node that just failed.

use std::{
    collections::HashMap,
    sync::{Mutex, RwLock},
    time::{Duration, Instant},
};

use tessera_common::{placement::pg_of, BlockId, NodeId, Protection};
use tessera_proto::{
    pb::{self, node_client::NodeClient},
    MAX_MESSAGE,
};
use tonic::transport::Channel;

use crate::{meta::endpoint, MetaConn, Result};

/// How long a node that failed a request is skipped by readers.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

pub(crate) type NodeConn = NodeClient<Channel>;

struct Table {
    epoch: u64,
    pgs: Vec<Vec<NodeId>>,
    conns: HashMap<NodeId, NodeConn>,
}

pub(crate) struct Nodes {
    meta: MetaConn,
    protection: Protection,
    table: RwLock<Table>,
    suspects: Mutex<HashMap<NodeId, Instant>>,
}

impl Nodes {
    pub async fn load(meta: MetaConn, protection: Protection) -> Result<Self> {
        let nodes = Nodes {
            meta,
            protection,
            table: RwLock::new(Table {
                epoch: 0,
                pgs: Vec::new(),
                conns: HashMap::new(),
            }),
            suspects: Mutex::new(HashMap::new()),
        };
        nodes.refresh().await?;
        Ok(nodes)
    }

    /// Fetches the placement table and node addresses again.
    pub async fn refresh(&self) -> Result<()> {
        let resp = self
            .meta
            .clone()
            .get_placement(pb::GetPlacementRequest {
                k: self.protection.k.into(),
                m: self.protection.m.into(),
            })
            .await?
            .into_inner();
        let mut conns = HashMap::new();
        for n in &resp.nodes {
            let channel = endpoint(&n.addr)?.connect_lazy();
            conns.insert(
                n.id,
                NodeClient::new(channel)
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            );
        }
        let width = self.protection.width();
        if resp.pgs.is_empty() || resp.pgs.iter().any(|p| p.nodes.len() != width) {
            return Err(crate::ClientError::Invalid(format!(
                "placement table for {} is malformed",
                self.protection
            )));
        }
        let mut table = self.table.write().expect("placement lock");
        // Keep existing channels: they may be mid-connection.
        for (id, conn) in conns {
            table.conns.entry(id).or_insert(conn);
        }
        table.epoch = resp.epoch;
        table.pgs = resp.pgs.into_iter().map(|p| p.nodes).collect();
        Ok(())
    }

    pub fn epoch(&self) -> u64 {
        self.table.read().expect("placement lock").epoch
    }

    /// The node of each shard index of `block`.
    pub fn shard_nodes(&self, block: BlockId) -> Vec<NodeId> {
        let table = self.table.read().expect("placement lock");
        let pg = pg_of(block, table.pgs.len() as u32) as usize;
        table.pgs[pg].clone()
    }

    pub fn conn(&self, node: NodeId) -> Option<NodeConn> {
        self.table
            .read()
            .expect("placement lock")
            .conns
            .get(&node)
            .cloned()
    }

    pub fn suspect(&self, node: NodeId) {
        self.suspects
            .lock()
            .expect("suspects lock")
            .insert(node, Instant::now() + SUSPECT_FOR);
    }

    pub fn is_suspect(&self, node: NodeId) -> bool {
        let mut s = self.suspects.lock().expect("suspects lock");
        match s.get(&node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                s.remove(&node);
                false
            }
            None => false,
        }
    }
}
