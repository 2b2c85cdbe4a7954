use std::{
    fs::OpenOptions,
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use super::*;
use crate::format::PIECE;
use crate::segment::segment_path;
use tessera_common::crc32;

fn key(block: u64, index: u8) -> ShardKey {
    ShardKey { block, index }
}

/// Deterministic, non-repeating test bytes.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn put(s: &ShardStore, k: ShardKey, data: &[u8]) -> PutOutcome {
    s.put(k, data, crc32(data)).unwrap()
}

fn full(s: &ShardStore, k: ShardKey) -> Result<Vec<u8>> {
    s.get(k, 0, 0).map(|d| d.data.to_vec())
}

fn seg(dir: &Path, n: u32) -> PathBuf {
    segment_path(&dir.join("segments"), n)
}

#[test]
fn put_get_round_trip_and_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    let data = bytes(1, 3 * PIECE + 1234);
    assert_eq!(put(&s, key(1, 0), &data), PutOutcome::Stored);
    let got = s.get(key(1, 0), 0, 0).unwrap();
    assert_eq!(
        got,
        ShardData {
            data: data.clone().into(),
            shard_crc: crc32(&data),
            shard_len: data.len() as u32
        }
    );
    let p = PIECE as u32;
    for (off, len) in [
        (0, 1),
        (p - 1, 2),
        (p, p),
        (p - 10, p + 20),
        (3 * p, 1234),
        (3 * p + 1233, 1),
        (5, 0),
        (data.len() as u32, 0),
    ] {
        let want_end = if len == 0 {
            data.len()
        } else {
            (off + len) as usize
        };
        let got = s.get(key(1, 0), off, len).unwrap();
        assert_eq!(got.data, data[off as usize..want_end], "range {off}+{len}");
    }
    let beyond = s.get(key(1, 0), 3 * p, 1235).unwrap_err();
    assert!(matches!(beyond, Error::RangeOutOfBounds { .. }), "{beyond}");
    assert!(matches!(
        s.get(key(1, 0), data.len() as u32 + 1, 0),
        Err(Error::RangeOutOfBounds { .. })
    ));
    assert!(matches!(
        s.get(key(1, 1), 0, 0),
        Err(Error::ShardNotFound { .. })
    ));
    // An empty shard is a shard too.
    put(&s, key(2, 0), &[]);
    assert_eq!(full(&s, key(2, 0)).unwrap(), Vec::<u8>::new());
    let st = s.stat().unwrap();
    assert_eq!(
        (st.shard_count, st.used_bytes, st.format_version),
        (2, data.len() as u64, 2)
    );
    assert!(st.capacity_bytes > 0);
}

#[test]
fn idempotent_conflicting_and_bad_crc_puts() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    let data = bytes(2, 1000);
    assert_eq!(put(&s, key(1, 0), &data), PutOutcome::Stored);
    let len = std::fs::metadata(seg(dir.path(), 1)).unwrap().len();
    assert_eq!(put(&s, key(1, 0), &data), PutOutcome::AlreadyStored);
    assert_eq!(
        std::fs::metadata(seg(dir.path(), 1)).unwrap().len(),
        len,
        "a retried put wrote"
    );
    let other = bytes(3, 1000);
    let e = s.put(key(1, 0), &other, crc32(&other)).unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    assert_eq!(full(&s, key(1, 0)).unwrap(), data);
    let e = s.put(key(2, 0), &data, crc32(&data) ^ 1).unwrap_err();
    assert!(matches!(e, Error::CrcMismatch { .. }), "{e}");
    assert!(matches!(
        full(&s, key(2, 0)),
        Err(Error::ShardNotFound { .. })
    ));
    assert_eq!(
        std::fs::metadata(seg(dir.path(), 1)).unwrap().len(),
        len,
        "a refused put wrote"
    );
    assert_eq!(s.stat().unwrap().shard_count, 1);
}

#[test]
fn reopen_keeps_acknowledged_shards_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_size: 300_000,
        ..Default::default()
    };
    let shards: Vec<_> = (0..20)
        .map(|i| (key(i, (i % 3) as u8), bytes(i, 50_000 + i as usize)))
        .collect();
    {
        let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
        for (k, d) in &shards {
            put(&s, *k, d);
        }
        assert_eq!(
            s.delete(&[shards[3].0, shards[3].0, key(999, 0)]).unwrap(),
            1
        );
    }
    assert!(seg(dir.path(), 3).exists(), "segments should have rolled");
    let s = ShardStore::open_with(dir.path(), opts).unwrap();
    for (i, (k, d)) in shards.iter().enumerate() {
        if i == 3 {
            assert!(matches!(full(&s, *k), Err(Error::ShardNotFound { .. })));
        } else {
            assert_eq!(&full(&s, *k).unwrap(), d, "shard {i}");
        }
    }
    let st = s.stat().unwrap();
    assert_eq!(st.shard_count, 19);
    assert_eq!(
        st.used_bytes,
        shards
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 3)
            .map(|(_, (_, d))| d.len() as u64)
            .sum::<u64>()
    );
    let listed: Vec<_> = s
        .list(None, 0)
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    let mut want: Vec<_> = shards
        .iter()
        .map(|(k, _)| *k)
        .filter(|k| *k != shards[3].0)
        .collect();
    want.sort();
    assert_eq!(listed, want);
    let page: Vec<_> = s
        .list(Some(want[4]), 3)
        .unwrap()
        .into_iter()
        .map(|i| i.key)
        .collect();
    assert_eq!(page, want[5..8]);
}

#[test]
fn torn_tail_is_truncated() {
    for garbage in [bytes(9, 10), vec![0u8; 5000], b"TSRD\x01\x00".to_vec()] {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (bytes(4, 70_000), bytes(5, 100));
        {
            let s = ShardStore::open(dir.path()).unwrap();
            put(&s, key(1, 0), &a);
            put(&s, key(2, 0), &b);
        }
        let path = seg(dir.path(), 1);
        let good_len = std::fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&garbage)
            .unwrap();
        let s = ShardStore::open(dir.path()).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
        assert_eq!(full(&s, key(1, 0)).unwrap(), a);
        assert_eq!(full(&s, key(2, 0)).unwrap(), b);
        // Appends continue where the valid records end.
        put(&s, key(3, 0), &b);
        drop(s);
        let s = ShardStore::open(dir.path()).unwrap();
        assert_eq!(full(&s, key(3, 0)).unwrap(), b);
    }
}

#[test]
fn half_written_record_is_dropped_not_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (bytes(6, 1000), bytes(7, 200_000));
    {
        let s = ShardStore::open(dir.path()).unwrap();
        put(&s, key(1, 0), &a);
        put(&s, key(2, 0), &b);
    }
    // Crash mid-append of shard 2: its header and part of its data made it.
    let path = seg(dir.path(), 1);
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 70_000)
        .unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(full(&s, key(1, 0)).unwrap(), a);
    assert!(matches!(
        full(&s, key(2, 0)),
        Err(Error::ShardNotFound { .. })
    ));
    // The retry of the unacknowledged put stores it for real.
    assert_eq!(put(&s, key(2, 0), &b), PutOutcome::Stored);
    assert_eq!(full(&s, key(2, 0)).unwrap(), b);
}

#[test]
fn index_is_rebuilt_from_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_size: 100_000,
        ..Default::default()
    };
    let shards: Vec<_> = (0..12)
        .map(|i| (key(i / 2, (i % 2) as u8), bytes(100 + i, 30_000)))
        .collect();
    {
        let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
        for (k, d) in &shards {
            put(&s, *k, d);
        }
        s.delete(&[shards[0].0, shards[7].0]).unwrap();
        // Deleted, then stored again with other bytes: the later record wins.
        put(&s, shards[7].0, &bytes(7, 10));
    }
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = ShardStore::open_with(dir.path(), opts).unwrap();
    assert!(matches!(
        full(&s, shards[0].0),
        Err(Error::ShardNotFound { .. })
    ));
    assert_eq!(full(&s, shards[7].0).unwrap(), bytes(7, 10));
    for (k, d) in shards
        .iter()
        .filter(|(k, _)| *k != shards[0].0 && *k != shards[7].0)
    {
        assert_eq!(&full(&s, *k).unwrap(), d);
    }
    assert_eq!(s.stat().unwrap().shard_count, 11);
}

#[test]
fn flipped_data_byte_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let data = bytes(8, 3 * PIECE);
    let before = bytes(9, 500);
    let s = ShardStore::open(dir.path()).unwrap();
    put(&s, key(1, 0), &before);
    put(&s, key(2, 0), &data);
    let path = seg(dir.path(), 1);
    // Flip one byte in piece 1 of shard 2 (the data ends the file).
    let at = std::fs::metadata(&path).unwrap().len() - data.len() as u64 + PIECE as u64 + 17;
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut b = [0u8; 1];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, at).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[b[0] ^ 0x10], at).unwrap();
    let e = full(&s, key(2, 0)).unwrap_err();
    assert!(
        matches!(e, Error::CorruptShard { key: k, .. } if k == key(2, 0)),
        "{e}"
    );
    assert_eq!(tonic::Status::from(e).code(), tonic::Code::DataLoss);
    assert!(matches!(
        s.get(key(2, 0), PIECE as u32 + 100, 10),
        Err(Error::CorruptShard { .. })
    ));
    let p = PIECE as u32;
    assert_eq!(s.get(key(2, 0), 10, 100).unwrap().data, data[10..110]);
    assert_eq!(s.get(key(2, 0), 2 * p, p).unwrap().data, data[2 * PIECE..]);
    assert_eq!(full(&s, key(1, 0)).unwrap(), before);
    // A retried put of the right bytes repairs the shard.
    assert_eq!(put(&s, key(2, 0), &data), PutOutcome::Stored);
    assert_eq!(full(&s, key(2, 0)).unwrap(), data);
    assert_eq!(
        s.stat().unwrap().used_bytes,
        (data.len() + before.len()) as u64
    );
}

#[test]
fn damaged_header_is_skipped_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (bytes(10, 100), bytes(11, 100), bytes(12, 100));
    {
        let s = ShardStore::open(dir.path()).unwrap();
        put(&s, key(1, 0), &a);
        put(&s, key(2, 0), &b);
        put(&s, key(3, 0), &c);
    }
    let path = seg(dir.path(), 1);
    let mut file = std::fs::read(&path).unwrap();
    let rec = file.len() / 3;
    // Wreck the header of the middle record (magic, length, CRC table).
    for i in [0, 5, 20, 22, 36] {
        file[rec + i] ^= 0xff;
    }
    std::fs::write(&path, &file).unwrap();
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(full(&s, key(1, 0)).unwrap(), a);
    assert!(matches!(
        full(&s, key(2, 0)),
        Err(Error::ShardNotFound { .. })
    ));
    assert_eq!(
        full(&s, key(3, 0)).unwrap(),
        c,
        "a record after the damage was lost"
    );
    drop(s);
    // With the index intact, the damaged header is found at read time.
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    put(&s, key(1, 0), &a);
    let path = seg(dir.path(), 1);
    let mut file = std::fs::read(&path).unwrap();
    file[2] ^= 1;
    std::fs::write(&path, &file).unwrap();
    assert!(matches!(
        full(&s, key(1, 0)),
        Err(Error::CorruptShard { .. })
    ));
}

#[test]
fn concurrent_puts_share_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let s = Arc::new(ShardStore::open(dir.path()).unwrap());
    let (threads, per) = (8u64, 25u64);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..per {
                    let d = bytes(t * 1000 + i, 20_000);
                    s.put(key(t * 1000 + i, 0), &d, crc32(&d)).unwrap();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let fsyncs = s.fsync_count();
    assert!(
        fsyncs < threads * per,
        "{fsyncs} fsyncs for {} puts",
        threads * per
    );
    drop(s);
    let s = ShardStore::open(dir.path()).unwrap();
    for t in 0..threads {
        for i in 0..per {
            assert_eq!(
                full(&s, key(t * 1000 + i, 0)).unwrap(),
                bytes(t * 1000 + i, 20_000)
            );
        }
    }
    assert_eq!(s.stat().unwrap().shard_count, threads * per);
}

#[test]
fn node_id_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(s.node_id(), None);
    s.set_node_id(5).unwrap();
    drop(s);
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!((s.node_id(), s.stat().unwrap().node_id), (Some(5), 5));
}

fn segments_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn compaction_gives_space_back_and_nothing_resurrects() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_size: 100_000,
        ..Default::default()
    };
    let shards: Vec<_> = (0..40)
        .map(|i| (key(i, 0), bytes(300 + i, 20_000)))
        .collect();
    let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
    for (k, d) in &shards {
        put(&s, *k, d);
    }
    // Delete 3 of every 4, then re-put one deleted key with other bytes.
    let gone: Vec<ShardKey> = shards
        .iter()
        .filter(|(k, _)| k.block % 4 != 0)
        .map(|(k, _)| *k)
        .collect();
    s.delete(&gone).unwrap();
    put(&s, key(1, 0), &bytes(1, 500));
    let before = segments_bytes(dir.path());
    let mut rounds = 0;
    while s.compact_once(0.5).unwrap().segment.is_some() {
        rounds += 1;
        assert!(rounds < 100, "compaction does not converge");
    }
    let after = segments_bytes(dir.path());
    assert!(rounds > 0);
    assert!(after * 2 < before, "{before} -> {after} bytes");
    let check = |s: &ShardStore| {
        for (k, d) in &shards {
            if *k == key(1, 0) {
                assert_eq!(full(s, *k).unwrap(), bytes(1, 500));
            } else if k.block % 4 == 0 {
                assert_eq!(&full(s, *k).unwrap(), d, "{k}");
            } else {
                assert!(
                    matches!(full(s, *k), Err(Error::ShardNotFound { .. })),
                    "{k} came back"
                );
            }
        }
        assert_eq!(s.stat().unwrap().shard_count, 11);
    };
    check(&s);
    drop(s);
    let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
    check(&s);
    drop(s);
    // Rebuilding the index from what is left of the log gives the same.
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    let s = ShardStore::open_with(dir.path(), opts).unwrap();
    check(&s);
}

#[test]
fn a_corrupt_live_shard_is_dropped_for_repair_not_copied() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_size: 100_000,
        ..Default::default()
    };
    let s = ShardStore::open_with(dir.path(), opts).unwrap();
    for i in 0..12 {
        put(&s, key(i, 0), &bytes(i, 20_000));
    }
    s.delete(&(1..5).map(|i| key(i, 0)).collect::<Vec<_>>())
        .unwrap();
    // Rot the first shard of segment 1 (the oldest, mostly garbage now).
    let e = s.index.get(key(0, 0)).unwrap().unwrap();
    let f = OpenOptions::new()
        .write(true)
        .open(seg(dir.path(), e.pos.segment))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"rot", e.pos.offset + 200).unwrap();
    let out = s.compact_once(0.9).unwrap();
    assert_eq!(out.corrupt, vec![key(0, 0)]);
    assert!(matches!(
        full(&s, key(0, 0)),
        Err(Error::ShardNotFound { .. })
    ));
    // A repair can store it again.
    put(&s, key(0, 0), &bytes(0, 20_000));
    assert_eq!(full(&s, key(0, 0)).unwrap(), bytes(0, 20_000));
}

#[test]
fn a_crash_between_copying_and_removing_a_segment_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_size: 100_000,
        ..Default::default()
    };
    let shards: Vec<_> = (0..12)
        .map(|i| (key(i, 0), bytes(500 + i, 20_000)))
        .collect();
    {
        let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
        for (k, d) in &shards {
            put(&s, *k, d);
        }
        s.delete(&[key(1, 0), key(2, 0)]).unwrap();
        // Segment 1's live records are copied forward, then the "crash":
        // the old segment is never removed.
        s.rewrite(1, true).unwrap();
    }
    for rebuild in [false, true] {
        if rebuild {
            std::fs::remove_dir_all(dir.path().join("index")).unwrap();
        }
        let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
        for (k, d) in &shards {
            if *k == key(1, 0) || *k == key(2, 0) {
                assert!(
                    matches!(full(&s, *k), Err(Error::ShardNotFound { .. })),
                    "{k} came back"
                );
            } else {
                assert_eq!(&full(&s, *k).unwrap(), d, "{k}");
            }
        }
        assert_eq!(s.stat().unwrap().shard_count, 10);
        // And compaction later finishes the job.
        while s.compact_once(0.5).unwrap().segment.is_some() {}
        for (k, d) in shards.iter().filter(|(k, _)| k.block > 2 || k.block == 0) {
            assert_eq!(&full(&s, *k).unwrap(), d, "{k}");
        }
    }
}

#[test]
fn a_mostly_dead_open_segment_is_sealed_and_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        segment_size: 100_000,
        ..Default::default()
    };
    let s = ShardStore::open_with(dir.path(), opts.clone()).unwrap();
    for i in 0..3 {
        put(&s, key(i, 0), &bytes(i, 20_000));
    }
    s.delete(&[key(0, 0), key(1, 0)]).unwrap();
    // Nothing more is written: segment 1 never fills, yet its garbage goes.
    let before = segments_bytes(dir.path());
    assert_eq!(s.compact_once(0.5).unwrap().segment, Some(1));
    let after = segments_bytes(dir.path());
    assert!(after * 2 < before, "{before} -> {after} bytes");
    // What compaction moved into the new segment does not make it a
    // candidate again.
    assert_eq!(s.compact_once(0.5).unwrap().segment, None);
    let check = |s: &ShardStore| {
        assert_eq!(full(s, key(2, 0)).unwrap(), bytes(2, 20_000));
        for i in 0..2 {
            assert!(matches!(
                full(s, key(i, 0)),
                Err(Error::ShardNotFound { .. })
            ));
        }
    };
    check(&s);
    put(&s, key(3, 0), &bytes(3, 1000));
    drop(s);
    let s = ShardStore::open_with(dir.path(), opts).unwrap();
    check(&s);
    assert_eq!(full(&s, key(3, 0)).unwrap(), bytes(3, 1000));
}

#[test]
fn a_segment_with_a_put_not_yet_indexed_is_not_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let s = ShardStore::open_with(
        dir.path(),
        StoreOptions {
            segment_size: 100_000,
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..4 {
        put(&s, key(i, 0), &bytes(i, 20_000));
    }
    s.delete(&(0..4).map(|i| key(i, 0)).collect::<Vec<_>>())
        .unwrap();
    // A put stopped between its append and its index update, as `put` does
    // them, the last record of segment 1...
    let data = bytes(9, 1000);
    let pieces = piece_crcs(&data);
    let crc = crc32(&data);
    let appended = s
        .segments
        .append(&[NewRecord {
            kind: Kind::Shard,
            key: key(9, 0),
            crc,
            data: &data,
            pieces: &pieces,
        }])
        .unwrap();
    assert_eq!(appended.starts[0].segment, 1);
    // ...then another put seals segment 1, which now looks all garbage.
    put(&s, key(10, 0), &bytes(10, 20_000));
    assert_eq!(s.segments.current(), 2);
    assert_eq!(s.compact_once(0.5).unwrap().segment, None);
    // The first put finishes; only now may segment 1 go.
    s.segments.wait_synced(appended.end).unwrap();
    let entry = Entry {
        pos: appended.starts[0],
        len: 1000,
        crc,
    };
    let marker = s.segments.marker_excluding(&appended.starts);
    s.index.apply(&[(key(9, 0), Some(entry))], marker).unwrap();
    s.segments.done(&appended.starts);
    assert_eq!(s.compact_once(0.5).unwrap().segment, Some(1));
    assert_eq!(full(&s, key(9, 0)).unwrap(), data);
    assert_eq!(full(&s, key(10, 0)).unwrap(), bytes(10, 20_000));
}

#[test]
fn direct_and_buffered_records_interleave_and_survive_reopen_and_rebuild() {
    use crate::{aligned::ALIGN, segment::DIRECT_MIN};
    let dir = tempfile::tempdir().unwrap();
    let shards: Vec<_> = (0..12u64)
        .map(|i| {
            let len = if i % 3 == 0 {
                100 + i as usize
            } else {
                150_000 + 7 * i as usize
            };
            (key(i, 0), bytes(i, len))
        })
        .collect();
    let buffered = StoreOptions {
        direct_io: false,
        ..Default::default()
    };
    // Written by a node without O_DIRECT first (an older one, or another
    // file system), then appended to with it: one segment holds both.
    {
        let s = ShardStore::open_with(dir.path(), buffered).unwrap();
        for (k, d) in &shards[..4] {
            put(&s, *k, d);
        }
    }
    let aligned = |s: &ShardStore, k: ShardKey| {
        s.index
            .get(k)
            .unwrap()
            .unwrap()
            .pos
            .offset
            .is_multiple_of(ALIGN as u64)
    };
    {
        let s = ShardStore::open(dir.path()).unwrap();
        for (k, d) in &shards[4..8] {
            put(&s, *k, d);
        }
        assert_eq!(s.delete(&[key(5, 0)]).unwrap(), 1);
        // The last record is a direct one: the segment ends in padding.
        for (k, d) in &shards[8..] {
            put(&s, *k, d);
        }
        for (k, d) in &shards[4..] {
            if *k != key(5, 0) && d.len() as u64 >= DIRECT_MIN {
                assert!(aligned(&s, *k), "direct record {k} is not 4 KiB aligned");
            }
        }
    }
    let path = seg(dir.path(), 1);
    let len = std::fs::metadata(&path).unwrap().len();
    let check = |s: &ShardStore| {
        for (k, d) in &shards {
            if *k == key(5, 0) {
                assert!(matches!(full(s, *k), Err(Error::ShardNotFound { .. })));
            } else {
                assert_eq!(&full(s, *k).unwrap(), d, "{k}");
            }
        }
    };
    check(&ShardStore::open(dir.path()).unwrap());
    // Padding is not damage: nothing is cut, and a rebuilt index finds
    // every record.
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    std::fs::remove_dir_all(dir.path().join("index")).unwrap();
    check(&ShardStore::open(dir.path()).unwrap());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
}

#[test]
fn a_torn_direct_record_is_cut_with_the_padding_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (bytes(1, 1000), bytes(2, 300_000));
    {
        let s = ShardStore::open(dir.path()).unwrap();
        put(&s, key(1, 0), &a);
    }
    let path = seg(dir.path(), 1);
    let good_len = std::fs::metadata(&path).unwrap().len();
    {
        let s = ShardStore::open(dir.path()).unwrap();
        put(&s, key(2, 0), &b);
    }
    // A crash in the middle of the direct write of b.
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 100_000)
        .unwrap();
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(full(&s, key(1, 0)).unwrap(), a);
    assert!(matches!(
        full(&s, key(2, 0)),
        Err(Error::ShardNotFound { .. })
    ));
    assert_eq!(std::fs::metadata(&path).unwrap().len(), good_len);
    put(&s, key(2, 0), &b);
    drop(s);
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(full(&s, key(2, 0)).unwrap(), b);
}

/// A segment as a node of format version 1 wrote it (64 KiB pieces): its
/// shards still read, whole and in ranges, after an upgrade; a flipped
/// byte in one of its pieces is found; new shards beside them are version
/// 2; everything reads again after a reopen.
#[test]
fn version_1_records_read_after_an_upgrade() {
    use crate::format::{Header, Kind};
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("segments")).unwrap();
    let small = bytes(21, 10_000);
    let large = bytes(22, 200_000);
    let mut segment = Vec::new();
    for (k, data) in [(key(1, 0), &small), (key(2, 0), &large)] {
        let h = Header {
            version: 1,
            kind: Kind::Shard,
            key: k,
            segment: 1,
            offset: segment.len() as u64,
            data_len: data.len() as u32,
            shard_crc: crc32(data),
        };
        let pieces: Vec<u32> = data.chunks(64 << 10).map(crc32).collect();
        segment.extend_from_slice(&h.encode(&pieces));
        segment.extend_from_slice(data);
    }
    // The large record is last: a read of the longest record its length
    // allows runs past the end of the file.
    std::fs::write(seg(dir.path(), 1), &segment).unwrap();

    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(full(&s, key(1, 0)).unwrap(), small);
    assert_eq!(full(&s, key(2, 0)).unwrap(), large);
    for (at, len) in [
        (0u32, 4096u32),
        (70_000, 4096),
        (65_530, 20),
        (199_000, 1000),
    ] {
        let got = s.get(key(2, 0), at, len).unwrap().data;
        assert_eq!(
            &got[..],
            &large[at as usize..(at + len) as usize],
            "{len} at {at}"
        );
    }
    let fresh = bytes(23, 100_000);
    assert_eq!(put(&s, key(3, 0), &fresh), PutOutcome::Stored);
    assert_eq!(full(&s, key(3, 0)).unwrap(), fresh);
    assert_eq!(
        s.get(key(3, 0), 5000, 100).unwrap().data,
        &fresh[5000..5100]
    );
    drop(s);

    // A byte of the large shard's third 64 KiB piece flips.
    let at = (segment.len() - large.len() + 140_000) as u64;
    let f = OpenOptions::new()
        .write(true)
        .open(seg(dir.path(), 1))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[large[140_000] ^ 1], at).unwrap();
    drop(f);
    let s = ShardStore::open(dir.path()).unwrap();
    assert_eq!(full(&s, key(1, 0)).unwrap(), small);
    assert_eq!(full(&s, key(3, 0)).unwrap(), fresh);
    assert_eq!(
        s.get(key(2, 0), 70_000, 4096).unwrap().data,
        &large[70_000..74_096]
    );
    assert!(matches!(
        s.get(key(2, 0), 140_000, 10),
        Err(Error::CorruptShard { .. })
    ));
}
