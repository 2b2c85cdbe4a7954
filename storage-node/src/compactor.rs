//! The compaction thread: every `interval`, rewrites sealed segments that
//! are mostly garbage (see `store/compact.rs`), one at a time, until none
//! is left; corrupt shards it meets are reported for repair.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use tracing::warn;

use crate::{scrub::Reports, store::ShardStore};

/// How compaction runs.
#[derive(Clone, Debug)]
pub struct CompactConfig {
    /// Pause between checks; zero disables compaction.
    pub interval: Duration,
    /// A sealed segment is rewritten when less than this share of it is live.
    pub max_live: f64,
}

impl Default for CompactConfig {
    fn default() -> Self {
        CompactConfig {
            interval: Duration::from_secs(60),
            max_live: 0.5,
        }
    }
}

/// Segment files removed and bytes given back since the node started.
#[derive(Debug, Default)]
pub struct CompactStats {
    pub segments: AtomicU64,
    pub bytes: AtomicU64,
}

pub fn spawn(
    store: Arc<ShardStore>,
    cfg: CompactConfig,
    stats: Arc<CompactStats>,
    reports: Reports,
    stop: Arc<AtomicBool>,
) -> Option<thread::JoinHandle<()>> {
    if cfg.interval.is_zero() {
        return None;
    }
    let handle = thread::Builder::new()
        .name("compact".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match store.compact_once(cfg.max_live) {
                        Ok(c) if c.segment.is_some() => {
                            stats.segments.fetch_add(1, Ordering::Relaxed);
                            stats.bytes.fetch_add(c.reclaimed, Ordering::Relaxed);
                            reports.lock().expect("reports lock").extend(c.corrupt);
                        }
                        Ok(_) => break,
                        Err(e) => {
                            warn!(error = %e, "compaction failed");
                            break;
                        }
                    }
                }
                let mut left = cfg.interval;
                while !left.is_zero() && !stop.load(Ordering::Relaxed) {
                    let s = left.min(Duration::from_millis(100));
                    thread::sleep(s);
                    left -= s;
                }
            }
        })
        .expect("starting the compaction thread");
    Some(handle)
}
