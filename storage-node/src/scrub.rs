//! The scrubber: reads every shard back in the background at a bounded
//! rate, verifying its CRCs, and hands the keys of corrupt shards to the
//! heartbeat session, which reports them to the metadata service for
//! repair. One pass over all shards, then a pause, forever.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use tessera_common::{pace::Pacer, ShardKey};
use tracing::{debug, info, warn};

use crate::{store::ShardStore, Error};

/// How the scrubber runs.
#[derive(Clone, Debug)]
pub struct ScrubConfig {
    /// Bytes per second read; 0 disables scrubbing.
    pub bandwidth: u64,
    /// Pause between the end of one pass and the start of the next.
    pub interval: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            bandwidth: 32 << 20,
            interval: Duration::from_secs(24 * 3600),
        }
    }
}

/// What the scrubber did since the node started.
#[derive(Debug, Default)]
pub struct ScrubStats {
    pub passes: AtomicU64,
    pub bytes: AtomicU64,
    pub corrupt: AtomicU64,
}

/// Corrupt shards found and not yet reported to the metadata service; the
/// heartbeat session drains it.
pub type Reports = Arc<Mutex<Vec<ShardKey>>>;

/// Keys listed per batch.
const BATCH: u32 = 256;

/// Starts the scrubber thread; it stops soon after `stop` is set.
pub fn spawn(
    store: Arc<ShardStore>,
    cfg: ScrubConfig,
    stats: Arc<ScrubStats>,
    report: Reports,
    stop: Arc<AtomicBool>,
) -> Option<thread::JoinHandle<()>> {
    if cfg.bandwidth == 0 {
        return None;
    }
    let handle = thread::Builder::new()
        .name("scrub".into())
        .spawn(move || {
            let pacer = Pacer::new(cfg.bandwidth);
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = pass(&store, &pacer, &stats, &report, &stop) {
                    warn!(error = %e, "scrub pass failed");
                }
                sleep_unless_stopped(cfg.interval, &stop);
            }
        })
        .expect("starting the scrub thread");
    Some(handle)
}

fn pass(
    store: &ShardStore,
    pacer: &Pacer,
    stats: &ScrubStats,
    report: &Reports,
    stop: &AtomicBool,
) -> crate::Result<()> {
    let mut after = None;
    let (mut shards, mut found) = (0u64, 0u64);
    loop {
        let batch = store.list(after, BATCH)?;
        let Some(last) = batch.last() else { break };
        after = Some(last.key);
        let mut corrupt = Vec::new();
        for info in &batch {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            sleep_unless_stopped(pacer.reserve(u64::from(info.len)), stop);
            match store.get(info.key, 0, 0) {
                Ok(_) => {}
                Err(Error::CorruptShard { .. }) => corrupt.push(info.key),
                // Deleted meanwhile, or an I/O error: not this pass's business.
                Err(e) => debug!(key = %info.key, error = %e, "scrub read failed"),
            }
            shards += 1;
            stats
                .bytes
                .fetch_add(u64::from(info.len), Ordering::Relaxed);
        }
        if !corrupt.is_empty() {
            warn!(
                shards = corrupt.len(),
                "scrub found corrupt shards; reporting them for repair"
            );
            found += corrupt.len() as u64;
            stats
                .corrupt
                .fetch_add(corrupt.len() as u64, Ordering::Relaxed);
            report.lock().expect("reports lock").extend(corrupt);
        }
    }
    stats.passes.fetch_add(1, Ordering::Relaxed);
    info!(shards, corrupt = found, "scrub pass done");
    Ok(())
}

fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !left.is_zero() && !stop.load(Ordering::Relaxed) {
        let s = left.min(step);
        thread::sleep(s);
        left -= s;
    }
}
