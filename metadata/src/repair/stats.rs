//! What repair did since the service started, and its recent rate.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::{Duration, Instant},
};

/// The window the repair rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
pub struct RepairStats {
    pub(crate) shards: AtomicU64,
    pub(crate) bytes: AtomicU64,
    /// Corrupt shards reported by scrubbers and readers.
    pub(crate) corrupt: AtomicU64,
    /// (when, bytes) of recent repairs, for the rate.
    recent: Mutex<VecDeque<(Instant, u64)>>,
}

impl RepairStats {
    pub(crate) fn record(&self, shards: u64, bytes: u64) {
        self.shards.fetch_add(shards, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        let mut r = self.recent.lock().expect("repair stats lock");
        r.push_back((Instant::now(), bytes));
        while r.front().is_some_and(|(t, _)| t.elapsed() > RATE_WINDOW) {
            r.pop_front();
        }
    }

    pub(crate) fn corrupt_reported(&self, shards: u64) {
        self.corrupt.fetch_add(shards, Relaxed);
    }

    /// Shards and bytes rebuilt since start.
    pub fn repaired(&self) -> (u64, u64) {
        (self.shards.load(Relaxed), self.bytes.load(Relaxed))
    }

    pub fn corrupt(&self) -> u64 {
        self.corrupt.load(Relaxed)
    }

    /// Bytes per second repaired over the last few seconds.
    pub fn rate(&self) -> u64 {
        let r = self.recent.lock().expect("repair stats lock");
        let Some((first, _)) = r.front() else {
            return 0;
        };
        let span = first.elapsed().max(Duration::from_secs(1));
        if span > RATE_WINDOW {
            return 0;
        }
        let bytes: u64 = r.iter().map(|(_, b)| b).sum();
        (bytes as f64 / span.as_secs_f64()) as u64
    }
}
