//! In-memory `MetaStore` for fast unit tests. Same semantics as the RocksDB
//! backend (optimistic, conflict-checked), nothing durable.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
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

impl MemTxn<'_> {
    /// Up to `limit` keys of `[start, end)` as this transaction sees them
    /// (its own writes over the store's), from the start or (`back`) from
    /// the end: two ordered ranges merged as they are walked.
    fn range(&self, start: &[u8], end: &[u8], limit: usize, back: bool) -> Vec<KeyValue> {
        let mut out = Vec::new();
        if start >= end || limit == 0 {
            return out;
        }
        let st = self.store.inner.lock().expect("memory store lock");
        let bounds = (
            Bound::Included(start.to_vec()),
            Bound::Excluded(end.to_vec()),
        );
        type Walk<'w, V> = Box<dyn Iterator<Item = (&'w Vec<u8>, &'w V)> + 'w>;
        let (mut data, mut writes): (Walk<'_, Vec<u8>>, Walk<'_, Option<Vec<u8>>>) = if back {
            (
                Box::new(st.data.range(bounds.clone()).rev()),
                Box::new(self.writes.range(bounds).rev()),
            )
        } else {
            (
                Box::new(st.data.range(bounds.clone())),
                Box::new(self.writes.range(bounds)),
            )
        };
        let first = |x: &[u8], y: &[u8]| if back { x > y } else { x < y };
        let (mut a, mut b) = (data.next(), writes.next());
        while out.len() < limit {
            match (a, b) {
                (None, None) => break,
                (Some((k, v)), None) => {
                    out.push((k.clone(), v.clone()));
                    a = data.next();
                }
                (Some((ka, va)), Some((kb, _))) if first(ka, kb) => {
                    out.push((ka.clone(), va.clone()));
                    a = data.next();
                }
                (_, Some((kb, w))) => {
                    if a.is_some_and(|(ka, _)| ka == kb) {
                        a = data.next();
                    }
                    if let Some(v) = w {
                        out.push((kb.clone(), v.clone()));
                    }
                    b = writes.next();
                }
            }
        }
        out
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
        Ok(self.range(start, end, limit, false))
    }

    fn scan_back(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        Ok(self.range(start, end, limit, true))
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
