//! The embedded default backend: RocksDB's optimistic transactions.
//!
//! A commit from `begin` is written with `sync = true`: the WAL is fsynced
//! before the commit returns, and RocksDB's write thread folds concurrent
//! commits into one fsync (group commit). A commit from `begin_buffered`
//! is written to the WAL file (so it survives a killed process) without the
//! fsync; a syncer thread fsyncs the WAL within `SYNC_DELAY` of it, and any
//! later durable commit or `sync` covers it too, since the WAL is one
//! ordered log.

mod tidy;

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use rocksdb::{
    Direction, ErrorKind, IteratorMode, OptimisticTransactionDB, OptimisticTransactionOptions,
    Options, ReadOptions, Transaction, WriteOptions,
};

use super::{KeyValue, MetaStore, StoreError, Txn};

/// Longest a buffered commit waits for the syncer's fsync.
const SYNC_DELAY: Duration = Duration::from_millis(10);

pub struct RocksStore {
    db: Arc<OptimisticTransactionDB>,
    syncer: Arc<Syncer>,
    thread: Option<JoinHandle<()>>,
    tidier: tidy::Tidier,
}

/// What the syncer thread waits on, and how far the WAL is known durable.
#[derive(Default)]
struct Syncer {
    state: Mutex<SyncState>,
    wake: Condvar,
    /// WAL syncs done by the thread.
    done: AtomicU64,
    /// Buffered commits begun, counted before they start: until each of
    /// them is covered, `sync` fsyncs (a commit in flight may already be
    /// visible to the caller of `sync`).
    begun: AtomicU64,
    /// Buffered commits that have returned (applied or not), counted as
    /// they return.
    buffered: AtomicU64,
    /// WAL fsyncs `sync` asked for (the others were not needed).
    sync_fsyncs: AtomicU64,
    /// How many of them are known durable: a WAL fsync (or a durable
    /// commit) that succeeded began after the first `synced` of them had
    /// returned.
    synced: AtomicU64,
}

#[derive(Default)]
struct SyncState {
    /// A buffered commit has returned since the last fsync began.
    dirty: bool,
    stop: bool,
}

impl Syncer {
    /// Runs `fsync` (a WAL fsync, or a durable commit), which, if it
    /// succeeds, covers every buffered commit that returned before it
    /// began. One that fails (a commit refused for a conflict never reached
    /// the WAL; a failed WAL flush) covers nothing.
    fn covering<E>(&self, fsync: impl FnOnce() -> Result<(), E>) -> Result<(), E> {
        let before = self.buffered.load(Ordering::Acquire);
        let out = fsync();
        if out.is_ok() {
            self.synced.fetch_max(before, Ordering::AcqRel);
        }
        out
    }

    /// Whether every buffered commit begun so far is durable already.
    fn all_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= self.begun.load(Ordering::Acquire)
    }

    /// Counts a buffered commit that returned, and has the thread sync it.
    fn mark_dirty(&self) {
        self.buffered.fetch_add(1, Ordering::AcqRel);
        let mut st = self.state.lock().expect("syncer lock");
        if !st.dirty {
            st.dirty = true;
            self.wake.notify_one();
        }
    }

    fn run(&self, db: &OptimisticTransactionDB) {
        loop {
            {
                let mut st = self.state.lock().expect("syncer lock");
                while !st.dirty && !st.stop {
                    st = self.wake.wait(st).expect("syncer lock");
                }
                if !st.dirty {
                    return;
                }
            }
            // Let more commits join this fsync.
            std::thread::sleep(SYNC_DELAY);
            self.state.lock().expect("syncer lock").dirty = false;
            match self.covering(|| db.flush_wal(true)) {
                Ok(()) => {
                    self.done.fetch_add(1, Ordering::Relaxed);
                }
                // RocksDB also fails every later write, so no change is
                // acknowledged that cannot be made durable.
                Err(e) => tracing::error!(error = %e, "syncing the metadata WAL failed"),
            }
        }
    }
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let db = OptimisticTransactionDB::open(&opts, path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        let db = Arc::new(db);
        let syncer = Arc::new(Syncer::default());
        let thread = std::thread::Builder::new()
            .name("meta-wal-sync".into())
            .spawn({
                let (db, syncer) = (db.clone(), syncer.clone());
                move || syncer.run(&db)
            })
            .map_err(|e| StoreError::Backend(format!("starting the WAL syncer: {e}")))?;
        let tidier = tidy::Tidier::start(db.clone())
            .map_err(|e| StoreError::Backend(format!("starting the compaction thread: {e}")))?;
        Ok(RocksStore {
            db,
            syncer,
            thread: Some(thread),
            tidier,
        })
    }

    /// WAL fsyncs `sync` has made.
    #[cfg(test)]
    pub(crate) fn sync_fsyncs(&self) -> u64 {
        self.syncer.sync_fsyncs.load(Ordering::Relaxed)
    }

    /// Ranges compacted after a hint.
    #[cfg(test)]
    pub(crate) fn ranges_tidied(&self) -> u64 {
        self.tidier.done.load(Ordering::Relaxed)
    }

    /// Entries (values and tombstones) in the memtable being written.
    #[cfg(test)]
    pub(crate) fn memtable_entries(&self) -> u64 {
        self.db
            .property_int_value("rocksdb.num-entries-active-mem-table")
            .ok()
            .flatten()
            .unwrap_or(u64::MAX)
    }

    /// WAL syncs the background thread has done.
    #[cfg(test)]
    pub(crate) fn background_syncs(&self) -> u64 {
        self.syncer.done.load(Ordering::Relaxed)
    }

    fn transaction(&self, sync: bool) -> Box<dyn Txn + '_> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        let mut to = OptimisticTransactionOptions::default();
        to.set_snapshot(true);
        Box::new(RocksTxn {
            txn: self.db.transaction_opt(&wo, &to),
            sync,
            syncer: &self.syncer,
            wrote: false,
        })
    }
}

impl Drop for RocksStore {
    fn drop(&mut self) {
        self.syncer.state.lock().expect("syncer lock").stop = true;
        self.syncer.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn backend(e: rocksdb::Error) -> StoreError {
    match e.kind() {
        ErrorKind::Busy | ErrorKind::TryAgain => StoreError::Conflict,
        _ => StoreError::Backend(e.to_string()),
    }
}

struct RocksTxn<'a> {
    txn: Transaction<'a, OptimisticTransactionDB>,
    /// Whether the commit fsyncs the WAL (else it is buffered).
    sync: bool,
    syncer: &'a Syncer,
    /// Whether `put` or `delete` was called. A read-only transaction has
    /// nothing to commit: its reads came from one snapshot, and committing
    /// an empty batch with `sync` would still fsync the WAL.
    wrote: bool,
}

impl RocksTxn<'_> {
    /// Reads from the snapshot the transaction took when it began (its own
    /// writes on top), so all its reads see one moment: a file's inode,
    /// extents and inline blocks read together always belong together.
    fn reads(&self) -> ReadOptions {
        let mut o = ReadOptions::default();
        o.set_snapshot(&self.txn.snapshot());
        o
    }
}

impl MetaStore for RocksStore {
    fn begin(&self) -> Box<dyn Txn + '_> {
        self.transaction(true)
    }

    fn begin_buffered(&self) -> Box<dyn Txn + '_> {
        self.transaction(false)
    }

    /// A WAL fsync, unless every buffered commit is durable already (a
    /// durable commit or an earlier sync covered it): an fsync after a
    /// file's data commit then costs nothing more.
    fn sync(&self) -> Result<(), StoreError> {
        if self.syncer.all_synced() {
            return Ok(());
        }
        self.syncer.sync_fsyncs.fetch_add(1, Ordering::Relaxed);
        self.syncer
            .covering(|| self.db.flush_wal(true))
            .map_err(backend)
    }

    fn deleted_many(&self, start: &[u8], end: &[u8]) {
        self.tidier.hint(start, end);
    }
}

impl Txn for RocksTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.txn
            .get_for_update_opt(key, true, &self.reads())
            .map_err(backend)
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut opts = self.reads();
        opts.set_iterate_upper_bound(end.to_vec());
        for item in self
            .txn
            .iterator_opt(IteratorMode::From(start, Direction::Forward), opts)
        {
            let (k, v) = item.map_err(backend)?;
            if &*k >= end || out.len() >= limit {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn scan_back(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut opts = self.reads();
        opts.set_iterate_lower_bound(start.to_vec());
        // Starts at the last key at or before `end`, which is excluded.
        for item in self
            .txn
            .iterator_opt(IteratorMode::From(end, Direction::Reverse), opts)
        {
            let (k, v) = item.map_err(backend)?;
            if &*k >= end {
                continue;
            }
            if &*k < start || out.len() >= limit {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// One iterator for every range: a seek back to each range's start,
    /// then forward through it.
    fn scan_around(
        &mut self,
        floor: &[u8],
        ranges: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<KeyValue>, StoreError> {
        let Some((_, last_end)) = ranges.last() else {
            return Ok(Vec::new());
        };
        let mut opts = self.reads();
        opts.set_iterate_lower_bound(floor.to_vec());
        opts.set_iterate_upper_bound(last_end.clone());
        let mut it = self.txn.raw_iterator_opt(opts);
        let mut out: Vec<KeyValue> = Vec::new();
        for (start, end) in ranges {
            it.seek_for_prev(start);
            if !it.valid() {
                it.status().map_err(backend)?;
                it.seek(start);
            }
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if k >= end.as_slice() {
                    break;
                }
                if out.last().is_none_or(|(last, _)| last.as_slice() < k) {
                    out.push((k.to_vec(), v.to_vec()));
                }
                it.next();
            }
            it.status().map_err(backend)?;
        }
        Ok(out)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn.put(key, value).map_err(backend)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.wrote = true;
        self.txn.delete(key).map_err(backend)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if !self.wrote {
            return Ok(());
        }
        let (sync, syncer) = (self.sync, self.syncer);
        if sync {
            // The WAL is one ordered log: this commit's fsync makes every
            // buffered commit that returned before it durable too.
            syncer.covering(|| self.txn.commit()).map_err(backend)
        } else {
            syncer.begun.fetch_add(1, Ordering::AcqRel);
            let done = self.txn.commit();
            syncer.mark_dirty();
            done.map_err(backend)
        }
    }
}
