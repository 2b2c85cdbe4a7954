//! Garbage collection of blocks nothing refers to any more.
//!
//! A block is queued (`G` + block id) in the same transaction that removes
//! the last reference to it ([`crate::blocks`]: deleted files, truncated or
//! overwritten slices, removed volumes), so the queue never misses a block
//! and never holds one that is still referenced. A background task
//! (`task.rs`) takes batches off the queue, deletes every shard of each
//! block from the nodes of its placement group, and forgets a block only
//! once every one of those nodes confirmed; a node that is down keeps its
//! blocks queued until it is back.

mod task;

use serde::{Deserialize, Serialize};
use tessera_common::{BlockId, Protection};

pub use task::{collect_forever, collect_once};

use crate::{
    keys,
    meta::{now_ns, Meta},
    records::{decode, store},
    store::{transact, Txn},
    Result,
};

/// Blocks forgotten per transaction.
const FORGET_BATCH: usize = 1024;
/// With a delay: queue entries read per scan, and at most per block
/// asked for in one call.
const LOOK_PAGE: usize = 1024;
const LOOK_PER_DUE: usize = 16;

/// One queued block: what is needed to find its shards.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct GcRecord {
    pub protection: Protection,
    pub queued_ns: i64,
}

/// Queues `block` in `txn`; called when its last reference goes.
pub(crate) fn queue_block(txn: &mut dyn Txn, block: BlockId, protection: Protection) -> Result<()> {
    let rec = GcRecord {
        protection,
        queued_ns: now_ns(),
    };
    store(txn, &keys::gc(block), &rec)
}

/// The garbage collection domain of a [`Meta`].
#[derive(Clone, Copy)]
pub struct GcQueue<'m> {
    pub(crate) meta: &'m Meta,
}

impl GcQueue<'_> {
    /// Up to `limit` queued blocks, oldest ids first. Each was queued by a
    /// change that is durable when this returns: the change may have been
    /// a buffered one (an unlink), and deleting shards for a change that a
    /// power loss then undoes would lose the data it brings back.
    pub fn pending(&self, limit: usize) -> Result<Vec<(BlockId, GcRecord)>> {
        let (start, end) = keys::prefix_range(&[keys::GC]);
        let rows = self.meta.store().begin().scan(&start, &end, limit)?;
        if !rows.is_empty() {
            self.meta.store().sync()?;
        }
        rows.iter()
            .map(|(k, v)| Ok((keys::id_of(k, keys::GC)?, decode(k, v)?)))
            .collect()
    }

    /// Up to `limit` queued blocks that were queued at least the garbage
    /// collection delay ago: those whose shards may go. With a delay, the
    /// queue is read on from where the last call stopped (wrapping
    /// around), at most `LOOK_PER_DUE` entries per block asked for, so
    /// young blocks at its head never hold older ones back for good.
    pub fn due(&self, limit: usize) -> Result<Vec<(BlockId, GcRecord)>> {
        let delay = self.meta.options.gc_delay.as_nanos() as i64;
        if delay == 0 {
            return self.pending(limit);
        }
        let before = now_ns().saturating_sub(delay);
        let (start, end) = keys::prefix_range(&[keys::GC]);
        let mut cursor = self.meta.gc_cursor.lock().expect("gc cursor lock");
        let mut from = cursor.clone().max(start.clone());
        let origin = from.clone();
        let (mut due, mut looked, mut wrapped) = (Vec::new(), 0, false);
        let mut t = self.meta.store().begin();
        loop {
            // Round the end once, then up to where this call began.
            let until = if wrapped { &origin } else { &end };
            let rows = t.scan(&from, until, LOOK_PAGE)?;
            for (k, v) in &rows {
                looked += 1;
                let rec: GcRecord = decode(k, v)?;
                if rec.queued_ns <= before {
                    due.push((keys::id_of(k, keys::GC)?, rec));
                }
                from = [k.as_slice(), &[0]].concat();
                if due.len() >= limit || looked >= limit.saturating_mul(LOOK_PER_DUE) {
                    break;
                }
            }
            let at_end = rows.len() < LOOK_PAGE;
            if due.len() >= limit || looked >= limit.saturating_mul(LOOK_PER_DUE) {
                break;
            }
            if at_end {
                from = start.clone();
                if wrapped {
                    break;
                }
                wrapped = true;
            }
        }
        *cursor = from;
        drop(t);
        if !due.is_empty() {
            // As `pending`: what queued them is durable before shards go.
            self.meta.store().sync()?;
        }
        Ok(due)
    }

    /// Forgets blocks whose shards are all deleted.
    pub fn forget(&self, blocks: &[BlockId]) -> Result<()> {
        for batch in blocks.chunks(FORGET_BATCH) {
            transact(self.meta.store(), |txn| {
                for b in batch {
                    txn.delete(&keys::gc(*b))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Whether `block` waits for garbage collection (nothing refers to it).
    pub fn is_garbage(&self, block: BlockId) -> Result<bool> {
        Ok(self.meta.store().begin().get(&keys::gc(block))?.is_some())
    }

    /// Finishes what was left to do, in bounded steps: the trees of
    /// removed volumes, and the releases and trims of large files that a
    /// failure or a crash cut short. The GC task calls it every round.
    pub fn finish_deferred(&self) -> Result<()> {
        self.meta.volumes().resume_purges()?;
        crate::fs::release::resume(self.meta.store())
    }

    /// Removed files whose rows are left to delete.
    pub fn releasing(&self) -> Result<u64> {
        self.count(keys::RELEASE)
    }

    /// Blocks waiting.
    pub fn queued(&self) -> Result<u64> {
        self.count(keys::GC)
    }

    /// Keys under `prefix`.
    fn count(&self, prefix: u8) -> Result<u64> {
        let (start, end) = keys::prefix_range(&[prefix]);
        let rows = self.meta.store().begin().scan(&start, &end, usize::MAX)?;
        Ok(rows.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use crate::{
        store::MemoryStore,
        testing::{slice, Fx},
        MetaOptions,
    };

    /// A freed block waits out the delay before its shards may go.
    #[test]
    fn a_freed_block_is_due_only_after_the_gc_delay() {
        for (delay, due) in [(Duration::ZERO, 1), (Duration::from_secs(3600), 0)] {
            let options = MetaOptions {
                gc_delay: delay,
                ..Default::default()
            };
            let t = Fx::with(Arc::new(MemoryStore::new()), 1 << 30, options);
            let f = t.file(1, b"f");
            t.commit(f.ino, vec![slice(0, 100, 5)]).unwrap();
            t.unlink(1, b"f", false).unwrap();
            assert_eq!(t.m.gc().pending(10).unwrap().len(), 1);
            assert_eq!(t.m.gc().due(10).unwrap().len(), due, "delay {delay:?}");
        }
    }

    /// With a delay, young blocks at the head of the queue do not hold
    /// older ones behind them back: calls read on from where the last one
    /// stopped, and every due block comes once.
    #[test]
    fn young_blocks_do_not_hold_older_ones_back() {
        let options = MetaOptions {
            gc_delay: Duration::from_secs(3600),
            ..Default::default()
        };
        let t = Fx::with(Arc::new(MemoryStore::new()), 1 << 30, options);
        let old = crate::meta::now_ns() - 7200 * 1_000_000_000;
        let mut txn = t.m.store().begin();
        for block in 1..=100u64 {
            let queued_ns = if block > 90 {
                old
            } else {
                crate::meta::now_ns()
            };
            let rec = super::GcRecord {
                protection: tessera_common::Protection::new(4, 2).unwrap(),
                queued_ns,
            };
            crate::records::store(txn.as_mut(), &crate::keys::gc(block), &rec).unwrap();
        }
        txn.commit().unwrap();
        // 16 looked at per block asked for: 2 asked, 32 looked at a call;
        // the third call reaches the old ones.
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend(t.m.gc().due(2).unwrap().into_iter().map(|(b, _)| b));
        }
        assert_eq!(got, vec![91, 92, 93, 94]);
        // (Not forgotten here, so the wrapped reads bring them again.)
        let mut rest: Vec<u64> = (0..10)
            .flat_map(|_| t.m.gc().due(2).unwrap().into_iter().map(|(b, _)| b))
            .collect();
        rest.sort();
        rest.dedup();
        assert_eq!(rest, (91..=100).collect::<Vec<_>>());
        assert!(rest.iter().all(|b| *b > 90), "a young block came: {rest:?}");
    }
}
