//! Per-key write locks: operations on one shard key run one at a time, so
//! the existence check, the append and the index update of a put (or a
//! delete) happen in the same order in the log and in the index.

use std::{
    collections::HashSet,
    sync::{Condvar, Mutex, PoisonError},
};

use tessera_common::ShardKey;

use crate::segment::lock;

#[derive(Default)]
pub struct KeyLocks {
    busy: Mutex<HashSet<ShardKey>>,
    freed: Condvar,
}

/// Holds its keys until dropped.
pub struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    keys: Vec<ShardKey>,
}

impl KeyLocks {
    /// Waits until none of `keys` is held, then takes them all at once (so
    /// two callers can never deadlock on each other's keys).
    pub fn lock(&self, keys: &[ShardKey]) -> KeyGuard<'_> {
        let mut busy = lock(&self.busy);
        while keys.iter().any(|k| busy.contains(k)) {
            busy = self
                .freed
                .wait(busy)
                .unwrap_or_else(PoisonError::into_inner);
        }
        busy.extend(keys.iter().copied());
        KeyGuard {
            locks: self,
            keys: keys.to_vec(),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.locks.busy);
        for k in &self.keys {
            busy.remove(k);
        }
        self.locks.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn second_locker_waits() {
        let locks = Arc::new(KeyLocks::default());
        let k = ShardKey { block: 1, index: 0 };
        let g = locks.lock(&[k]);
        let l2 = locks.clone();
        let t = std::thread::spawn(move || {
            let _g = l2.lock(&[ShardKey { block: 2, index: 0 }, k]);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!t.is_finished());
        drop(g);
        t.join().unwrap();
    }
}
