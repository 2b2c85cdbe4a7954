//! [`ShardStore`]: the storage node's domain API over segments and index.
//!
//! Every method blocks (file I/O, fsync); async callers use
//! `spawn_blocking`. A put is answered only after its record is fsynced and
//! indexed; a get returns only bytes whose piece CRCs were checked.

use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    sync::Mutex,
};

use bytes::Bytes;
use tessera_common::ShardKey;
use tracing::info;

use crate::{
    error::{Error, Result},
    format::{piece_crcs, whole_crc, Kind, MAX_DATA_LEN, VERSION},
    index::{Entry, Index},
    locks::KeyLocks,
    node_id, recover,
    segment::{fsync_dir, lock, NewRecord, Segments, DIRECT_MIN, SEGMENT_SIZE},
};

/// Most entries one `list` returns.
pub const MAX_LIST: u32 = 10_000;

/// Tunables of a store. `Default` is what a node runs with.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Size at which a new segment file is started.
    pub segment_size: u64,
    /// Write large records with O_DIRECT (where the file system allows).
    pub direct_io: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_size: SEGMENT_SIZE,
            direct_io: true,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutOutcome {
    /// Appended and fsynced.
    Stored,
    /// The same bytes were already stored (a retried put); nothing written.
    AlreadyStored,
}

/// The answer to a get: the requested bytes, all verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardData {
    pub data: Bytes,
    pub shard_crc: u32,
    pub shard_len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardInfo {
    pub key: ShardKey,
    pub len: u32,
    pub crc: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStat {
    /// 0 before the first registration.
    pub node_id: u64,
    pub capacity_bytes: u64,
    /// Sum of the lengths of live shards.
    pub used_bytes: u64,
    pub shard_count: u64,
    pub format_version: u32,
    /// Bytes of segment files on disk (live shards plus garbage not yet
    /// compacted).
    pub segment_bytes: u64,
}

pub struct ShardStore {
    dir: PathBuf,
    segments: Segments,
    index: Index,
    locks: KeyLocks,
    /// (used bytes, shard count) of live shards.
    totals: Mutex<(u64, u64)>,
    node_id: Mutex<Option<u64>>,
}

impl ShardStore {
    pub fn open(dir: impl AsRef<Path>) -> Result<ShardStore> {
        ShardStore::open_with(dir, StoreOptions::default())
    }

    /// Opens (or creates) the store in `dir`, replaying the segments into
    /// the index and truncating a torn tail (see `recover`).
    pub fn open_with(dir: impl AsRef<Path>, options: StoreOptions) -> Result<ShardStore> {
        let dir = dir.as_ref().to_path_buf();
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir).map_err(|e| Error::io(&seg_dir, e))?;
        // The directories must exist after a crash before files in them count.
        fsync_dir(&dir)?;
        let index = Index::open(&dir.join("index"))?;
        let last = recover::recover(&seg_dir, &index)?;
        let segments = Segments::open(&seg_dir, last, options.segment_size, options.direct_io)?;
        index.mark_format(segments.marker_excluding(&[]))?;
        let totals = index.totals()?;
        let node_id = node_id::load(&dir)?;
        info!(dir = %dir.display(), shards = totals.1, used_bytes = totals.0, "shard store open");
        Ok(ShardStore {
            dir,
            segments,
            index,
            locks: KeyLocks::default(),
            totals: Mutex::new(totals),
            node_id: Mutex::new(node_id),
        })
    }

    /// Stores `data` as shard `key` durably. `crc` is the writer's CRC32 of
    /// `data`; a mismatch stores nothing. A key already stored with the same
    /// CRC is not rewritten (unless its stored copy is corrupt); with another
    /// CRC it is refused.
    pub fn put(&self, key: ShardKey, data: &[u8], crc: u32) -> Result<PutOutcome> {
        let pieces = piece_crcs(data);
        let got = whole_crc(&pieces, data.len());
        if got != crc {
            return Err(Error::CrcMismatch {
                key,
                expected: crc,
                got,
            });
        }
        if data.len() > MAX_DATA_LEN as usize {
            return Err(Error::ShardTooLarge {
                key,
                len: data.len(),
                max: MAX_DATA_LEN,
            });
        }
        let _guard = self.locks.lock(&[key]);
        let mut replaced = None;
        if let Some(e) = self.index.get(key)? {
            if e.crc != crc || e.len as usize != data.len() {
                return Err(Error::AlreadyExists {
                    key,
                    stored: e.crc,
                    offered: crc,
                });
            }
            match self.read(key, e, 0, e.len) {
                Ok(_) => return Ok(PutOutcome::AlreadyStored),
                // The stored copy rotted: this put is the repair.
                Err(Error::CorruptShard { .. }) => replaced = Some(e),
                Err(other) => return Err(other),
            }
        }
        let rec = NewRecord {
            kind: Kind::Shard,
            key,
            crc,
            data,
            pieces: &pieces,
        };
        let appended = self.segments.append(&[rec])?;
        let entry = Entry {
            pos: appended.starts[0],
            len: data.len() as u32,
            crc,
        };
        let indexed = self.segments.wait_synced(appended.end).and_then(|()| {
            let marker = self.segments.marker_excluding(&appended.starts);
            self.index.apply(&[(key, Some(entry))], marker)
        });
        self.segments.done(&appended.starts);
        indexed?;
        let mut t = lock(&self.totals);
        match replaced {
            Some(old) => t.0 = t.0 - u64::from(old.len) + u64::from(entry.len),
            None => *t = (t.0 + u64::from(entry.len), t.1 + 1),
        }
        Ok(PutOutcome::Stored)
    }

    /// Bytes `[offset, offset+len)` of shard `key` (`len` 0: to the end).
    pub fn get(&self, key: ShardKey, offset: u32, len: u32) -> Result<ShardData> {
        let e = self.index.get(key)?.ok_or(Error::ShardNotFound { key })?;
        let end = if len == 0 {
            u64::from(e.len)
        } else {
            u64::from(offset) + u64::from(len)
        };
        if offset > e.len || end > u64::from(e.len) {
            return Err(Error::RangeOutOfBounds {
                key,
                offset,
                len,
                shard_len: e.len,
            });
        }
        let whole = offset == 0 && end == u64::from(e.len);
        let direct = if whole && u64::from(e.len) >= DIRECT_MIN {
            self.read_whole_direct(key, e)?
        } else {
            None
        };
        let data = match direct {
            Some(d) => d,
            None => Bytes::from(self.read(key, e, offset, end as u32)?),
        };
        Ok(ShardData {
            data,
            shard_crc: e.crc,
            shard_len: e.len,
        })
    }

    /// Deletes `keys` durably (tombstones, fsynced); returns how many existed.
    pub fn delete(&self, keys: &[ShardKey]) -> Result<u32> {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        keys.dedup();
        if keys.is_empty() {
            return Ok(0);
        }
        let _guard = self.locks.lock(&keys);
        let mut existing = Vec::new();
        for &key in &keys {
            if let Some(e) = self.index.get(key)? {
                existing.push((key, e));
            }
        }
        // A tombstone even for absent keys: a later rebuild then cannot
        // resurrect a record that was appended but never acknowledged.
        let recs: Vec<_> = keys.iter().map(|&key| NewRecord::tombstone(key)).collect();
        let appended = self.segments.append(&recs)?;
        let removed = self.segments.wait_synced(appended.end).and_then(|()| {
            let marker = self.segments.marker_excluding(&appended.starts);
            let changes: Vec<_> = existing.iter().map(|&(k, _)| (k, None)).collect();
            self.index.apply(&changes, marker)
        });
        self.segments.done(&appended.starts);
        removed?;
        let mut t = lock(&self.totals);
        t.0 -= existing.iter().map(|(_, e)| u64::from(e.len)).sum::<u64>();
        t.1 -= existing.len() as u64;
        Ok(existing.len() as u32)
    }

    /// Shards after `after` in (block, index) order, at most `limit` (0 or
    /// more than [`MAX_LIST`] means [`MAX_LIST`]).
    pub fn list(&self, after: Option<ShardKey>, limit: u32) -> Result<Vec<ShardInfo>> {
        let limit = if limit == 0 {
            MAX_LIST
        } else {
            limit.min(MAX_LIST)
        };
        let entries = self.index.list(after, limit as usize)?;
        Ok(entries
            .into_iter()
            .map(|(key, e)| ShardInfo {
                key,
                len: e.len,
                crc: e.crc,
            })
            .collect())
    }

    pub fn stat(&self) -> Result<StoreStat> {
        let (used_bytes, shard_count) = *lock(&self.totals);
        Ok(StoreStat {
            node_id: self.node_id().unwrap_or(0),
            capacity_bytes: capacity(&self.dir)?,
            used_bytes,
            shard_count,
            format_version: VERSION.into(),
            segment_bytes: self.segment_bytes()?,
        })
    }

    fn segment_bytes(&self) -> Result<u64> {
        let dir = self.dir.join("segments");
        let mut total = 0;
        for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let e = e.map_err(|e| Error::io(&dir, e))?;
            // A file removed meanwhile (compaction) counts as nothing.
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(total)
    }

    /// The id the metadata service gave this node, once registered.
    pub fn node_id(&self) -> Option<u64> {
        *lock(&self.node_id)
    }

    /// Durably records the node id (see `node_id::save`).
    pub fn set_node_id(&self, id: u64) -> Result<()> {
        let mut cur = lock(&self.node_id);
        if *cur != Some(id) {
            node_id::save(&self.dir, id)?;
            *cur = Some(id);
        }
        Ok(())
    }

    /// fsyncs issued since open: group commit keeps this well below the
    /// number of concurrent puts.
    pub fn fsync_count(&self) -> u64 {
        self.segments.fsync_count()
    }
}

/// Total bytes of the file system holding `dir`.
fn capacity(dir: &Path) -> Result<u64> {
    let c = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| Error::io(dir, std::io::Error::other("path contains NUL")))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(Error::io(dir, std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

mod compact;
mod read;
#[cfg(test)]
mod tests;

pub use compact::Compacted;
