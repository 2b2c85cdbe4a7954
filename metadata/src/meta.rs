//! `Meta`: the metadata service's state and the entry point of every domain
//! operation (implemented in cluster.rs, volumes.rs and fs/).

use std::{
    collections::HashMap,
    sync::{atomic::AtomicU64, Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tessera_common::VolumeId;

use crate::{
    cluster::Cluster,
    ids::IdAllocator,
    keys,
    records::{decode, Inode, VolumeRecord},
    store::MetaStore,
    Result,
};

/// Tunables of the metadata service.
#[derive(Clone, Debug)]
pub struct MetaOptions {
    /// A node that has not sent a heartbeat for this long is `down`.
    pub down_after: Duration,
    /// Pause between garbage collection rounds.
    pub gc_interval: Duration,
    /// How repair runs: pause, concurrency, bandwidth limit.
    pub repair: crate::repair::RepairOptions,
    /// A node not heard from for this long is `out`: its placement groups
    /// are remapped and its shards rebuilt elsewhere.
    pub out_after: Duration,
    /// How long a file kept for a client that has it open after its last
    /// name went (an orphan) lives without the client renewing it.
    pub orphan_lease: Duration,
}

impl Default for MetaOptions {
    fn default() -> Self {
        MetaOptions {
            down_after: Duration::from_secs(10),
            gc_interval: Duration::from_secs(5),
            repair: crate::repair::RepairOptions::default(),
            out_after: Duration::from_secs(600),
            orphan_lease: Duration::from_secs(600),
        }
    }
}

/// Bytes and inodes a volume uses. Kept in memory, computed from the inodes
/// at start and updated after each commit: the inodes are the durable truth.
#[derive(Clone, Copy, Debug, Default)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

pub struct Meta {
    pub(crate) store: Arc<dyn MetaStore>,
    pub(crate) cluster: Cluster,
    pub(crate) inode_ids: IdAllocator,
    pub(crate) block_ids: IdAllocator,
    pub(crate) volume_ids: IdAllocator,
    pub(crate) node_ids: IdAllocator,
    pub(crate) usage: Mutex<HashMap<VolumeId, Usage>>,
    pub(crate) repair_stats: RepairStats,
    /// Serializes placement changes.
    pub(crate) rebalancing: Mutex<()>,
    /// Wakes the repair task when work is queued.
    pub(crate) repair_queued: tokio::sync::Notify,
    /// See [`MetaOptions::orphan_lease`].
    pub(crate) orphan_lease: Duration,
}

/// What repair did since the service started, and its recent rate.
#[derive(Debug, Default)]
pub struct RepairStats {
    pub shards: AtomicU64,
    pub bytes: AtomicU64,
    /// Corrupt shards reported by scrubbers and readers.
    pub corrupt: AtomicU64,
    /// (when, bytes) of recent repairs, for the rate.
    recent: Mutex<std::collections::VecDeque<(std::time::Instant, u64)>>,
}

/// The window the repair rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

impl RepairStats {
    pub(crate) fn record(&self, shards: u64, bytes: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.shards.fetch_add(shards, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        let mut r = self.recent.lock().expect("repair stats lock");
        r.push_back((std::time::Instant::now(), bytes));
        while r.front().is_some_and(|(t, _)| t.elapsed() > RATE_WINDOW) {
            r.pop_front();
        }
    }

    /// Bytes per second repaired over the last few seconds.
    pub fn rate(&self) -> u64 {
        let r = self.recent.lock().expect("repair stats lock");
        let Some((first, _)) = r.front() else {
            return 0;
        };
        let span = first.elapsed().max(Duration::from_secs(1));
        if span > RATE_WINDOW {
            return 0;
        }
        let bytes: u64 = r.iter().map(|(_, b)| b).sum();
        (bytes as f64 / span.as_secs_f64()) as u64
    }
}

impl Meta {
    pub fn open(store: Arc<dyn MetaStore>, options: MetaOptions) -> Result<Self> {
        let meta = Meta {
            cluster: Cluster::new(options.down_after),
            inode_ids: IdAllocator::new("inode", 2, 4096),
            block_ids: IdAllocator::new("block", 1, 1 << 16),
            volume_ids: IdAllocator::new("volume", 1, 16),
            node_ids: IdAllocator::new("node", 1, 1),
            usage: Mutex::new(HashMap::new()),
            repair_stats: RepairStats::default(),
            rebalancing: Mutex::new(()),
            repair_queued: tokio::sync::Notify::new(),
            orphan_lease: options.orphan_lease,
            store,
        };
        meta.load_usage()?;
        // Volume deletions a crash cut short.
        meta.resume_purges()?;
        // Placement changes whose moves were not all queued before a crash.
        meta.run_remap_jobs()?;
        Ok(meta)
    }

    fn load_usage(&self) -> Result<()> {
        let mut usage = HashMap::new();
        for vol in self.list_volumes()? {
            let mut u = Usage::default();
            let prefix = keys::in_volume(keys::INODE, vol.id);
            let (mut start, end) = keys::prefix_range(&prefix);
            loop {
                let batch = self.store.begin().scan(&start, &end, 4096)?;
                let Some(last) = batch.last() else { break };
                start = last.0.clone();
                start.push(0);
                for (k, v) in &batch {
                    let inode: Inode = decode(k, v)?;
                    u.inodes += 1;
                    u.bytes += inode.size;
                }
            }
            usage.insert(vol.id, u);
        }
        *self.usage.lock().expect("usage lock") = usage;
        Ok(())
    }

    /// Shards and bytes rebuilt by repair since start.
    pub fn repaired(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.repair_stats.shards.load(Relaxed),
            self.repair_stats.bytes.load(Relaxed),
        )
    }

    pub(crate) fn usage_of(&self, vol: VolumeId) -> Usage {
        self.usage
            .lock()
            .expect("usage lock")
            .get(&vol)
            .copied()
            .unwrap_or_default()
    }

    /// Applies a committed change to a volume's usage.
    pub(crate) fn account(&self, vol: VolumeId, bytes: i64, inodes: i64) {
        let mut all = self.usage.lock().expect("usage lock");
        let u = all.entry(vol).or_default();
        u.bytes = u.bytes.saturating_add_signed(bytes);
        u.inodes = u.inodes.saturating_add_signed(inodes);
    }

    pub(crate) fn volume_by_id(&self, vol: VolumeId) -> Result<VolumeRecord> {
        let key = keys::volume(vol);
        match self.store.begin().get(&key)? {
            Some(v) => decode(&key, &v),
            None => Err(crate::MetaError::not_found(format!("volume {vol}"))),
        }
    }
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}
