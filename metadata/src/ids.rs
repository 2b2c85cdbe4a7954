//! Id allocation: ids are handed out from a range reserved in the store, so
//! one durable write serves thousands of ids. Ids are never reused; a range
//! reserved by a process that then dies is simply skipped.

use std::sync::Mutex;

use crate::{
    keys,
    store::{transact, MetaStore},
    Result,
};

/// The counters of block and inode ids (a restore moves them: `backup/`).
pub(crate) const BLOCK: &str = "block";
pub(crate) const INODE: &str = "inode";

pub struct IdAllocator {
    key: Vec<u8>,
    batch: u64,
    range: Mutex<(u64, u64)>,
}

impl IdAllocator {
    /// `first` is the smallest id ever handed out.
    pub fn new(name: &str, first: u64, batch: u64) -> Self {
        IdAllocator {
            key: keys::counter(name),
            batch,
            range: Mutex::new((first, first)),
        }
    }

    /// Makes sure `id`, taken from elsewhere (a node that kept its id
    /// across a metadata restore), is never handed out: the high-water
    /// mark moves past it.
    pub fn past(&self, store: &dyn MetaStore, id: u64) -> Result<()> {
        transact(store, |txn| {
            let hwm = self.hwm(txn)?;
            if hwm <= id {
                txn.put(&self.key, &(id + 1).to_be_bytes())?;
            }
            Ok(())
        })
    }

    fn hwm(&self, txn: &mut dyn crate::store::Txn) -> Result<u64> {
        Ok(match txn.get(&self.key)? {
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                crate::MetaError::Corrupt {
                    key: self.key.clone(),
                    why: "counter is not 8 bytes".into(),
                }
            })?),
            None => 0,
        })
    }

    /// Returns the first of `count` consecutive fresh ids.
    pub fn alloc(&self, store: &dyn MetaStore, count: u64) -> Result<u64> {
        let mut range = self.range.lock().expect("id allocator lock");
        if range.1 - range.0 < count {
            let want = count.max(self.batch);
            let floor = range.0;
            let (start, end) = transact(store, |txn| {
                let hwm = self.hwm(txn)?;
                let start = hwm.max(floor);
                txn.put(&self.key, &(start + want).to_be_bytes())?;
                Ok((start, start + want))
            })?;
            *range = (start, end);
        }
        let first = range.0;
        range.0 += count;
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, RocksStore};

    #[test]
    fn ids_are_unique_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..3 {
            let store = RocksStore::open(dir.path()).unwrap();
            let ids = IdAllocator::new("test", 2, 10);
            for _ in 0..25 {
                assert!(seen.insert(ids.alloc(&store, 1).unwrap()));
            }
            let first = ids.alloc(&store, 7).unwrap();
            for i in first..first + 7 {
                assert!(seen.insert(i));
            }
        }
        assert!(seen.iter().all(|&i| i >= 2));
        let mem = MemoryStore::new();
        assert_eq!(IdAllocator::new("x", 5, 4).alloc(&mem, 1).unwrap(), 5);
    }
}
