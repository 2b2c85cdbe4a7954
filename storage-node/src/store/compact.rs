//! Segment compaction: giving back the disk space of deleted and replaced
//! shards.
//!
//! A segment whose live records take less than half of it is rewritten. The
//! one being appended to counts too once puts and deletes have appended an
//! eighth of a segment to it (what compaction moved there does not count, or
//! carried tombstones would be rewritten again and again): it is sealed
//! first, so that what was deleted in it is given back even if the node
//! receives no more writes. A segment holding records whose index
//! update has not finished is left for later, since the index does not know
//! they are live yet. The rewrite appends its live shards again at
//! the end of the log (fsynced, then re-indexed under their key locks, only
//! if the index still points at the old copy), and the tombstones of keys
//! that are still deleted are carried along, unless the segment is the
//! oldest one (nothing older can hold a record they would have to cancel).
//! Only when all of that is durable is the segment file removed. A crash in
//! between leaves two copies of some shards; replay keeps the later one.
//! A live record that fails its CRC is not copied: its key is dropped (a
//! tombstone) and handed to the caller to be reported for repair.

use std::collections::HashMap;

use tessera_common::ShardKey;
use tracing::{info, warn};

use super::ShardStore;
use crate::{
    error::{Error, Result},
    format::{piece_crcs, Kind},
    index::Entry,
    recover::scan_segment,
    segment::{fsync_dir, list_segments, segment_path, NewRecord},
};

/// Bytes of live records copied per append.
const BATCH_BYTES: u64 = 32 << 20;

/// What one compaction did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compacted {
    pub segment: Option<u32>,
    /// Live shards copied forward.
    pub moved: u64,
    /// Bytes of the removed segment file.
    pub reclaimed: u64,
    /// Live shards found corrupt and dropped (to be repaired).
    pub corrupt: Vec<ShardKey>,
}

impl ShardStore {
    /// Live bytes per segment, from the index.
    fn live_by_segment(&self) -> Result<HashMap<u32, u64>> {
        let mut live = HashMap::new();
        let mut after = None;
        loop {
            let page = self.index.list(after, 10_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            for (_, e) in &page {
                *live.entry(e.pos.segment).or_insert(0) += u64::from(e.len);
            }
        }
        Ok(live)
    }

    /// Compacts the segment with the least live data, if less than
    /// `max_live` (0..1) of it is live.
    pub fn compact_once(&self, max_live: f64) -> Result<Compacted> {
        let seg_dir = self.dir.join("segments");
        let current = self.segments.current();
        let live = self.live_by_segment()?;
        let segs = list_segments(&seg_dir)?;
        let oldest = segs.first().copied();
        let mut best: Option<(f64, u32, u64)> = None;
        for &seg in &segs {
            let path = segment_path(&seg_dir, seg);
            let size = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
            if seg == current && self.segments.fresh_bytes() < self.segments.segment_size() / 8 {
                continue;
            }
            let ratio = live.get(&seg).copied().unwrap_or(0) as f64 / size.max(1) as f64;
            if ratio < max_live && best.is_none_or(|b| ratio < b.0) {
                best = Some((ratio, seg, size));
            }
        }
        let Some((_, seg, mut size)) = best else {
            return Ok(Compacted::default());
        };
        let path = segment_path(&seg_dir, seg);
        if seg == current {
            self.segments.seal(seg)?;
            size = std::fs::metadata(&path)
                .map_err(|e| Error::io(&path, e))?
                .len();
        }
        // No append can reach a sealed segment, so once none is in flight
        // the index knows every live record in it.
        if self.segments.has_inflight(seg) {
            return Ok(Compacted::default());
        }
        let mut out = self.rewrite(seg, Some(seg) == oldest)?;
        // A read that looked up an old position just before the index moved
        // finishes on the open handle; then the handle goes with the file,
        // so its space is really given back.
        std::thread::sleep(std::time::Duration::from_millis(500));
        self.segments.retire(seg);
        std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        fsync_dir(&seg_dir)?;
        out.segment = Some(seg);
        out.reclaimed = size;
        info!(
            segment = seg,
            moved = out.moved,
            reclaimed = size,
            "segment compacted"
        );
        Ok(out)
    }

    /// Copies the live records (and needed tombstones) of `seg` forward.
    pub(super) fn rewrite(&self, seg: u32, oldest: bool) -> Result<Compacted> {
        let seg_dir = self.dir.join("segments");
        // Live records come from the index, so a damaged one is still seen
        // (and dropped for repair) rather than skipped.
        let mut shards: Vec<(ShardKey, Entry)> = Vec::new();
        let mut after = None;
        loop {
            let page = self.index.list(after, 10_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.0);
            shards.extend(page.into_iter().filter(|(_, e)| e.pos.segment == seg));
        }
        let mut out = Compacted::default();
        let mut start = 0;
        while start < shards.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < shards.len() && (end == start || bytes < BATCH_BYTES) {
                bytes += u64::from(shards[end].1.len);
                end += 1;
            }
            self.move_batch(&shards[start..end], &mut out)?;
            start = end;
        }
        if !oldest {
            let mut tombstones: Vec<ShardKey> = Vec::new();
            scan_segment(&seg_dir, seg, 0, |_, h| {
                if h.kind == Kind::Tombstone {
                    tombstones.push(h.key);
                }
                Ok(())
            })?;
            for batch in tombstones.chunks(1024) {
                self.carry_tombstones(batch)?;
            }
        }
        Ok(out)
    }

    /// Appends fresh copies of `batch`, then points the index at them (for
    /// the keys whose index entry did not change meanwhile).
    fn move_batch(&self, batch: &[(ShardKey, Entry)], out: &mut Compacted) -> Result<()> {
        let keys: Vec<ShardKey> = batch.iter().map(|(k, _)| *k).collect();
        let _guard = self.locks.lock(&keys);
        let mut copies: Vec<(ShardKey, Entry, Vec<u8>)> = Vec::new();
        let mut dropped: Vec<ShardKey> = Vec::new();
        for &(key, old) in batch {
            if self.index.get(key)? != Some(old) {
                continue; // deleted or replaced meanwhile
            }
            match self.read(key, old, 0, old.len) {
                Ok(data) => copies.push((key, old, data)),
                Err(Error::CorruptShard { .. }) => dropped.push(key),
                Err(e) => return Err(e),
            }
        }
        let pieces: Vec<Vec<u32>> = copies.iter().map(|(_, _, d)| piece_crcs(d)).collect();
        let mut recs: Vec<NewRecord<'_>> = copies
            .iter()
            .zip(&pieces)
            .map(|((key, old, data), pieces)| NewRecord {
                kind: Kind::Shard,
                key: *key,
                crc: old.crc,
                data,
                pieces,
            })
            .collect();
        recs.extend(dropped.iter().map(|&key| NewRecord::tombstone(key)));
        if recs.is_empty() {
            return Ok(());
        }
        let appended = self.segments.append_moved(&recs)?;
        let mut changes: Vec<(ShardKey, Option<Entry>)> = copies
            .iter()
            .zip(&appended.starts)
            .map(|((key, old, _), pos)| {
                let e = Entry {
                    pos: *pos,
                    len: old.len,
                    crc: old.crc,
                };
                (*key, Some(e))
            })
            .collect();
        changes.extend(dropped.iter().map(|&k| (k, None)));
        let indexed = self.segments.wait_synced(appended.end).and_then(|()| {
            let marker = self.segments.marker_excluding(&appended.starts);
            self.index.apply(&changes, marker)
        });
        self.segments.done(&appended.starts);
        indexed?;
        if !dropped.is_empty() {
            warn!(
                shards = dropped.len(),
                "corrupt shards found while compacting; dropped for repair"
            );
            let lost: u64 = batch
                .iter()
                .filter(|(k, _)| dropped.contains(k))
                .map(|(_, e)| u64::from(e.len))
                .sum();
            let mut t = crate::segment::lock(&self.totals);
            t.0 -= lost;
            t.1 -= dropped.len() as u64;
        }
        out.moved += copies.len() as u64;
        out.corrupt.extend(dropped);
        Ok(())
    }

    /// Re-appends tombstones of keys that are still deleted.
    fn carry_tombstones(&self, keys: &[ShardKey]) -> Result<()> {
        let _guard = self.locks.lock(keys);
        let mut still: Vec<ShardKey> = Vec::new();
        for &k in keys {
            if self.index.get(k)?.is_none() {
                still.push(k);
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        let recs: Vec<NewRecord<'_>> = still.iter().map(|&key| NewRecord::tombstone(key)).collect();
        let appended = self.segments.append_moved(&recs)?;
        let synced = self.segments.wait_synced(appended.end);
        self.segments.done(&appended.starts);
        synced
    }
}
