//! A small LRU of whole blocks, so a sequential reader fetches each block
//! once (and a degraded block is decoded once) rather than once per 128 KiB
//! kernel read; and the blocks being read ahead, so a reader waits for a
//! fetch already under way instead of starting another.

use std::{
    collections::{HashSet, VecDeque},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use tessera_common::BlockId;
use tokio::sync::Notify;

/// Longest a reader waits for a read-ahead before fetching itself.
const LOAD_WAIT: Duration = Duration::from_secs(5);

pub(crate) struct BlockCache {
    capacity: usize,
    blocks: Mutex<VecDeque<(BlockId, Bytes)>>,
    loading: Mutex<HashSet<BlockId>>,
    loaded: Notify,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            blocks: Mutex::new(VecDeque::new()),
            loading: Mutex::new(HashSet::new()),
            loaded: Notify::new(),
        }
    }

    /// Blocks it keeps.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Claims `block` for a read-ahead; false if it is cached or already
    /// being fetched.
    pub fn start_loading(&self, block: BlockId) -> bool {
        if self.contains(block) {
            return false;
        }
        self.loading.lock().expect("loading lock").insert(block)
    }

    /// Ends a read-ahead: caches what it fetched (if it succeeded) and wakes
    /// the readers waiting for it.
    pub fn finish_loading(&self, block: BlockId, data: Option<Bytes>) {
        if let Some(d) = data {
            self.put(block, d);
        }
        self.loading.lock().expect("loading lock").remove(&block);
        self.loaded.notify_waiters();
    }

    /// The block if it is cached, or once the read-ahead fetching it ends
    /// (None if that failed or takes too long: the caller fetches itself).
    pub async fn get_or_wait(&self, block: BlockId) -> Option<Bytes> {
        let deadline = tokio::time::Instant::now() + LOAD_WAIT;
        loop {
            // Registered before the check, so a wake-up in between is kept.
            let loaded = self.loaded.notified();
            if let Some(b) = self.get(block) {
                return Some(b);
            }
            if !self.loading.lock().expect("loading lock").contains(&block) {
                return None;
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return None;
            }
        }
    }

    fn contains(&self, block: BlockId) -> bool {
        self.blocks
            .lock()
            .expect("block cache lock")
            .iter()
            .any(|(id, _)| *id == block)
    }

    pub fn get(&self, block: BlockId) -> Option<Bytes> {
        let mut b = self.blocks.lock().expect("block cache lock");
        let pos = b.iter().position(|(id, _)| *id == block)?;
        let entry = b.remove(pos).expect("position is in range");
        let data = entry.1.clone();
        b.push_front(entry);
        Some(data)
    }

    pub fn put(&self, block: BlockId, data: Bytes) {
        let mut b = self.blocks.lock().expect("block cache lock");
        b.retain(|(id, _)| *id != block);
        b.push_front((block, data));
        b.truncate(self.capacity);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn readers_wait_for_a_read_ahead_instead_of_fetching_again() {
        let c = Arc::new(BlockCache::new(2));
        assert!(
            c.get_or_wait(1).await.is_none(),
            "nothing cached or loading"
        );
        assert!(c.start_loading(1));
        assert!(!c.start_loading(1), "one fetch per block at a time");
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.get_or_wait(1).await })
        };
        tokio::task::yield_now().await;
        c.finish_loading(1, Some(Bytes::from_static(b"block one")));
        assert_eq!(waiter.await.unwrap().as_deref(), Some(&b"block one"[..]));
        assert!(!c.start_loading(1), "cached now");

        // A failed read-ahead sends the waiter to fetch for itself.
        assert!(c.start_loading(2));
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.get_or_wait(2).await })
        };
        tokio::task::yield_now().await;
        c.finish_loading(2, None);
        assert!(waiter.await.unwrap().is_none());
    }
}
