//! The storage nodes a volume's blocks live on: the placement table of its
//! protection class, a lazily connected link per node, and a short
//! "suspect" list so reads stop waiting on a node that just failed.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use tessera_common::{placement::pg_of, BlockId, NodeId, Protection, ShardKey};

use crate::{meta::MetaClient, node_link::NodeLink, Result};

/// How long a node that failed a request is skipped by readers.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

/// Readers and writers fetch the placement table (and which nodes are down)
/// again at least this often, so moved placement groups and lost nodes are
/// found without waiting for a failure.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(3);

pub(crate) type NodeConn = Arc<NodeLink>;

struct Table {
    epoch: u64,
    fetched: Instant,
    /// Nodes the metadata service reports unreachable (no heartbeats).
    down: HashSet<NodeId>,
    pgs: Vec<Vec<NodeId>>,
    conns: HashMap<NodeId, NodeConn>,
}

pub(crate) struct Nodes {
    meta: MetaClient,
    protection: Protection,
    table: RwLock<Table>,
    /// Nodes that failed a call: readers go around them for a while.
    suspects: Marks,
    /// Nodes that left a write waiting: writers skip them for a while.
    slow: Marks,
}

/// Nodes marked for `SUSPECT_FOR`, each until an instant.
#[derive(Default)]
struct Marks(Mutex<HashMap<NodeId, Instant>>);

impl Marks {
    fn mark(&self, node: NodeId) {
        let until = Instant::now() + SUSPECT_FOR;
        self.0.lock().expect("marks lock").insert(node, until);
    }

    fn has(&self, node: NodeId) -> bool {
        let mut marks = self.0.lock().expect("marks lock");
        match marks.get(&node) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                marks.remove(&node);
                false
            }
            None => false,
        }
    }
}

impl Nodes {
    pub async fn load(meta: MetaClient, protection: Protection) -> Result<Self> {
        let nodes = Nodes {
            meta,
            protection,
            table: RwLock::new(Table {
                epoch: 0,
                fetched: Instant::now(),
                down: HashSet::new(),
                pgs: Vec::new(),
                conns: HashMap::new(),
            }),
            suspects: Marks::default(),
            slow: Marks::default(),
        };
        nodes.refresh().await?;
        Ok(nodes)
    }

    /// Fetches the placement table and node addresses again.
    pub async fn refresh(&self) -> Result<()> {
        let fetched = self.meta.placement(self.protection).await?;
        let mut table = self.table.write().expect("placement lock");
        for n in &fetched.nodes {
            // Keep existing links: they hold connections. A node that
            // moved gets a new one.
            let known = table.conns.get(&n.id).is_some_and(|c| c.addr() == n.addr);
            if !known {
                table.conns.insert(n.id, Arc::new(NodeLink::new(&n.addr)?));
            }
        }
        table.epoch = fetched.epoch;
        table.fetched = Instant::now();
        table.down = fetched
            .nodes
            .iter()
            .filter(|n| !n.reachable)
            .map(|n| n.id)
            .collect();
        table.pgs = fetched.pgs;
        Ok(())
    }

    /// The node of each shard index of `block`.
    pub fn shard_nodes(&self, block: BlockId) -> Vec<NodeId> {
        self.shard_nodes_at(block).0
    }

    /// The node of shard `index` of `block`.
    pub fn shard_node(&self, block: BlockId, index: u8) -> NodeId {
        let table = self.table.read().expect("placement lock");
        let pg = pg_of(block, table.pgs.len() as u32) as usize;
        table.pgs[pg][index as usize]
    }

    /// [`Nodes::shard_nodes`] and the epoch of the table they come from.
    pub fn shard_nodes_at(&self, block: BlockId) -> (Vec<NodeId>, u64) {
        let table = self.table.read().expect("placement lock");
        let pg = pg_of(block, table.pgs.len() as u32) as usize;
        (table.pgs[pg].clone(), table.epoch)
    }

    /// Fetches the table again if the metadata service has a newer epoch
    /// (or the table is older than [`REFRESH_EVERY`]).
    pub async fn refresh_if_stale(&self, current_epoch: u64) -> Result<()> {
        let (epoch, at) = {
            let t = self.table.read().expect("placement lock");
            (t.epoch, t.fetched)
        };
        if current_epoch > epoch || at.elapsed() > REFRESH_EVERY {
            self.refresh().await?;
        }
        Ok(())
    }

    /// Whether the table is recent: [`Nodes::refresh_if_stale`] with no
    /// newer epoch known would not fetch it.
    pub fn is_fresh(&self) -> bool {
        let t = self.table.read().expect("placement lock");
        t.fetched.elapsed() <= REFRESH_EVERY
    }

    pub fn conn(&self, node: NodeId) -> Option<NodeConn> {
        self.table
            .read()
            .expect("placement lock")
            .conns
            .get(&node)
            .cloned()
    }

    /// Tells the metadata service a shard is corrupt, in the background:
    /// it is queued for repair; the read goes on from the other shards.
    pub fn report_corrupt(&self, key: ShardKey) {
        let meta = self.meta.clone();
        tokio::spawn(async move {
            if let Err(e) = meta.report_corrupt(&[key]).await {
                tracing::debug!(%key, error = %e, "reporting a corrupt shard failed");
            }
        });
    }

    pub fn suspect(&self, node: NodeId) {
        self.suspects.mark(node);
    }

    /// `node` left a block's store waiting for its shard: writers leave
    /// it out (its shards go to the repair queue) for `SUSPECT_FOR`, while
    /// the other nodes can make their blocks durable. Readers find out on
    /// their own whether it answers reads.
    pub fn slow(&self, node: NodeId) {
        self.slow.mark(node);
    }

    pub fn is_slow(&self, node: NodeId) -> bool {
        self.slow.has(node)
    }

    /// Whether the metadata service reported `node` down when the table was
    /// last fetched: writers skip it, readers treat it as suspect.
    pub fn is_down(&self, node: NodeId) -> bool {
        self.table
            .read()
            .expect("placement lock")
            .down
            .contains(&node)
    }

    pub fn is_suspect(&self, node: NodeId) -> bool {
        self.is_down(node) || self.suspects.has(node)
    }
}
