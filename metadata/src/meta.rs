//! `Meta`: the metadata service's state, and the way into each of its
//! domains. Every operation lives with its domain and is reached through
//! one handle:
//!
//! | handle | module | what |
//! |---|---|---|
//! | [`Meta::tree`] | `fs/` | names, attributes, xattrs, orphans |
//! | [`Meta::files`] | `data/` | a file's slices: reads, commits, block ids |
//! | [`Meta::volumes`] | `volumes/` | volumes, their settings and usage |
//! | [`Meta::cluster`] | `cluster/` | nodes, membership, placement, remaps |
//! | [`Meta::repair`] | `repair/` | the repair queue and its figures |
//! | [`Meta::gc`] | `gc/` | blocks whose shards are to be deleted |
//!
//! Every call is synchronous and may wait on the store: the gRPC and lean
//! RPC edges (`service/`) run them on blocking threads, never on a
//! runtime's worker.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{
    cluster::{ClusterMap, Liveness},
    data::FileData,
    fs::FileTree,
    gc::GcQueue,
    ids::IdAllocator,
    repair::{RepairOptions, RepairQueue, RepairStats},
    store::{transact, MetaStore},
    volumes::{usage::Usage, Volumes},
    MetaError, Result,
};

/// Tunables of the metadata service.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// A node that has not sent a heartbeat for this long is `down`.
    pub down_after: Duration,
    /// Pause between garbage collection rounds.
    pub gc_interval: Duration,
    /// How long a freed block's shards are kept before garbage collection
    /// deletes them: longer than the time between metadata backups, and a
    /// restore finds every block its files name (`backup/`).
    pub gc_delay: Duration,
    /// How repair runs: pause, concurrency, bandwidth limit.
    pub repair: RepairOptions,
    /// A node not heard from for this long is `out`: its placement groups
    /// are remapped and its shards rebuilt elsewhere.
    pub out_after: Duration,
    /// How long a file kept for a client that has it open after its last
    /// name went (an orphan) lives without the client renewing it.
    pub orphan_lease: Duration,
    /// How long a mount's advisory locks last without it renewing them
    /// (it died or lost the service): then other mounts may take them.
    pub lock_lease: Duration,
}

impl Default for MetaOptions {
    fn default() -> Self {
        MetaOptions {
            down_after: Duration::from_secs(10),
            gc_interval: Duration::from_secs(5),
            gc_delay: Duration::ZERO,
            repair: RepairOptions::default(),
            out_after: Duration::from_secs(600),
            orphan_lease: Duration::from_secs(600),
            lock_lease: Duration::from_secs(30),
        }
    }
}

/// Id allocators, each over its own counter in the store.
pub(crate) struct Ids {
    pub inode: IdAllocator,
    pub block: IdAllocator,
    pub volume: IdAllocator,
    pub node: IdAllocator,
}

pub struct Meta {
    pub(crate) store: Arc<dyn MetaStore>,
    pub(crate) options: MetaOptions,
    pub(crate) ids: Ids,
    /// What each volume uses (`volumes/usage.rs`).
    pub(crate) usage: Usage,
    /// Heartbeats (`cluster/`).
    pub(crate) liveness: Liveness,
    /// Serializes placement changes.
    pub(crate) rebalancing: Mutex<()>,
    pub(crate) repair_stats: RepairStats,
    /// Wakes the repair task when work is queued.
    pub(crate) repair_queued: tokio::sync::Notify,
    /// Wakes the garbage collection task when work is left for it.
    pub(crate) gc_wanted: tokio::sync::Notify,
    /// When this process opened the store: for a lease after it, every
    /// session's locks count as alive, so that mounts renew them after a
    /// restart (`fs/locks.rs`).
    pub(crate) started_ns: i64,
    /// Online backups being read (`backup/`).
    pub(crate) backups: crate::backup::Backups,
    /// The cluster's identity, made when its store was first opened.
    pub(crate) cluster_id: String,
    /// Where garbage collection with a delay reads its queue on from.
    pub(crate) gc_cursor: Mutex<Vec<u8>>,
}

impl Meta {
    /// Opens the service over `store`, finishing what was left to do:
    /// removed volumes' trees, releases and trims of large files, remaps.
    pub fn open(store: Arc<dyn MetaStore>, options: MetaOptions) -> Result<Self> {
        let meta = Meta {
            ids: Ids {
                inode: IdAllocator::new(crate::ids::INODE, 2, 4096),
                block: IdAllocator::new(crate::ids::BLOCK, 1, 1 << 16),
                volume: IdAllocator::new("volume", 1, 16),
                node: IdAllocator::new("node", 1, 1),
            },
            usage: Usage::default(),
            liveness: Liveness::new(options.down_after),
            rebalancing: Mutex::new(()),
            repair_stats: RepairStats::default(),
            repair_queued: tokio::sync::Notify::new(),
            gc_wanted: tokio::sync::Notify::new(),
            started_ns: now_ns(),
            backups: Default::default(),
            gc_cursor: Mutex::new(Vec::new()),
            cluster_id: cluster_id(store.as_ref())?,
            options,
            store,
        };
        crate::data::migrate::convert_chunk_lists(meta.store())?;
        meta.gc().finish_deferred()?;
        meta.volumes().load_usage()?;
        meta.cluster().run_remap_jobs()?;
        Ok(meta)
    }

    pub fn options(&self) -> &MetaOptions {
        &self.options
    }

    pub(crate) fn store(&self) -> &dyn MetaStore {
        self.store.as_ref()
    }

    /// Names, attributes, xattrs and orphans of every volume's tree.
    pub fn tree(&self) -> FileTree<'_> {
        FileTree { meta: self }
    }

    /// Where files' bytes live: slices, commits, block ids.
    pub fn files(&self) -> FileData<'_> {
        FileData { meta: self }
    }

    pub fn volumes(&self) -> Volumes<'_> {
        Volumes { meta: self }
    }

    /// Storage nodes, their membership, and placement.
    pub fn cluster(&self) -> ClusterMap<'_> {
        ClusterMap { meta: self }
    }

    pub fn repair(&self) -> RepairQueue<'_> {
        RepairQueue { meta: self }
    }

    pub fn gc(&self) -> GcQueue<'_> {
        GcQueue { meta: self }
    }

    /// The cluster's identity, which its backups carry.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The next page of an online backup (`backup/`): session 0 starts
    /// one.
    pub fn backup_page(&self, session: u64, page: u64) -> Result<(u64, crate::backup::Page)> {
        self.backups.page(&self.store, session, page)
    }
}

/// The cluster id in `store`, made (random) when there is none yet.
fn cluster_id(store: &dyn MetaStore) -> Result<String> {
    let key = crate::keys::cluster_id();
    let made = format!("{:032x}", rand::random::<u128>());
    let id = transact(store, |t| match t.get(&key)? {
        Some(id) => Ok(id),
        None => {
            t.put(&key, made.as_bytes())?;
            Ok(made.clone().into_bytes())
        }
    })?;
    String::from_utf8(id).map_err(|_| MetaError::Corrupt {
        key,
        why: "the cluster id is not text".into(),
    })
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
