//! The shard index: RocksDB from shard key to where its record lies.
//!
//! The index is a cache of the segments: it is never fsynced and can always
//! be rebuilt by scanning them. Its scan marker says how far that rebuild has
//! already been done (see `store::recover`).

use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB};
use tessera_common::ShardKey;

use crate::{
    error::{Error, Result},
    keys,
    segment::Pos,
};

/// Where a live shard is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Start of the record (its header), not of the data.
    pub pos: Pos,
    pub len: u32,
    pub crc: u32,
}

const ENTRY_VERSION: u8 = 1;
const ENTRY_LEN: usize = 21;

impl Entry {
    fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut v = [0u8; ENTRY_LEN];
        v[0] = ENTRY_VERSION;
        v[1..5].copy_from_slice(&self.pos.segment.to_be_bytes());
        v[5..13].copy_from_slice(&self.pos.offset.to_be_bytes());
        v[13..17].copy_from_slice(&self.len.to_be_bytes());
        v[17..21].copy_from_slice(&self.crc.to_be_bytes());
        v
    }

    fn decode(key: ShardKey, v: &[u8]) -> Result<Entry> {
        let bad = |why| Error::CorruptIndex {
            entry: key.to_string(),
            why,
        };
        let v: &[u8; ENTRY_LEN] = v.try_into().map_err(|_| bad("wrong length"))?;
        if v[0] != ENTRY_VERSION {
            return Err(bad("unknown entry version"));
        }
        let u32_at = |i: usize| u32::from_be_bytes([v[i], v[i + 1], v[i + 2], v[i + 3]]);
        Ok(Entry {
            pos: Pos {
                segment: u32_at(1),
                offset: (u64::from(u32_at(5)) << 32) | u64::from(u32_at(9)),
            },
            len: u32_at(13),
            crc: u32_at(17),
        })
    }
}

pub struct Index {
    db: DB,
    path: PathBuf,
}

impl Index {
    pub fn open(path: &Path) -> Result<Index> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_max_background_jobs(2);
        let db = DB::open(&opts, path).map_err(|e| Index::err(path, e))?;
        Ok(Index {
            db,
            path: path.to_path_buf(),
        })
    }

    fn err(path: &Path, source: rocksdb::Error) -> Error {
        Error::Index {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn get(&self, key: ShardKey) -> Result<Option<Entry>> {
        let v = self
            .db
            .get_pinned(keys::shard(key))
            .map_err(|e| Index::err(&self.path, e))?;
        v.map(|v| Entry::decode(key, &v)).transpose()
    }

    /// How far into the segments the index is complete; `None` for a new or
    /// wiped index, which must be rebuilt from the first segment.
    pub fn marker(&self) -> Result<Option<Pos>> {
        let Some(v) = self
            .db
            .get_pinned(keys::SCAN_MARKER)
            .map_err(|e| Index::err(&self.path, e))?
        else {
            return Ok(None);
        };
        let bad = || Error::CorruptIndex {
            entry: "scan marker".into(),
            why: "wrong length",
        };
        let v: &[u8; 12] = v.as_ref().try_into().map_err(|_| bad())?;
        Ok(Some(Pos {
            segment: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            offset: u64::from_be_bytes(v[4..12].try_into().map_err(|_| bad())?),
        }))
    }

    /// Drops every entry and the marker, before a rebuild from scratch.
    pub fn clear(&self) -> Result<()> {
        let mut b = WriteBatch::default();
        b.delete_range(
            &keys::shard(ShardKey { block: 0, index: 0 })[..],
            &keys::shard_end()[..],
        );
        b.delete(keys::SCAN_MARKER);
        self.db.write(b).map_err(|e| Index::err(&self.path, e))
    }

    /// Applies `changes` (None = delete) and moves the marker, atomically.
    pub fn apply(&self, changes: &[(ShardKey, Option<Entry>)], marker: Pos) -> Result<()> {
        let mut b = WriteBatch::default();
        for (key, entry) in changes {
            match entry {
                Some(e) => b.put(keys::shard(*key), e.encode()),
                None => b.delete(keys::shard(*key)),
            }
        }
        let mut m = [0u8; 12];
        m[..4].copy_from_slice(&marker.segment.to_be_bytes());
        m[4..].copy_from_slice(&marker.offset.to_be_bytes());
        b.put(keys::SCAN_MARKER, m);
        // Not synced: the segments are the durable truth, and the marker
        // only ever covers records that are already fsynced there.
        self.db.write(b).map_err(|e| Index::err(&self.path, e))
    }

    /// Up to `limit` entries after `after`, in key order.
    pub fn list(&self, after: Option<ShardKey>, limit: usize) -> Result<Vec<(ShardKey, Entry)>> {
        let start = after.map_or([keys::SHARD; 1].to_vec(), |k| keys::shard(k).to_vec());
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(keys::shard_end());
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_opt(IteratorMode::From(&start[..], Direction::Forward), ro)
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| Index::err(&self.path, e))?;
            let Some(key) = keys::parse_shard(&k) else {
                return Err(Error::CorruptIndex {
                    entry: format!("{k:?}"),
                    why: "bad shard key",
                });
            };
            if Some(key) == after {
                continue;
            }
            out.push((key, Entry::decode(key, &v)?));
        }
        Ok(out)
    }

    /// (sum of data lengths, number of shards) over every entry.
    pub fn totals(&self) -> Result<(u64, u64)> {
        let (mut used, mut count) = (0u64, 0u64);
        let mut after = None;
        loop {
            let page = self.list(after, 10_000)?;
            let Some(last) = page.last() else {
                return Ok((used, count));
            };
            after = Some(last.0);
            count += page.len() as u64;
            used += page.iter().map(|(_, e)| u64::from(e.len)).sum::<u64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_marker_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        assert_eq!(idx.marker().unwrap(), None);
        let e = |n: u64| Entry {
            pos: Pos {
                segment: 1,
                offset: n << 33,
            },
            len: n as u32,
            crc: 7,
        };
        let k = |block, index| ShardKey { block, index };
        let changes: Vec<_> = [(k(2, 0), 1), (k(1, 3), 2), (k(1, 200), 3)]
            .iter()
            .map(|&(k, n)| (k, Some(e(n))))
            .collect();
        idx.apply(
            &changes,
            Pos {
                segment: 1,
                offset: 99,
            },
        )
        .unwrap();
        assert_eq!(idx.get(k(1, 3)).unwrap(), Some(e(2)));
        assert_eq!(
            idx.marker().unwrap(),
            Some(Pos {
                segment: 1,
                offset: 99
            })
        );
        let all: Vec<_> = idx
            .list(None, 10)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(all, vec![k(1, 3), k(1, 200), k(2, 0)]);
        let rest: Vec<_> = idx
            .list(Some(k(1, 3)), 1)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(rest, vec![k(1, 200)]);
        assert_eq!(idx.totals().unwrap(), (6, 3));
        idx.apply(
            &[(k(2, 0), None)],
            Pos {
                segment: 2,
                offset: 0,
            },
        )
        .unwrap();
        assert_eq!(idx.get(k(2, 0)).unwrap(), None);
        idx.clear().unwrap();
        assert_eq!(
            (idx.marker().unwrap(), idx.totals().unwrap()),
            (None, (0, 0))
        );
    }
}
