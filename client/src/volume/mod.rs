//! `Volume`: one mounted volume as the FUSE adapter sees it.
//!
//! Two kinds of call, for a FUSE worker thread:
//! - names and attributes (`names.rs`, `xattrs.rs`): synchronous, one
//!   metadata call on the calling thread over lean RPC (`NamesClient`);
//! - file data (`read/`, `write/`): async, started on the volume's runtime
//!   because they start background work (stores of blocks, read-ahead);
//!   a FUSE thread waits for them with [`Volume::block_on`].
//!
//! Each file this mount has open or dirty has a [`FileEntry`]: its write
//! buffer and its cached slices.

mod locks;
mod name_cache;
mod names;
mod orphans;
mod xattrs;

pub use locks::{LockAsk, Locked, PageDropper};

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use tessera_common::{Attr, Codec, Ino, VolumeId};
use tokio::sync::Semaphore;

use crate::{
    blocks::BlockIds,
    meta::{MetaClient, NamesClient},
    nodes::Nodes,
    read::{cache::BlockCache, CachedSlices},
    write::{buffer::FileState, merge::Merges, packer::Packer},
    Result,
};

#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// Blocks being stored at once, over all files (memory bound: 4 MiB each).
    pub max_inflight_blocks: usize,
    /// Decoded blocks kept for degraded reads.
    pub cached_blocks: usize,
    /// Keep blocks of at most `INLINE_MAX` bytes in the metadata service
    /// (if it can) instead of as stripes on the storage nodes.
    pub inline_blocks: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            max_inflight_blocks: 12,
            cached_blocks: 8,
            inline_blocks: true,
        }
    }
}

/// What this mount knows of one file it has open or dirty.
#[derive(Default)]
pub(crate) struct FileEntry {
    pub state: Mutex<FileState>,
    /// Where the last read ended: a read starting there is sequential and
    /// reads ahead.
    pub read_end: AtomicU64,
    /// Committed slices, and a generation bumped by every change, so a fetch
    /// that raced with a commit is not cached.
    pub slices: Mutex<(u64, Option<Arc<CachedSlices>>)>,
    /// The file's last change by another mount that this mount knows of
    /// (from its last lock): a lock granted with a later one drops this
    /// mount's cached view of the file (`locks.rs`).
    pub seen_change: AtomicU64,
    /// Bytes committed as deferred writes and not yet moved to the nodes,
    /// and whether they are being moved (`write/deferred.rs`).
    pub deferred: AtomicU64,
    /// The file's size after this mount's last commit of it.
    pub committed_size: AtomicU64,
    pub destaging: std::sync::atomic::AtomicBool,
}

pub(crate) struct Inner {
    pub meta: MetaClient,
    pub names: NamesClient,
    pub packer: Packer,
    /// Files whose fragments to merge once quiet (`write/merge.rs`).
    pub merges: Merges,
    /// The runtime the volume was opened on, for the data path and its
    /// background tasks.
    pub rt: tokio::runtime::Handle,
    /// This mount's session, which holds its orphans (see `orphans.rs`).
    pub session: u64,
    pub orphans: Mutex<HashSet<Ino>>,
    pub renewing: std::sync::atomic::AtomicBool,
    pub locks: locks::Locks,
    pub id: VolumeId,
    pub name: String,
    pub codec: Codec,
    pub min_durable: usize,
    pub nodes: Nodes,
    pub cache: BlockCache,
    pub block_ids: BlockIds,
    pub inflight: Arc<Semaphore>,
    pub files: Mutex<HashMap<Ino, Arc<FileEntry>>>,
    /// The metadata service keeps inline blocks (`INLINE_MAX`).
    pub inline_blocks: bool,
    /// The metadata service applies merges (`write/merge.rs`).
    pub merges_applied: bool,
    /// Small flushes are inline blocks (`write/deferred.rs`).
    pub deferred_writes: bool,
    /// Pages of names looked up (`name_cache.rs`), while the metadata
    /// service answers for pages.
    pub name_cache: name_cache::NameCache,
    pub paged_lookups: std::sync::atomic::AtomicBool,
    pub syncs: Syncs,
    pub removals: orphans::Removals,
}

/// How far this mount's changes of names and attributes are known
/// durable: they are acknowledged before the metadata service's fsync, and
/// a durable call (a data commit, a sync) covers every one acknowledged
/// before it began.
#[derive(Default)]
pub(crate) struct Syncs {
    /// Changes made, counted as each returns (applied or not).
    changes: AtomicU64,
    /// How many of them a durable call covered.
    durable: AtomicU64,
}

impl Syncs {
    pub fn changed(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Before a durable call: the changes it covers if it succeeds.
    pub fn begin(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// A durable call begun at `covered` succeeded.
    pub fn durable(&self, covered: u64) {
        self.durable.fetch_max(covered, Ordering::AcqRel);
    }

    pub fn all_durable(&self) -> bool {
        self.durable.load(Ordering::Acquire) >= self.changes.load(Ordering::Acquire)
    }
}

#[derive(Clone)]
pub struct Volume {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Volume {
    /// Opens volume `name` through the metadata service at `meta_addr`,
    /// on the current runtime.
    pub async fn open(meta_addr: &str, name: &str, options: VolumeOptions) -> Result<Volume> {
        let meta = MetaClient::connect(meta_addr).await?;
        let v = meta.volume(name).await?;
        let nodes = Nodes::load(meta.clone(), v.protection).await?;
        Ok(Volume {
            inner: Arc::new(Inner {
                packer: Packer::default(),
                merges: Merges::default(),
                rt: tokio::runtime::Handle::current(),
                session: orphans::new_session(),
                orphans: Mutex::default(),
                renewing: Default::default(),
                locks: Default::default(),
                block_ids: BlockIds::new(meta.clone()),
                names: NamesClient::new(meta_addr),
                meta,
                id: v.id,
                name: v.name,
                codec: Codec::new(v.protection),
                min_durable: v.min_durable,
                nodes,
                cache: BlockCache::new(options.cached_blocks),
                inflight: Arc::new(Semaphore::new(options.max_inflight_blocks.max(1))),
                files: Mutex::new(HashMap::new()),
                inline_blocks: v.inline_blocks && options.inline_blocks,
                merges_applied: v.merges,
                deferred_writes: v.deferred_writes
                    && v.merges
                    && v.inline_blocks
                    && options.inline_blocks,
                name_cache: Default::default(),
                paged_lookups: true.into(),
                syncs: Syncs::default(),
                removals: Default::default(),
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn id(&self) -> VolumeId {
        self.inner.id
    }

    /// Runs a call of the data path to completion on this thread, which
    /// must not be one of the runtime's (a FUSE worker thread).
    pub fn block_on<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.inner.rt.block_on(f)
    }

    pub(crate) fn entry(&self, ino: Ino) -> Arc<FileEntry> {
        self.inner
            .files
            .lock()
            .expect("files lock")
            .entry(ino)
            .or_default()
            .clone()
    }

    pub(crate) fn existing_entry(&self, ino: Ino) -> Option<Arc<FileEntry>> {
        self.inner
            .files
            .lock()
            .expect("files lock")
            .get(&ino)
            .cloned()
    }

    /// Grows a committed size by this mount's uncommitted writes.
    fn with_pending(&self, mut a: Attr) -> Attr {
        if let Some(e) = self.existing_entry(a.ino) {
            let st = e.state.lock().expect("file state lock");
            a.size = a.size.max(st.pending_end());
        }
        a
    }

    /// Handle `fh` of a file is opened (see `open_file`): later reads see
    /// what other clients committed before (close-to-open consistency).
    fn register_handle(&self, ino: Ino, fh: u64) {
        self.inner.name_cache.changed(ino);
        let e = self.entry(ino);
        e.state.lock().expect("file state lock").handles.opened(fh);
        self.invalidate(ino);
    }

    /// Forgets a file nothing is buffered for, open or to report.
    pub(crate) fn forget_if_idle(&self, ino: Ino) {
        let mut files = self.inner.files.lock().expect("files lock");
        if files
            .get(&ino)
            .is_some_and(|e| e.state.lock().expect("file state lock").idle())
        {
            files.remove(&ino);
        }
    }

    /// File handle `fh` is closed (after `flush`). The last handle of a
    /// file that lost its last name meanwhile takes the file with it.
    pub async fn release_file(&self, ino: Ino, fh: u64) -> Result<()> {
        // Its size and times as this mount's commits left them are newer
        // than any page of names fetched while it was open.
        self.inner.name_cache.changed(ino);
        let orphan_closed = {
            let mut files = self.inner.files.lock().expect("files lock");
            let Some(e) = files.get(&ino) else {
                return Ok(());
            };
            let (idle, orphan_closed) = {
                let mut st = e.state.lock().expect("file state lock");
                st.handles.closed(fh);
                (st.idle(), st.orphan && st.handles.opens() == 0)
            };
            if idle {
                files.remove(&ino);
            }
            orphan_closed
        };
        if orphan_closed {
            self.release_orphan(ino).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod syncs_tests {
    use super::Syncs;

    #[test]
    fn a_durable_call_covers_the_changes_acknowledged_before_it_began() {
        let s = Syncs::default();
        assert!(s.all_durable(), "nothing changed yet");
        s.changed();
        assert!(!s.all_durable());
        let commit = s.begin();
        // A change that returns while the commit is in flight is not
        // covered by it.
        s.changed();
        s.durable(commit);
        assert!(!s.all_durable());
        let sync = s.begin();
        s.durable(sync);
        assert!(s.all_durable());
        // A slow call that began earlier does not lower what is known.
        s.durable(commit);
        assert!(s.all_durable());
    }
}
