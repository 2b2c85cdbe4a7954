//! Copying a whole metadata store into another, of any backend: what
//! `tessera meta migrate` does to move a cluster that outgrew one machine
//! from RocksDB onto etcd (or back).
//!
//! The source is read in one transaction, so the copy is of one moment
//! (no metadata service may be running on it); the destination must be
//! empty, and is written in batches that fit etcd's default limits (128
//! operations, 1.5 MiB a request). A marker key is written first and
//! removed last, once both sides have been read again and their keys
//! counted and checksummed alike: a metadata service refuses to start on
//! a store with the marker (a copy cut short would be missing keys, the
//! id allocators' among them).

use super::{MetaStore, StoreError, Txn};

/// Keys read per scan of the source.
const PAGE: usize = 1024;
/// Most keys and bytes one write transaction of the destination holds.
const BATCH_KEYS: usize = 100;
const BATCH_BYTES: usize = 1 << 20;

/// Past every key of every table (keys begin with an ASCII letter).
const END: [u8; 1] = [0xff];

/// Present while a copy into the store is unfinished. `~` is no table's
/// prefix (`keys.rs`).
pub(crate) const COPYING: &[u8] = b"~copy-unfinished";

/// Whether `store` holds a copy cut short: a metadata service must not
/// start on it.
pub fn unfinished(store: &dyn MetaStore) -> Result<bool, StoreError> {
    Ok(store.begin().get(COPYING)?.is_some())
}

/// What a store holds, summed up: its number of keys, their bytes, and a
/// CRC32 over every key and value in order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub keys: u64,
    pub bytes: u64,
    pub crc: u32,
}

/// Sums up keys and values given in order into a [`Summary`].
#[derive(Clone, Default)]
pub struct Summer {
    crc: crc32fast::Hasher,
    keys: u64,
    bytes: u64,
}

impl Summer {
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        for part in [key, value] {
            self.crc.update(&(part.len() as u32).to_be_bytes());
            self.crc.update(part);
        }
        self.keys += 1;
        self.bytes += (key.len() + value.len()) as u64;
    }

    pub fn finish(self) -> Summary {
        Summary {
            keys: self.keys,
            bytes: self.bytes,
            crc: self.crc.finalize(),
        }
    }
}

/// Calls `each` with every key and value of `store` but its own (`~`),
/// in order, all read in one transaction: one moment of the store.
pub(crate) fn walk(
    store: &dyn MetaStore,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut t = store.begin();
    let mut from = Vec::new();
    loop {
        let page = t.scan(&from, &END, PAGE)?;
        for (k, v) in &page {
            // `~` keys are the store's own (the copy mark, the etcd
            // leader key), not the cluster's.
            if !k.starts_with(b"~") {
                each(k, v)?;
            }
        }
        match page.last() {
            Some((k, _)) if page.len() == PAGE => {
                from = k.clone();
                from.push(0);
            }
            _ => return Ok(()),
        }
    }
}

/// Counts and checksums every key of `store`.
pub fn summarize(store: &dyn MetaStore) -> Result<Summary, StoreError> {
    let mut sum = Summer::default();
    walk(store, |k, v| {
        sum.add(k, v);
        Ok(())
    })?;
    Ok(sum.finish())
}

/// Writes a whole store's keys into an empty one: [`Loader::start`]
/// checks that it is empty and marks it unfinished, [`Loader::put`] adds
/// keys in batches, [`Loader::finish`] checks what arrived and removes
/// the mark.
pub(crate) struct Loader<'a> {
    to: &'a dyn MetaStore,
    batch: Vec<(Vec<u8>, Vec<u8>)>,
    batch_bytes: usize,
}

impl<'a> Loader<'a> {
    pub(crate) fn start(to: &'a dyn MetaStore) -> Result<Self, StoreError> {
        if unfinished(to)? {
            return Err(StoreError::Backend(
                "an earlier copy into the destination did not finish: empty it and copy again"
                    .into(),
            ));
        }
        if !to.begin().scan(&[], &END, 1)?.is_empty() {
            return Err(StoreError::Backend(
                "the destination already holds metadata; copy only into an empty store".into(),
            ));
        }
        let mut t = to.begin();
        t.put(COPYING, b"")?;
        t.commit()?;
        Ok(Loader {
            to,
            batch: Vec::new(),
            batch_bytes: 0,
        })
    }

    pub(crate) fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        if self.batch.len() == BATCH_KEYS
            || self.batch_bytes + key.len() + value.len() > BATCH_BYTES
        {
            self.flush()?;
        }
        self.batch_bytes += key.len() + value.len();
        self.batch.push((key.to_vec(), value.to_vec()));
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StoreError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let mut t = self.to.begin();
        for (k, v) in &self.batch {
            t.put(k, v)?;
        }
        t.commit()?;
        self.batch.clear();
        self.batch_bytes = 0;
        Ok(())
    }

    /// Checks that the destination holds exactly `expected`, then, in one
    /// transaction, applies `last` and removes the mark.
    pub(crate) fn finish(
        mut self,
        expected: Summary,
        last: impl FnOnce(&mut dyn Txn) -> Result<(), StoreError>,
    ) -> Result<Summary, StoreError> {
        self.flush()?;
        self.to.sync()?;
        let is = summarize(self.to)?;
        if is != expected {
            return Err(StoreError::Backend(format!(
                "the copy differs from its source: {} keys (CRC {:08x}) expected, {} (CRC {:08x}) read back",
                expected.keys, expected.crc, is.keys, is.crc
            )));
        }
        let mut t = self.to.begin();
        last(t.as_mut())?;
        t.delete(COPYING)?;
        t.commit()?;
        self.to.sync()?;
        Ok(is)
    }
}

/// Copies every key of `from` into `to`, which must hold no key, and
/// checks that `to` then holds exactly what `from` did.
pub fn copy_all(from: &dyn MetaStore, to: &dyn MetaStore) -> Result<Summary, StoreError> {
    if from.begin().scan(&[], &END, 1)?.is_empty() {
        return Err(StoreError::Backend(
            "the source holds no metadata (a wrong directory or prefix?)".into(),
        ));
    }
    let mut load = Loader::start(to)?;
    walk(from, |k, v| load.put(k, v))?;
    load.finish(summarize(from)?, |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, RocksStore};

    fn fill(s: &dyn MetaStore, n: u32) {
        for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
            let mut t = s.begin();
            for i in chunk {
                // Some values large enough to fill a batch by bytes.
                let v = vec![*i as u8; if i % 97 == 0 { 60_000 } else { 40 }];
                t.put(&[b"E", &i.to_be_bytes()[..]].concat(), &v).unwrap();
            }
            t.commit().unwrap();
        }
    }

    /// RocksDB into etcd and etcd into memory: every key arrives, the
    /// summaries agree, and a second copy into the now full store is
    /// refused and changes nothing.
    #[test]
    fn a_store_copies_whole_into_an_empty_one_of_another_backend() {
        let dir = tempfile::tempdir().unwrap();
        let rocks = RocksStore::open(dir.path()).unwrap();
        fill(&rocks, 3000);
        let etcd = crate::store::test_etcd::store();
        let copied = copy_all(&rocks, &etcd).unwrap();
        assert_eq!(copied.keys, 3000);
        assert_eq!(summarize(&rocks).unwrap(), copied);
        let mem = MemoryStore::new();
        assert_eq!(copy_all(&etcd, &mem).unwrap(), copied);
        let again = copy_all(&rocks, &etcd);
        assert!(matches!(again, Err(StoreError::Backend(why)) if why.contains("already holds")));
        assert_eq!(summarize(&etcd).unwrap(), copied);
    }

    /// A copy cut short leaves its marker, which the service checks; an
    /// empty source is refused before anything is written.
    #[test]
    fn a_copy_cut_short_is_marked_and_an_empty_source_refused() {
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        let empty = copy_all(&a, &b);
        assert!(matches!(empty, Err(StoreError::Backend(why)) if why.contains("no metadata")));
        assert!(b.begin().scan(&[], &END, 1).unwrap().is_empty());
        fill(&a, 10);
        copy_all(&a, &b).unwrap();
        assert!(!unfinished(&b).unwrap());
        // As a copy that stopped after its first batch leaves it.
        let c = MemoryStore::new();
        let mut t = c.begin();
        t.put(COPYING, b"").unwrap();
        t.put(b"E1", b"x").unwrap();
        t.commit().unwrap();
        assert!(unfinished(&c).unwrap());
        let again = copy_all(&a, &c);
        assert!(matches!(again, Err(StoreError::Backend(why)) if why.contains("did not finish")));
    }

    /// The summary sees a changed byte.
    #[test]
    fn a_summary_changes_with_any_byte() {
        let (a, b) = (MemoryStore::new(), MemoryStore::new());
        fill(&a, 50);
        fill(&b, 50);
        assert_eq!(summarize(&a).unwrap(), summarize(&b).unwrap());
        let mut t = b.begin();
        t.put(&[b"E", &7u32.to_be_bytes()[..]].concat(), &[8u8; 40])
            .unwrap();
        t.commit().unwrap();
        assert_ne!(summarize(&a).unwrap().crc, summarize(&b).unwrap().crc);
    }
}
