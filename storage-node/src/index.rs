//! The shard index: RocksDB from shard key to where its record lies.
//!
//! The index is a cache of the segments: it is not fsynced (but for the
//! scan marker's write at open, which names the record format) and can always
//! be rebuilt by scanning them. Its scan marker says how far that rebuild has
//! already been done (see `store::recover`).

use std::path::{Path, PathBuf};

use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, DB};
use tessera_common::ShardKey;

use crate::{
    error::{Error, Result},
    format::{MAX_DATA_LEN, VERSION},
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
        let len = u32_at(13);
        if len > MAX_DATA_LEN {
            // A reader would allocate it before reading the record.
            return Err(bad("data length too large"));
        }
        Ok(Entry {
            pos: Pos {
                segment: u32_at(1),
                offset: (u64::from(u32_at(5)) << 32) | u64::from(u32_at(9)),
            },
            len,
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
        let bad = |why| Error::CorruptIndex {
            entry: "scan marker".into(),
            why,
        };
        // 12 bytes from nodes of record format 1; 13 since (the format
        // byte last), which nodes of format 1 refuse to start on.
        let v = v.as_ref();
        match v.get(12) {
            _ if v.len() != 12 && v.len() != 13 => return Err(bad("wrong length")),
            Some(&format) if u16::from(format) > VERSION => {
                return Err(bad("written by a newer record format"))
            }
            _ => {}
        }
        Ok(Some(Pos {
            segment: u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
            offset: u64::from_be_bytes(v[4..12].try_into().map_err(|_| bad("wrong length"))?),
        }))
    }

    /// Moves the marker to `at` (the end of the segments, just after they
    /// were replayed) and marks the index as kept by a node of this record
    /// format, durably, before the node writes anything: a node of format 1
    /// then refuses to start on this directory (it would take version 2
    /// records for damage and cut them off) rather than lose them.
    pub fn mark_format(&self, at: Pos) -> Result<()> {
        let mut b = WriteBatch::default();
        b.put(keys::SCAN_MARKER, encode_marker(at));
        let mut sync = rocksdb::WriteOptions::default();
        sync.set_sync(true);
        self.db
            .write_opt(b, &sync)
            .map_err(|e| Index::err(&self.path, e))
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
        b.put(keys::SCAN_MARKER, encode_marker(marker));
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

/// The scan marker's value: segment, offset, and the record format of the
/// node that wrote it.
fn encode_marker(marker: Pos) -> [u8; 13] {
    let mut m = [0u8; 13];
    m[..4].copy_from_slice(&marker.segment.to_be_bytes());
    m[4..12].copy_from_slice(&marker.offset.to_be_bytes());
    m[12] = VERSION as u8;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_its_record_format_and_a_newer_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let at = Pos {
            segment: 3,
            offset: 4096,
        };
        // As a node of record format 1 wrote it: 12 bytes, still read.
        let mut old = [0u8; 12];
        old[..4].copy_from_slice(&3u32.to_be_bytes());
        old[4..].copy_from_slice(&4096u64.to_be_bytes());
        idx.db.put(keys::SCAN_MARKER, old).unwrap();
        assert_eq!(idx.marker().unwrap(), Some(at));
        // Marked: 13 bytes, the last the format, which a format 1 node
        // refuses as the wrong length.
        idx.mark_format(at).unwrap();
        let v = idx.db.get(keys::SCAN_MARKER).unwrap().unwrap();
        assert_eq!((v.len(), v[12]), (13, VERSION as u8));
        assert_eq!(idx.marker().unwrap(), Some(at));
        // A format newer than this node's: refused, nothing read past it.
        let mut newer = encode_marker(at);
        newer[12] = VERSION as u8 + 1;
        idx.db.put(keys::SCAN_MARKER, newer).unwrap();
        assert!(matches!(idx.marker(), Err(Error::CorruptIndex { .. })));
        idx.db.put(keys::SCAN_MARKER, [0u8; 14]).unwrap();
        assert!(matches!(idx.marker(), Err(Error::CorruptIndex { .. })));
    }

    #[test]
    fn an_entry_claiming_more_than_a_shard_can_hold_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let idx = Index::open(dir.path()).unwrap();
        let key = ShardKey { block: 5, index: 1 };
        let mut e = Entry {
            pos: Pos {
                segment: 1,
                offset: 0,
            },
            len: MAX_DATA_LEN,
            crc: 9,
        }
        .encode();
        idx.db.put(keys::shard(key), e).unwrap();
        assert_eq!(idx.get(key).unwrap().map(|e| e.len), Some(MAX_DATA_LEN));
        e[13..17].copy_from_slice(&u32::MAX.to_be_bytes());
        idx.db.put(keys::shard(key), e).unwrap();
        assert!(matches!(idx.get(key), Err(Error::CorruptIndex { .. })));
    }

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
