//! `MetaStore`: a transactional, ordered key-value store. The file tree, the
//! cluster map and the volumes are written once over this trait; each backend
//! passes the same conformance suite (`conformance.rs`).
//!
//! A transaction's reads see the store as of one moment (RocksDB: a
//! snapshot taken when it begins; etcd: the revision of its first read),
//! which backups and migrations rely on; the in-memory test store's see
//! the newest commits.
//!
//! Transactions are optimistic: reads through `Txn::get` are tracked, and a
//! commit fails with `StoreError::Conflict` if another transaction wrote one
//! of them since; `transact` retries. Range scans are not tracked (phantoms),
//! so code that depends on a range being empty also reads a guard key that
//! every writer to that range writes (for directories: the parent inode).

pub mod copy;
mod etcd;
mod etcd_lead;
pub mod etcd_member;
mod memory;
mod rocks;

#[cfg(test)]
mod conformance;
#[cfg(test)]
pub(crate) mod test_etcd;

pub use etcd::{EtcdStore, EtcdTarget};
pub use memory::MemoryStore;
pub use rocks::RocksStore;

use std::{path::PathBuf, sync::Arc};

use crate::MetaError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("transaction conflict")]
    Conflict,
    #[error("metadata store: {0}")]
    Backend(String),
    /// This process no longer leads (`try_lead`): nothing was committed,
    /// and the call may go to the process that leads now.
    #[error("{0}")]
    Deposed(String),
}

pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Which store a metadata service keeps its state in.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    /// Embedded RocksDB in this directory: one machine.
    Rocks(PathBuf),
    /// An etcd cluster: the metadata outlives any one machine.
    Etcd(EtcdTarget),
}

impl StoreSpec {
    /// `etcd://...`, or the directory a metadata service is given as
    /// `--data` (its RocksDB is `meta.db` in it).
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.starts_with("etcd://") {
            return EtcdTarget::parse(s).map(StoreSpec::Etcd);
        }
        if s.contains("://") {
            return Err(format!(
                "{s:?} is neither etcd://HOST:PORT/PREFIX nor a directory"
            ));
        }
        Ok(StoreSpec::Rocks(PathBuf::from(s).join("meta.db")))
    }

    /// Opens the store (RocksDB: creating its directory; etcd: connecting
    /// and reading once). Blocks: call it off any async runtime's workers.
    pub fn open(&self) -> Result<Arc<dyn MetaStore>, StoreError> {
        Ok(match self {
            StoreSpec::Rocks(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
                Arc::new(RocksStore::open(dir)?)
            }
            StoreSpec::Etcd(target) => Arc::new(EtcdStore::open(target)?),
        })
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Rocks(dir) => write!(f, "RocksDB at {}", dir.display()),
            StoreSpec::Etcd(t) => write!(f, "etcd at {} under {}", t.endpoints.join(","), t.prefix),
        }
    }
}

/// The right to be the one metadata process that serves a store
/// ([`MetaStore::try_lead`]).
pub trait Leadership: Send + Sync {
    /// Whether it still holds; once false, never true again.
    fn held(&self) -> bool;
    /// Gives it up now, so that a successor need not wait for it to run
    /// out. Blocks.
    fn resign(&self) {}
    /// Whether no other process can ever lead (an embedded store's lock).
    fn exclusive(&self) -> bool {
        false
    }
}

/// An embedded store's: its lock lets one process open it at all.
struct Exclusive;

impl Leadership for Exclusive {
    fn held(&self) -> bool {
        true
    }

    fn exclusive(&self) -> bool {
        true
    }
}

pub trait MetaStore: Send + Sync + 'static {
    /// Starts a transaction. Its commit is durable before it returns.
    fn begin(&self) -> Box<dyn Txn + '_>;

    /// Starts a transaction whose commit is applied and visible to every
    /// reader when it returns, survives the process being killed, and is
    /// durable against power loss once `sync` (or any durable commit) has
    /// returned after it; the backend also syncs it within a few
    /// milliseconds on its own. This is what a local file system promises
    /// for a create or rename before fsync. Backends whose every commit is
    /// durable need not override it.
    fn begin_buffered(&self) -> Box<dyn Txn + '_> {
        self.begin()
    }

    /// Makes every commit that returned before this call durable.
    fn sync(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Says that `[start, end)` just lost many keys (a merge of a file's
    /// fragments): a backend whose reads slow down over deleted keys (an
    /// LSM tree's tombstones) may compact the range in the background.
    /// Returns at once.
    fn deleted_many(&self, _start: &[u8], _end: &[u8]) {}

    /// One attempt to become the one metadata process that serves this
    /// store, as `who` (its address): `None` while another one leads.
    /// Blocks. On etcd the lead is a lease kept alive in the background,
    /// and once it is lost every commit fails; an embedded store has one
    /// process by its lock, which always leads.
    fn try_lead(&self, _who: &str) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        Ok(Some(Box::new(Exclusive)))
    }
}

pub trait Txn {
    /// Reads a key; the commit fails if someone else writes it meanwhile.
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Keys in `[start, end)` in order, at most `limit`; sees this
    /// transaction's own writes. Not conflict-tracked.
    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize)
        -> Result<Vec<KeyValue>, StoreError>;
    /// [`Txn::scan`] from the end: the last keys of `[start, end)`, last
    /// first.
    fn scan_back(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError>;
    /// What lies in and just before each of `ranges` (`[start, end)`, in
    /// order, not overlapping): the last key of `[floor, start)`, if any,
    /// then the keys of `[start, end)`; every key once, in order. One pass
    /// where the store can (a file's extents around a flush's pages). Not
    /// conflict-tracked.
    fn scan_around(
        &mut self,
        floor: &[u8],
        ranges: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<KeyValue>, StoreError> {
        scan_around_each(self, floor, ranges)
    }
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError>;
    /// Applies every write atomically and durably, or none.
    fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

/// [`Txn::scan_around`] a range at a time: a back scan and a scan each.
fn scan_around_each<T: Txn + ?Sized>(
    txn: &mut T,
    floor: &[u8],
    ranges: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<KeyValue>, StoreError> {
    let mut out: Vec<KeyValue> = Vec::new();
    for (start, end) in ranges {
        let before = txn.scan_back(floor, start, 1)?;
        for kv in before.into_iter().chain(txn.scan(start, end, usize::MAX)?) {
            if out.last().is_none_or(|(last, _)| *last < kv.0) {
                out.push(kv);
            }
        }
    }
    Ok(out)
}

/// Runs `f` in a transaction, retrying it on conflicts. `f` may run several
/// times, so it must not have effects outside the transaction.
pub fn transact<T>(
    store: &dyn MetaStore,
    f: impl FnMut(&mut dyn Txn) -> Result<T, MetaError>,
) -> Result<T, MetaError> {
    retry(|| store.begin(), f)
}

/// `transact` for changes that may be acknowledged before they are durable
/// (see `MetaStore::begin_buffered`): the file tree's names and attributes.
pub fn transact_buffered<T>(
    store: &dyn MetaStore,
    f: impl FnMut(&mut dyn Txn) -> Result<T, MetaError>,
) -> Result<T, MetaError> {
    retry(|| store.begin_buffered(), f)
}

fn retry<'s, T>(
    begin: impl Fn() -> Box<dyn Txn + 's>,
    mut f: impl FnMut(&mut dyn Txn) -> Result<T, MetaError>,
) -> Result<T, MetaError> {
    let mut attempt = 0u32;
    loop {
        let mut txn = begin();
        let out = f(txn.as_mut());
        let out = match out {
            Ok(v) => txn.commit().map(|()| v).map_err(MetaError::from),
            Err(MetaError::Store(StoreError::Conflict)) => {
                Err(MetaError::Store(StoreError::Conflict))
            }
            Err(e) => return Err(e),
        };
        match out {
            Err(MetaError::Store(StoreError::Conflict)) if attempt < 100 => {
                attempt += 1;
                // Back off a little so the winner can finish; jitter from the
                // attempt count is enough for a handful of racers.
                std::thread::sleep(std::time::Duration::from_micros(
                    50 * u64::from(attempt.min(20)),
                ));
            }
            other => return other,
        }
    }
}
