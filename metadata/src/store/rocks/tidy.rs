//! Compacting key ranges that just lost many keys. A deleted key stays in
//! RocksDB as a tombstone until a compaction reaches the bottom level, and
//! every seek near it steps over it: a merge of a file's fragments deletes
//! a thousand extent keys per window, and the next commits to that file
//! each stepped over hundreds of them backwards (random 4 KiB writes after
//! a merge ran at three quarters of the speed before it). Ranges hinted
//! here are compacted on a thread of their own once the hints stop for
//! `QUIET` (or `LONGEST` after the first), never on the caller's thread.

use std::{
    sync::{
        mpsc::{self, RecvTimeoutError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use rocksdb::{CompactOptions, OptimisticTransactionDB};

/// How long hints must stop before their ranges are compacted.
const QUIET: Duration = Duration::from_secs(2);
/// Longest a hinted range waits while hints keep coming.
const LONGEST: Duration = Duration::from_secs(20);

type Range = (Vec<u8>, Vec<u8>);

pub(super) struct Tidier {
    hints: Option<mpsc::Sender<Range>>,
    thread: Option<JoinHandle<()>>,
    /// Ranges compacted so far (tests wait on it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) done: Arc<std::sync::atomic::AtomicU64>,
}

impl Tidier {
    pub(super) fn start(db: Arc<OptimisticTransactionDB>) -> std::io::Result<Tidier> {
        let (hints, rx) = mpsc::channel();
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let thread = std::thread::Builder::new()
            .name("meta-tidy".into())
            .spawn({
                let done = done.clone();
                move || run(&db, &rx, &done)
            })?;
        Ok(Tidier {
            hints: Some(hints),
            thread: Some(thread),
            done,
        })
    }

    /// Has `[start, end)` compacted soon.
    pub(super) fn hint(&self, start: &[u8], end: &[u8]) {
        if let Some(h) = &self.hints {
            // The thread is gone only while the store closes.
            let _ = h.send((start.to_vec(), end.to_vec()));
        }
    }
}

impl Drop for Tidier {
    fn drop(&mut self) {
        self.hints = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    db: &OptimisticTransactionDB,
    hints: &mpsc::Receiver<Range>,
    done: &std::sync::atomic::AtomicU64,
) {
    while let Ok(first) = hints.recv() {
        let began = Instant::now();
        let mut ranges = vec![first];
        while began.elapsed() < LONGEST {
            match hints.recv_timeout(QUIET) {
                Ok(r) if ranges.contains(&r) => {}
                Ok(r) => ranges.push(r),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let started = Instant::now();
        // Alongside RocksDB's own compactions, not instead of them.
        let mut opts = CompactOptions::default();
        opts.set_exclusive_manual_compaction(false);
        for (start, end) in &ranges {
            db.compact_range_opt(Some(start), Some(end), &opts);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        tracing::debug!(
            ranges = ranges.len(),
            ms = started.elapsed().as_millis() as u64,
            "compacted ranges that lost many keys"
        );
    }
}
