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
//!
//! The same pass moves a file's deferred writes (inline blocks, see
//! `deferred.rs`) to the nodes: the inline runs outside the windows merged
//! whole are rewritten in file order, a block's worth at a time. A file
//! of at most `DEFERRED_MAX` bytes keeps its inline blocks. A file that keeps being
//! written has its deferred writes moved while it is written
//! (`Pass::Deferred`).

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{stream, StreamExt};
use tessera_common::{
    is_inline, Commit, DegradedBlock, FileWrite, Ino, Slice, INLINE_MAX, MAX_BLOCK,
};
use tracing::{debug, warn};

use crate::{
    read::{CachedSlices, Visible},
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
/// Deferred writes a pass over a file being written leaves inline: its
/// newest.
const KEEP_NEWEST: usize = 32;
/// Windows merged at once: their reads, stores and commits overlap.
const WINDOWS_AT_ONCE: usize = 3;

/// What a pass over a file rewrites.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pass {
    /// The file is quiet: fragmented windows, and deferred writes.
    Quiet,
    /// The file is being written: its deferred writes only, but for the
    /// newest.
    Deferred,
    /// The mount is going: all of its deferred writes.
    Leaving,
}

/// How long an unmount spends moving deferred writes at most.
const LEAVING_MAX: Duration = Duration::from_secs(5);

/// Files this mount committed to, and when it last did.
#[derive(Default)]
pub(crate) struct Merges {
    written: std::sync::Mutex<HashMap<Ino, Instant>>,
    running: std::sync::atomic::AtomicBool,
    /// The file being merged now.
    merging: std::sync::Mutex<Option<Ino>>,
    /// Files with deferred writes no quiet pass has seen yet, and those
    /// whose deferred writes are being moved while written
    /// (`deferred.rs`).
    pub(super) deferred: std::sync::Mutex<HashSet<Ino>>,
    pub(super) moving: std::sync::Mutex<HashSet<Ino>>,
    /// The mount is going: no pass starts.
    pub(super) leaving: AtomicBool,
}

impl Volume {
    /// This mount committed bytes of `ino`: merge its fragments once it is
    /// quiet.
    pub(crate) fn merge_later(&self, ino: Ino) {
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

    /// Moves the deferred writes no quiet pass has seen yet to the nodes
    /// before the mount goes: once the passes under way are done (no new
    /// one starts), for at most `LEAVING_MAX`. What is left (a move that
    /// failed, or ran out of time) a mount that reads the file moves.
    pub(crate) async fn move_deferred_before_leaving(&self) {
        let m = &self.inner.merges;
        m.leaving.store(true, Ordering::Release);
        let moved = tokio::time::timeout(LEAVING_MAX, async {
            while m.merging.lock().expect("merges lock").is_some()
                || !m.moving.lock().expect("merges lock").is_empty()
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let inos = std::mem::take(&mut *m.deferred.lock().expect("merges lock"));
            for ino in inos {
                if let Err(err) = self.merge_file(ino, Pass::Leaving).await {
                    debug!(volume = self.name(), ino, error = %err, "moving deferred writes at unmount failed");
                }
            }
        })
        .await;
        if moved.is_err() {
            warn!(
                volume = self.name(),
                "moving deferred writes at unmount ran out of time; a mount that reads the files moves the rest"
            );
        }
    }

    /// Whether a quiet pass over `ino` is under way.
    pub(super) fn merging(&self, ino: Ino) -> bool {
        *self.inner.merges.merging.lock().expect("merges lock") == Some(ino)
    }

    /// A file's slices show deferred writes: merge it once quiet, as if
    /// this mount had written them (the mount that did may have died), but
    /// for the merge's own look at them.
    pub(crate) fn found_deferred(&self, ino: Ino) {
        if !self.merging(ino) {
            self.merge_later(ino);
        }
    }

    /// Merges the files gone quiet, one at a time, until none is waiting.
    async fn run_merges(&self) {
        let m = &self.inner.merges;
        loop {
            tokio::time::sleep(QUIET / 2).await;
            let quiet: Vec<Ino> = {
                let mut written = m.written.lock().expect("merges lock");
                if written.is_empty() || m.leaving.load(Ordering::Acquire) {
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
                if m.leaving.load(Ordering::Acquire) {
                    break;
                }
                {
                    // Under the lock of the moves: one that starts after
                    // this sees the pass (`merging`) and stops.
                    let moving = m.moving.lock().expect("merges lock");
                    if moving.contains(&ino) {
                        // Its deferred writes are being moved: two passes
                        // over the same runs would make the service refuse
                        // one.
                        drop(moving);
                        self.merge_later(ino);
                        continue;
                    }
                    *m.merging.lock().expect("merges lock") = Some(ino);
                }
                let merged = self.merge_file(ino, Pass::Quiet).await;
                *m.merging.lock().expect("merges lock") = None;
                if merged.is_ok() {
                    m.deferred.lock().expect("merges lock").remove(&ino);
                }
                match merged {
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

    /// Merges the fragmented windows of `ino` and moves its deferred
    /// writes to the nodes, `WINDOWS_AT_ONCE` windows at a time (one read
    /// while another is stored and a third committed); returns how many.
    /// A quiet pass starts no window after a write of this mount; no pass
    /// starts one after a merge refused.
    pub(crate) async fn merge_file(&self, ino: Ino, pass: Pass) -> Result<usize> {
        let e = self
            .existing_entry(ino)
            .unwrap_or_else(|| Arc::new(FileEntry::default()));
        self.merge_entry(ino, &e, pass).await
    }

    /// `merge_file` with the file's entry.
    pub(super) async fn merge_entry(
        &self,
        ino: Ino,
        e: &Arc<FileEntry>,
        pass: Pass,
    ) -> Result<usize> {
        let deferred = e.deferred.load(Ordering::Acquire);
        let slices = self.slices(ino, e).await?;
        let windows = windows(&slices, pass);
        let stop = AtomicBool::new(false);
        let (stop, windows, slices) = (&stop, &windows, &slices);
        let mut merging = stream::iter(0..windows.len())
            .map(|w| async move {
                if stop.load(Ordering::Acquire) || (pass == Pass::Quiet && self.written(ino)) {
                    return Ok(false);
                }
                let merged = self.merge_window(ino, e, slices, &windows[w], pass).await;
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
        if let Some(err) = failed {
            return Err(err);
        }
        if merged == windows.len() {
            // What was deferred when the pass began is on the nodes now.
            let _ = e
                .deferred
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| {
                    Some(d.saturating_sub(deferred))
                });
        }
        Ok(merged)
    }

    /// Whether this mount wrote `ino` since its pass was planned, or has
    /// bytes of it buffered.
    fn written(&self, ino: Ino) -> bool {
        let written = self.inner.merges.written.lock().expect("merges lock");
        written.contains_key(&ino) || self.has_buffered(ino)
    }

    /// Rewrites a group's runs as one block, committed as a merge (a
    /// file write per stretch); false if the file was written meanwhile in
    /// a quiet pass (nothing stored).
    async fn merge_window(
        &self,
        ino: Ino,
        e: &FileEntry,
        slices: &CachedSlices,
        group: &[Vec<Visible>],
        pass: Pass,
    ) -> Result<bool> {
        let generation = e.slices.lock().expect("slices lock").0;
        let started = Instant::now();
        let runs: Vec<Visible> = group.iter().flatten().cloned().collect();
        let datas = self.read_runs(ino, slices, &runs).await?;
        let read = started.elapsed();
        let block = self.inner.block_ids.next().await?;
        let len: usize = datas.iter().map(Bytes::len).sum();
        let mut data = Vec::with_capacity(len);
        let mut datas = datas.iter();
        let mut writes: Vec<FileWrite> = Vec::with_capacity(group.len());
        for stretch in group {
            let mut fresh: Vec<Slice> = Vec::new();
            for (v, bytes) in stretch.iter().zip(&mut datas) {
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
            writes.push(FileWrite {
                ino,
                slices: fresh,
                replaces: stretch.iter().map(Visible::as_slice).collect(),
                ..Default::default()
            });
        }
        let fresh: Vec<Slice> = writes.iter().flat_map(|w| w.slices.clone()).collect();
        let i = &self.inner;
        if pass == Pass::Quiet && self.written(ino) {
            return Ok(false);
        }
        let put = put_block(&i.nodes, &i.codec, block, data.into(), i.min_durable).await?;
        let stored = started.elapsed();
        let commit = Commit {
            vol: self.id(),
            files: writes,
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

/// What one merge rewrites as one block: stretches of runs, each a span of
/// the file in which nothing else shows (so the service, which compares
/// a stretch's span with what shows there, finds exactly its runs).
type Group = Vec<Vec<Visible>>;

/// The runs a pass rewrites, a group at a time: all of a fragmented
/// window's (in a quiet pass, one stretch); and the inline runs of
/// deferred writes, in file order, up to a block's worth a group (a
/// database's pages written here and there move as one block, not one per
/// window), a stretch ending wherever bytes that stay show between them.
/// A file of at most `INLINE_MAX` bytes is left as it is, and one of at
/// most `DEFERRED_MAX` keeps its inline blocks.
fn windows(slices: &CachedSlices, pass: Pass) -> Vec<Group> {
    let merge = pass == Pass::Quiet && slices.size > INLINE_MAX as u64;
    let deferred = slices.has_deferred();
    if !merge && !deferred {
        return Vec::new();
    }
    // A file being written keeps its newest deferred writes: they are the
    // ones written over next (a log's last page), which would make the
    // service refuse the merge.
    let mut newest: Vec<u64> = Vec::new();
    if pass == Pass::Deferred {
        newest = slices
            .visible(0, slices.size)
            .iter()
            .map(|v| v.slice.block)
            .filter(|&b| is_inline(b))
            .collect();
        newest.sort_unstable();
        newest.dedup();
        newest.drain(..newest.len().saturating_sub(KEEP_NEWEST));
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut moving = Moving::default();
    for w in 0..slices.size.div_ceil(WINDOW) {
        let runs = slices.visible(w * WINDOW, ((w + 1) * WINDOW).min(slices.size));
        if merge && fragments(&runs) >= MIN_RUNS {
            groups.push(vec![runs]);
            continue;
        }
        if !deferred {
            continue;
        }
        for v in runs {
            if is_inline(v.slice.block) && newest.binary_search(&v.slice.block).is_err() {
                moving.add(v, &mut groups);
            } else {
                // Bytes that stay where they are: the stretch ends.
                moving.end_stretch();
            }
        }
        moving.end_stretch();
    }
    moving.end_group(&mut groups);
    groups
}

/// Runs of deferred writes being gathered into groups.
#[derive(Default)]
struct Moving {
    group: Group,
    stretch: Vec<Visible>,
    len: u64,
}

impl Moving {
    fn add(&mut self, v: Visible, groups: &mut Vec<Group>) {
        if self.len + v.len > MAX_BLOCK as u64 {
            self.end_group(groups);
        }
        self.len += v.len;
        self.stretch.push(v);
    }

    fn end_stretch(&mut self) {
        if !self.stretch.is_empty() {
            self.group.push(std::mem::take(&mut self.stretch));
        }
    }

    fn end_group(&mut self, groups: &mut Vec<Group>) {
        self.end_stretch();
        if !self.group.is_empty() {
            groups.push(std::mem::take(&mut self.group));
        }
        self.len = 0;
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use bytes::Bytes;
    use tessera_common::{InlineBlock, INLINE_BIT};

    use super::*;
    use crate::read::slices::fetched_for_tests;

    const PAGE: u64 = 8192;
    const SIZE: u64 = 16 << 20;

    /// A 16 MiB stripe written over by `n` pages here and there, as
    /// deferred writes (inline blocks) and as stripes, some side by side,
    /// some across a window's edge.
    fn written_over(n: u64) -> CachedSlices {
        let page = |offset, block| Slice {
            offset,
            len: PAGE as u32,
            block,
            block_offset: 0,
            block_len: PAGE as u32,
        };
        let mut cached = fetched_for_tests(
            vec![Slice {
                offset: 0,
                len: SIZE as u32,
                block: 1,
                block_offset: 0,
                block_len: SIZE as u32,
            }],
            SIZE,
        );
        let mut x = 7u64;
        for i in 0..n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            // Page-aligned, or straddling a page (and so, now and then,
            // a window's edge).
            let at = ((x >> 33) % (SIZE / PAGE - 1)) * PAGE + (x >> 20) % 2 * PAGE / 2;
            if (x >> 40).is_multiple_of(4) {
                cached.apply(&[page(at, 10 + i)], &[], SIZE);
            } else {
                let block = INLINE_BIT | (10 + i);
                let data = Bytes::from(vec![1u8; PAGE as usize]);
                cached.apply(&[page(at, block)], &[InlineBlock { block, data }], SIZE);
            }
        }
        cached
    }

    /// What each pass rewrites is what the service will find: every
    /// stretch's span shows exactly its runs, no run is rewritten twice,
    /// no group is more than a block.
    fn check(cached: &CachedSlices, groups: &[Group]) -> HashSet<u64> {
        let mut seen = HashSet::new();
        for group in groups {
            let len: u64 = group.iter().flatten().map(|v| v.len).sum();
            assert!(len <= MAX_BLOCK as u64, "a group of {len} bytes");
            for stretch in group {
                let (start, end) = (
                    stretch[0].offset,
                    stretch.last().unwrap().offset + stretch.last().unwrap().len,
                );
                let shown: Vec<Slice> = cached
                    .visible(start, end)
                    .iter()
                    .map(Visible::as_slice)
                    .collect();
                let runs: Vec<Slice> = stretch.iter().map(Visible::as_slice).collect();
                assert_eq!(shown, runs, "[{start}, {end}) shows other runs");
                for v in stretch {
                    assert!(seen.insert(v.offset), "run at {} rewritten twice", v.offset);
                }
            }
        }
        seen
    }

    #[test]
    fn every_stretch_is_exactly_what_shows_in_its_span() {
        for n in [1, 5, 40, 400, 3000] {
            let cached = written_over(n);
            let inline: Vec<Visible> = cached
                .visible(0, SIZE)
                .into_iter()
                .filter(|v| is_inline(v.slice.block))
                .collect();
            // While written: all but the newest blocks move.
            let moved = check(&cached, &windows(&cached, Pass::Deferred));
            let mut blocks: Vec<u64> = inline.iter().map(|v| v.slice.block).collect();
            blocks.sort_unstable();
            blocks.dedup();
            let kept: HashSet<u64> = blocks.iter().rev().take(KEEP_NEWEST).copied().collect();
            for v in &inline {
                assert_eq!(
                    moved.contains(&v.offset),
                    !kept.contains(&v.slice.block),
                    "{v:?}"
                );
            }
            assert_eq!(
                moved.len(),
                inline
                    .iter()
                    .filter(|v| !kept.contains(&v.slice.block))
                    .count()
            );
            // Leaving: every inline run moves, and nothing else.
            let leaving = check(&cached, &windows(&cached, Pass::Leaving));
            assert_eq!(leaving.len(), inline.len(), "n = {n}");
            assert!(inline.iter().all(|v| leaving.contains(&v.offset)));
            // Quiet: every inline run moves, in its window's merge or alone.
            let quiet = check(&cached, &windows(&cached, Pass::Quiet));
            assert!(inline.iter().all(|v| quiet.contains(&v.offset)), "n = {n}");
        }
    }
}
