//! The embedded default backend: RocksDB's optimistic transactions.
//!
//! Every commit is written with `sync = true`: the WAL is fsynced before the
//! commit returns, and RocksDB's write thread folds concurrent commits into
//! one fsync (group commit).

use std::path::Path;

use rocksdb::{
    Direction, ErrorKind, IteratorMode, OptimisticTransactionDB, OptimisticTransactionOptions,
    Options, Transaction, WriteOptions,
};

use super::{KeyValue, MetaStore, StoreError, Txn};

pub struct RocksStore {
    db: OptimisticTransactionDB,
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let db = OptimisticTransactionDB::open(&opts, path)
            .map_err(|e| StoreError::Backend(format!("opening {}: {e}", path.display())))?;
        Ok(RocksStore { db })
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
}

impl MetaStore for RocksStore {
    fn begin(&self) -> Box<dyn Txn + '_> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        let mut to = OptimisticTransactionOptions::default();
        to.set_snapshot(true);
        Box::new(RocksTxn {
            txn: self.db.transaction_opt(&wo, &to),
        })
    }
}

impl Txn for RocksTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.txn.get_for_update(key, true).map_err(backend)
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        for item in self
            .txn
            .iterator(IteratorMode::From(start, Direction::Forward))
        {
            let (k, v) = item.map_err(backend)?;
            if &*k >= end || out.len() >= limit {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.txn.put(key, value).map_err(backend)
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.txn.delete(key).map_err(backend)
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.txn.commit().map_err(backend)
    }
}
