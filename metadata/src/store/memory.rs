//! In-memory `MetaStore` for fast unit tests. Same semantics as the RocksDB
//! backend (optimistic, conflict-checked), nothing durable.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
};

use super::{KeyValue, MetaStore, StoreError, Txn};

#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<State>,
}

#[derive(Default)]
struct State {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Commit sequence that last wrote each key (deleted keys included).
    written_at: HashMap<Vec<u8>, u64>,
    seq: u64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

struct MemTxn<'a> {
    store: &'a MemoryStore,
    start: u64,
    reads: Vec<Vec<u8>>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl MetaStore for MemoryStore {
    fn begin(&self) -> Box<dyn Txn + '_> {
        let start = self.inner.lock().expect("memory store lock").seq;
        Box::new(MemTxn {
            store: self,
            start,
            reads: Vec::new(),
            writes: BTreeMap::new(),
        })
    }
}

impl Txn for MemTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        self.reads.push(key.to_vec());
        let st = self.store.inner.lock().expect("memory store lock");
        if st.written_at.get(key).is_some_and(|&s| s > self.start) {
            return Err(StoreError::Conflict);
        }
        Ok(st.data.get(key).cloned())
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let st = self.store.inner.lock().expect("memory store lock");
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = st
            .data
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, w) in self.writes.range(start.to_vec()..end.to_vec()) {
            match w {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().take(limit).collect())
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        let mut st = self.store.inner.lock().expect("memory store lock");
        if self
            .reads
            .iter()
            .any(|k| st.written_at.get(k).is_some_and(|&s| s > self.start))
        {
            return Err(StoreError::Conflict);
        }
        st.seq += 1;
        let seq = st.seq;
        for (k, w) in self.writes {
            st.written_at.insert(k.clone(), seq);
            match w {
                Some(v) => st.data.insert(k, v),
                None => st.data.remove(&k),
            };
        }
        Ok(())
    }
}
