//! Merging a file's fragments. Small overwrites (a database's pages) leave
//! a file's bytes in many small extents, each in another block: a
//! sequential read then reads a few KiB from each of thousands of blocks,
//! and blocks stay alive for the few bytes of them that still show.
//!
//! Once a file this mount wrote has been quiet for `QUIET`, every window
//! of `WINDOW` bytes in which at least `MIN_RUNS` runs show is rewritten:
//! its committed bytes are read, stored as one fresh block, and committed
//! as a merge (`FileWrite::replaces`), which the metadata service applies
//! only if exactly what was read still shows there (a write or truncation
//! in between, from any mount, makes it refuse: nothing is lost, the
//! block is left unreferenced). Holes stay holes; times do not change. The
//! blocks left without a shown byte are freed by the service's GC. A file
//! written again stops its merge until it is quiet again.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{stream, StreamExt};
use tessera_common::{is_inline, Commit, DegradedBlock, FileWrite, Ino, Slice, MAX_BLOCK};
use tracing::{debug, warn};

use crate::{
    read::Visible,
    stripe::put_block,
    volume::{FileEntry, Volume},
    Result,
};

/// How long a file goes without a commit of this mount before its
/// fragments are merged.
const QUIET: Duration = Duration::from_secs(2);
/// The span merged at once: one block.
pub(crate) const WINDOW: u64 = MAX_BLOCK as u64;
/// A window is merged when its runs come from at least this many blocks
/// in turn (256 KiB each on average, or less); holes do not count.
pub(crate) const MIN_RUNS: usize = 16;
const _: () = assert!(tessera_common::CHUNK_SIZE.is_multiple_of(WINDOW));
/// Windows merged at once: their reads, stores and commits overlap.
const WINDOWS_AT_ONCE: usize = 3;

/// Files this mount committed to, and when it last did.
#[derive(Default)]
pub(crate) struct Merges {
    written: std::sync::Mutex<HashMap<Ino, Instant>>,
    running: std::sync::atomic::AtomicBool,
}

impl Volume {
    /// This mount committed bytes of `ino`: merge its fragments once it is
    /// quiet.
    pub(super) fn merge_later(&self, ino: Ino) {
        if !self.inner.merges_applied {
            return;
        }
        let m = &self.inner.merges;
        m.written
            .lock()
            .expect("merges lock")
            .insert(ino, Instant::now());
        if !m.running.swap(true, Ordering::AcqRel) {
            let vol = self.clone();
            tokio::spawn(async move { vol.run_merges().await });
        }
    }

    /// Merges the files gone quiet, one at a time, until none is waiting.
    async fn run_merges(&self) {
        let m = &self.inner.merges;
        loop {
            tokio::time::sleep(QUIET / 2).await;
            let quiet: Vec<Ino> = {
                let mut written = m.written.lock().expect("merges lock");
                if written.is_empty() {
                    m.running.store(false, Ordering::Release);
                    return;
                }
                let quiet: Vec<Ino> = written
                    .iter()
                    .filter(|(_, at)| at.elapsed() >= QUIET)
                    .map(|(ino, _)| *ino)
                    .collect();
                for ino in &quiet {
                    written.remove(ino);
                }
                quiet
            };
            for ino in quiet {
                match self.merge_file(ino).await {
                    Ok(0) => {}
                    Ok(n) => debug!(volume = self.name(), ino, windows = n, "merged fragments"),
                    Err(e) => {
                        // Its view may point at blocks freed since (a view
                        // fetched before a merge, installed after it).
                        self.invalidate(ino);
                        debug!(volume = self.name(), ino, error = %e, "merging fragments stopped")
                    }
                }
            }
        }
    }

    /// Merges the fragmented windows of `ino`, `WINDOWS_AT_ONCE` at a
    /// time (one read from the nodes while another is stored and a third
    /// committed); returns how many. Starts no window after a write of
    /// this mount or a merge refused.
    pub(crate) async fn merge_file(&self, ino: Ino) -> Result<usize> {
        let e = self
            .existing_entry(ino)
            .unwrap_or_else(|| Arc::new(FileEntry::default()));
        let windows: Vec<Vec<Visible>> = {
            let slices = self.slices(ino, &e).await?;
            (0..slices.size.div_ceil(WINDOW))
                .map(|w| slices.visible(w * WINDOW, ((w + 1) * WINDOW).min(slices.size)))
                // Inline blocks stay inline: the merge is for what the nodes hold.
                .filter(|runs| {
                    fragments(runs) >= MIN_RUNS && !runs.iter().any(|v| is_inline(v.slice.block))
                })
                .collect()
        };
        let stop = AtomicBool::new(false);
        let (stop, e, windows) = (&stop, &e, &windows);
        let mut merging = stream::iter(0..windows.len())
            .map(|w| async move {
                if stop.load(Ordering::Acquire) || self.has_buffered(ino) || self.written_since(ino)
                {
                    return Ok(false);
                }
                let merged = self.merge_window(ino, e, &windows[w]).await;
                if !matches!(merged, Ok(true)) {
                    stop.store(true, Ordering::Release);
                }
                merged
            })
            .buffered(WINDOWS_AT_ONCE);
        let (mut merged, mut failed) = (0, None);
        // Windows under way finish (their commits settle the cached view).
        while let Some(r) = merging.next().await {
            match r {
                Ok(true) => merged += 1,
                Ok(false) => {}
                Err(e) => failed = failed.or(Some(e)),
            }
        }
        failed.map_or(Ok(merged), Err)
    }

    fn written_since(&self, ino: Ino) -> bool {
        let written = self.inner.merges.written.lock().expect("merges lock");
        written.contains_key(&ino)
    }

    /// Rewrites the runs of one window as one block, committed as a merge;
    /// false if the file was written meanwhile (nothing stored).
    async fn merge_window(&self, ino: Ino, e: &FileEntry, runs: &[Visible]) -> Result<bool> {
        let generation = e.slices.lock().expect("slices lock").0;
        let started = Instant::now();
        let datas = self.read_runs(ino, runs).await?;
        let read = started.elapsed();
        let block = self.inner.block_ids.next().await?;
        let len: usize = datas.iter().map(Bytes::len).sum();
        let mut data = Vec::with_capacity(len);
        let mut fresh: Vec<Slice> = Vec::new();
        for (v, bytes) in runs.iter().zip(&datas) {
            match fresh.last_mut() {
                Some(s) if s.end() == v.offset => s.len += v.len as u32,
                _ => fresh.push(Slice {
                    offset: v.offset,
                    len: v.len as u32,
                    block,
                    block_offset: data.len() as u32,
                    block_len: len as u32,
                }),
            }
            data.extend_from_slice(bytes);
        }
        let i = &self.inner;
        if self.has_buffered(ino) || self.written_since(ino) {
            return Ok(false);
        }
        let put = put_block(&i.nodes, &i.codec, block, data.into(), i.min_durable).await?;
        let stored = started.elapsed();
        let commit = Commit {
            vol: self.id(),
            files: vec![FileWrite {
                ino,
                slices: fresh.clone(),
                replaces: runs.iter().map(Visible::as_slice).collect(),
                ..Default::default()
            }],
            degraded: (!put.missing.is_empty())
                .then_some(DegradedBlock {
                    block,
                    block_len: len as u32,
                    missing: put.missing,
                })
                .into_iter()
                .collect(),
            placement_epoch: put.epoch,
            session: i.session,
            ..Default::default()
        };
        let done = i.meta.commit(commit).await;
        debug!(
            volume = self.name(),
            ino,
            at = runs[0].offset,
            runs = runs.len(),
            read_ms = read.as_millis() as u64,
            store_ms = (stored - read).as_millis() as u64,
            commit_ms = (started.elapsed() - stored).as_millis() as u64,
            "merged a window"
        );
        let mut cached = e.slices.lock().expect("slices lock");
        let unchanged = cached.0 == generation;
        match (&done, cached.1.as_mut()) {
            // Nothing of this mount committed since the read: the merged
            // slices go on the cached view (a merge changes no size, nor
            // what a view fetched meanwhile shows).
            (Ok(_), Some(s)) if unchanged => {
                let size = s.size;
                Arc::make_mut(s).apply(&fresh, &[], size)
            }
            // Applied or not (an answer lost), the cached view may point
            // at blocks the merge frees: fetched again at the next read.
            _ => {
                cached.0 += 1;
                cached.1 = None;
            }
        }
        drop(cached);
        if let Err(err) = &done {
            if err.is_unreachable() {
                warn!(volume = self.name(), ino, error = %err, "a merge's commit got no answer");
            }
        }
        done.map(|_| true)
    }
}

/// How many runs of a window begin another block than the run before.
fn fragments(runs: &[Visible]) -> usize {
    let switches = runs
        .windows(2)
        .filter(|w| w[0].slice.block != w[1].slice.block)
        .count();
    switches + usize::from(!runs.is_empty())
}
