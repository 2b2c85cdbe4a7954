//! One suite, every backend.

use super::*;

/// Runs `test` on every backend: in memory, RocksDB in a temporary
/// directory, and a real etcd member (`test_etcd.rs`).
fn both(test: impl Fn(&dyn MetaStore)) {
    test(&MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    test(&RocksStore::open(dir.path()).unwrap());
    test(&super::test_etcd::store());
}

fn put(store: &dyn MetaStore, k: &[u8], v: &[u8]) {
    let mut t = store.begin();
    t.put(k, v).unwrap();
    t.commit().unwrap();
}

#[test]
fn get_put_delete_and_read_your_writes() {
    both(|s| {
        put(s, b"a", b"1");
        let mut t = s.begin();
        assert_eq!(t.get(b"a").unwrap(), Some(b"1".to_vec()));
        t.put(b"b", b"2").unwrap();
        t.delete(b"a").unwrap();
        assert_eq!(t.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(t.get(b"a").unwrap(), None);
        t.commit().unwrap();
        let mut t = s.begin();
        assert_eq!(t.get(b"a").unwrap(), None);
        assert_eq!(t.get(b"b").unwrap(), Some(b"2".to_vec()));
    });
}

#[test]
fn scans_are_ordered_bounded_and_see_own_writes() {
    both(|s| {
        for k in [&b"k3"[..], b"k1", b"k2", b"l0", b"j9"] {
            put(s, k, b"v");
        }
        let mut t = s.begin();
        t.put(b"k25", b"new").unwrap();
        t.delete(b"k1").unwrap();
        let keys: Vec<Vec<u8>> = t
            .scan(b"k", b"l", 100)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(keys, vec![b"k2".to_vec(), b"k25".to_vec(), b"k3".to_vec()]);
        assert_eq!(t.scan(b"k", b"l", 2).unwrap().len(), 2);
        // From the end: last first, `end` excluded, own writes seen.
        let back: Vec<Vec<u8>> = t
            .scan_back(b"k", b"k3", 10)
            .unwrap()
            .into_iter()
            .map(|x| x.0)
            .collect();
        assert_eq!(back, vec![b"k25".to_vec(), b"k2".to_vec()]);
        assert_eq!(t.scan_back(b"k", b"l", 1).unwrap()[0].0, b"k3".to_vec());
        assert!(t.scan_back(b"a", b"j9", 5).unwrap().is_empty());
    });
}

#[test]
fn a_scan_around_ranges_gives_each_key_before_and_in_them_once() {
    both(|s| {
        for k in [&b"a"[..], b"k10", b"k20", b"k30", b"k40", b"k50", b"z"] {
            put(s, k, b"v");
        }
        let mut t = s.begin();
        t.put(b"k35", b"new").unwrap();
        t.delete(b"k20").unwrap();
        let r = |a: &[u8], b: &[u8]| (a.to_vec(), b.to_vec());
        let keys = |t: &mut Box<dyn Txn + '_>, floor: &[u8], ranges: &[(Vec<u8>, Vec<u8>)]| {
            t.scan_around(floor, ranges)
                .unwrap()
                .into_iter()
                .map(|x| String::from_utf8(x.0).unwrap())
                .collect::<Vec<_>>()
        };
        // Before k25 (k20 deleted): k10; in [k25, k36): k30, k35 (own
        // write); before k40 is k35, given once; in [k40, k41): k40.
        assert_eq!(
            keys(&mut t, b"k", &[r(b"k25", b"k36"), r(b"k40", b"k41")]),
            ["k10", "k30", "k35", "k40"]
        );
        // Nothing before the floor; a range starting on a key.
        assert_eq!(
            keys(&mut t, b"k", &[r(b"k05", b"k10")]),
            Vec::<String>::new()
        );
        assert_eq!(keys(&mut t, b"k", &[r(b"k10", b"k11")]), ["k10"]);
        assert_eq!(keys(&mut t, b"k", &[r(b"k51", b"k60")]), ["k50"]);
        assert_eq!(keys(&mut t, b"k", &[]), Vec::<String>::new());
    });
}

#[test]
fn a_read_key_written_by_another_commit_conflicts() {
    both(|s| {
        put(s, b"x", b"0");
        let mut t1 = s.begin();
        let mut t2 = s.begin();
        assert_eq!(t1.get(b"x").unwrap(), Some(b"0".to_vec()));
        let _ = t2.get(b"x");
        t1.put(b"x", b"1").unwrap();
        t2.put(b"x", b"2").unwrap();
        t1.commit().unwrap();
        assert!(matches!(t2.commit(), Err(StoreError::Conflict)));
        assert_eq!(s.begin().get(b"x").unwrap(), Some(b"1".to_vec()));
    });
}

#[test]
fn creating_the_same_absent_key_twice_conflicts() {
    both(|s| {
        let mut t1 = s.begin();
        let mut t2 = s.begin();
        assert_eq!(t1.get(b"new").unwrap(), None);
        assert_eq!(t2.get(b"new").unwrap(), None);
        t1.put(b"new", b"1").unwrap();
        t2.put(b"new", b"2").unwrap();
        t1.commit().unwrap();
        assert!(t2.commit().is_err());
    });
}

#[test]
fn transact_retries_until_every_increment_lands() {
    both(|s| {
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..25 {
                        transact(s, |t| {
                            let n = t
                                .get(b"counter")?
                                .map(|v| u64::from_be_bytes(v.try_into().unwrap()))
                                .unwrap_or(0);
                            t.put(b"counter", &(n + 1).to_be_bytes())?;
                            Ok(())
                        })
                        .unwrap();
                    }
                });
            }
        });
        let v = s.begin().get(b"counter").unwrap().unwrap();
        assert_eq!(u64::from_be_bytes(v.try_into().unwrap()), 100);
    });
}

#[test]
fn buffered_commits_are_visible_at_once_and_conflict_checked() {
    both(|s| {
        let mut t = s.begin_buffered();
        t.put(b"name", b"1").unwrap();
        t.commit().unwrap();
        assert_eq!(s.begin().get(b"name").unwrap(), Some(b"1".to_vec()));

        let mut t1 = s.begin_buffered();
        let mut t2 = s.begin_buffered();
        t1.get(b"name").unwrap();
        t2.get(b"name").unwrap();
        t1.put(b"name", b"2").unwrap();
        t2.put(b"name", b"3").unwrap();
        t1.commit().unwrap();
        assert!(matches!(t2.commit(), Err(StoreError::Conflict)));
        s.sync().unwrap();
        assert_eq!(s.begin().get(b"name").unwrap(), Some(b"2".to_vec()));
    });
}

#[test]
fn rocks_buffered_commits_survive_reopen_and_are_synced_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RocksStore::open(dir.path()).unwrap();
        let mut t = s.begin_buffered();
        t.put(b"buffered", b"yes").unwrap();
        t.commit().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while s.background_syncs() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no background WAL sync after a buffered commit"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // A read-only transaction has nothing to sync.
        let before = s.background_syncs();
        assert_eq!(s.begin().get(b"buffered").unwrap(), Some(b"yes".to_vec()));
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(s.background_syncs(), before);
        // One more, left to the syncer's last round at close.
        let mut t = s.begin_buffered();
        t.put(b"at-close", b"yes").unwrap();
        t.commit().unwrap();
    }
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(s.begin().get(b"buffered").unwrap(), Some(b"yes".to_vec()));
    assert_eq!(s.begin().get(b"at-close").unwrap(), Some(b"yes".to_vec()));
}

#[test]
fn rocks_commits_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = RocksStore::open(dir.path()).unwrap();
        put(&s, b"durable", b"yes");
    }
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(s.begin().get(b"durable").unwrap(), Some(b"yes".to_vec()));
}

/// `sync` fsyncs only what is not durable yet: after a durable commit, or
/// a sync with nothing buffered since, it costs nothing.
#[test]
fn rocks_sync_fsyncs_only_what_needs_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(dir.path()).unwrap();
    let buffered = |k: &[u8]| {
        let mut t = s.begin_buffered();
        t.put(k, b"v").unwrap();
        t.commit().unwrap();
    };
    buffered(b"a");
    s.sync().unwrap();
    let after_first = s.sync_fsyncs();
    // Nothing buffered since (or the syncer thread got there first).
    s.sync().unwrap();
    assert_eq!(s.sync_fsyncs(), after_first);
    assert!(after_first <= 1);
    // A durable commit covers the buffered ones before it.
    buffered(b"b");
    put(&s, b"c", b"v");
    s.sync().unwrap();
    assert_eq!(s.sync_fsyncs(), after_first);
    // One buffered after it needs an fsync again (unless the syncer
    // thread made one meanwhile: then it is durable already).
    let before = (s.sync_fsyncs(), s.background_syncs());
    buffered(b"d");
    s.sync().unwrap();
    let after = (s.sync_fsyncs(), s.background_syncs());
    assert!(
        after.0 == before.0 + 1 || after.1 > before.1,
        "a buffered commit was taken for durable: {before:?} -> {after:?}"
    );
    // A durable commit refused for a conflict never reached the WAL: it
    // covers nothing.
    let before = (s.sync_fsyncs(), s.background_syncs());
    let mut refused = s.begin();
    let _ = refused.get(b"e").unwrap();
    buffered(b"e");
    refused.put(b"e", b"mine").unwrap();
    assert!(matches!(refused.commit(), Err(StoreError::Conflict)));
    s.sync().unwrap();
    let after = (s.sync_fsyncs(), s.background_syncs());
    assert!(
        after.0 == before.0 + 1 || after.1 > before.1,
        "a refused durable commit was taken for an fsync: {before:?} -> {after:?}"
    );
}

/// A transaction's reads on RocksDB and etcd all see one moment (its
/// own writes on top): what it reads together belongs together. (The
/// in-memory store fails such a read as a conflict instead.)
#[test]
fn reads_of_a_transaction_see_one_moment() {
    let dir = tempfile::tempdir().unwrap();
    reads_see_one_moment(&RocksStore::open(dir.path()).unwrap());
    reads_see_one_moment(&super::test_etcd::store());
}

fn reads_see_one_moment(s: &dyn MetaStore) {
    put(s, b"k1", b"old");
    put(s, b"k2", b"old");
    let mut t = s.begin();
    assert_eq!(t.get(b"k1").unwrap(), Some(b"old".to_vec()));
    let mut other = s.begin();
    other.put(b"k2", b"new").unwrap();
    other.put(b"k3", b"new").unwrap();
    other.commit().unwrap();
    assert_eq!(t.get(b"k2").unwrap(), Some(b"old".to_vec()));
    let seen: Vec<Vec<u8>> = t
        .scan(b"k", b"l", 10)
        .unwrap()
        .into_iter()
        .map(|x| x.1)
        .collect();
    assert_eq!(seen, vec![b"old".to_vec(), b"old".to_vec()]);
    t.put(b"k4", b"mine").unwrap();
    assert_eq!(t.scan_back(b"k", b"l", 1).unwrap()[0].0, b"k4".to_vec());
    assert_eq!(
        t.scan_around(b"k", &[(b"k3".to_vec(), b"k5".to_vec())])
            .unwrap()
            .len(),
        2
    );
}

/// A range hinted as having lost many keys is compacted in the background
/// (its tombstones leave the memtable) and reads the same; a store closed
/// with a hint pending opens again.
#[test]
fn rocks_a_range_that_lost_many_keys_is_compacted_and_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let key = |i: u32| format!("k/{i:06}").into_bytes();
    let survivors: Vec<Vec<u8>> = (0..5_000).step_by(100).map(key).collect();
    {
        let s = RocksStore::open(dir.path()).unwrap();
        let mut t = s.begin();
        (0..5_000).for_each(|i| t.put(&key(i), b"v").unwrap());
        t.commit().unwrap();
        let mut t = s.begin();
        (0..5_000)
            .filter(|i| i % 100 != 0)
            .for_each(|i| t.delete(&key(i)).unwrap());
        t.commit().unwrap();
        assert_eq!(s.memtable_entries(), 5_000 + 4_950);
        s.deleted_many(b"k/", b"k0");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while s.ranges_tidied() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "hinted range never compacted"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(s.memtable_entries(), 0, "the memtable was not flushed");
        let left: Vec<Vec<u8>> = s
            .begin()
            .scan(b"k/", b"k0", usize::MAX)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, survivors);
        // Closed with a hint still waiting for quiet.
        s.deleted_many(b"k/", b"k0");
    }
    let s = RocksStore::open(dir.path()).unwrap();
    assert_eq!(
        s.begin().scan(b"k/", b"k0", usize::MAX).unwrap().len(),
        survivors.len()
    );
}

/// Scans with limits, from either end, over a transaction's own puts and
/// deletes: every backend answers what the in-memory model does.
#[test]
fn scans_over_own_writes_match_the_model_on_every_backend() {
    model_and_backends(scans_over_own_writes);
}

/// Runs `test` with the in-memory model first, then RocksDB and etcd.
fn model_and_backends(test: impl FnOnce([&dyn MetaStore; 3])) {
    let model = MemoryStore::new();
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path()).unwrap();
    let etcd = super::test_etcd::store();
    test([&model, &rocks, &etcd]);
}

/// Pseudo-random numbers below `n`, the same every run.
fn numbers(mut seed: u64) -> impl FnMut(u64) -> u64 {
    move |n| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    }
}

fn scans_over_own_writes(stores: [&dyn MetaStore; 3]) {
    for s in stores {
        for i in (0..60).step_by(2) {
            put(s, format!("k{i:02}").as_bytes(), b"stored");
        }
    }
    let mut next = numbers(7);
    for round in 0..20 {
        let mut txns: Vec<Box<dyn Txn + '_>> = stores.iter().map(|s| s.begin()).collect();
        for _ in 0..12 {
            let k = format!("k{:02}", next(60));
            let put = next(2) == 0;
            for t in txns.iter_mut() {
                if put {
                    t.put(k.as_bytes(), b"mine").unwrap();
                } else {
                    t.delete(k.as_bytes()).unwrap();
                }
            }
        }
        for _ in 0..10 {
            let (a, b) = (next(62), next(62));
            let (start, end) = (format!("k{:02}", a.min(b)), format!("k{:02}", a.max(b)));
            let limit = [1, 2, 3, 5, 8, usize::MAX][next(6) as usize];
            let back = next(2) == 0;
            let answers: Vec<Vec<KeyValue>> = txns
                .iter_mut()
                .map(|t| match back {
                    true => t.scan_back(start.as_bytes(), end.as_bytes(), limit),
                    false => t.scan(start.as_bytes(), end.as_bytes(), limit),
                })
                .map(Result::unwrap)
                .collect();
            for (i, a) in answers.iter().enumerate().skip(1) {
                assert_eq!(
                    a, &answers[0],
                    "round {round}: store {i}, [{start}, {end}) limit {limit} back {back}"
                );
            }
        }
        if round % 2 == 0 {
            for t in txns {
                t.commit().unwrap();
            }
        }
    }
}

/// Every key of an etcd store lives under its prefix: two stores with
/// their own prefixes on one cluster never see each other's keys.
#[test]
fn etcd_stores_under_two_prefixes_never_see_each_other() {
    let (a, b) = (super::test_etcd::store(), super::test_etcd::store());
    put(&a, b"shared-name", b"a");
    put(&b, b"shared-name", b"b");
    put(&b, b"\xff\xff", b"b");
    let mut t = a.begin();
    assert_eq!(t.get(b"shared-name").unwrap(), Some(b"a".to_vec()));
    let all = t.scan(b"", &[0xff; 8], usize::MAX).unwrap();
    assert_eq!(all, vec![(b"shared-name".to_vec(), b"a".to_vec())]);
    assert_eq!(t.scan_back(b"", &[0xff; 8], 10).unwrap(), all);
}

/// A commit larger than etcd takes in one transaction (`--max-txn-ops`)
/// fails with an error that says what was refused, and applies nothing.
#[test]
fn etcd_a_commit_over_the_members_limit_fails_clearly_and_changes_nothing() {
    let s = super::test_etcd::store();
    let mut t = s.begin();
    let n = super::etcd_member::MAX_TXN_OPS as u32 + 1;
    for i in 0..n {
        t.put(&i.to_be_bytes(), b"v").unwrap();
    }
    match t.commit() {
        Err(StoreError::Backend(why)) => {
            assert!(
                why.contains(&format!("{n} writes")) && why.contains("too many"),
                "{why}"
            )
        }
        other => panic!("a commit of {n} writes gave {other:?}"),
    }
    assert!(s.begin().scan(b"", &[0xff; 8], 10).unwrap().is_empty());
}

/// A cluster no member of which answers fails `open` with an error that
/// names etcd and the addresses.
#[test]
fn etcd_an_unreachable_cluster_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let target = EtcdTarget::parse(&format!("etcd://127.0.0.1:{port}/x")).unwrap();
    match EtcdStore::open(&target) {
        Err(StoreError::Backend(why)) => {
            assert!(
                why.contains(&format!("etcd at http://127.0.0.1:{port}")),
                "{why}"
            )
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a store with no member opened"),
    }
}

/// Back scans and scans around ranges over keys that are wide big-endian
/// numbers (as a file's extents are), where etcd looks in windows below
/// a scan's end first: every backend answers what the model does, with
/// the transaction's own puts and deletes over the store's keys.
#[test]
fn back_scans_over_numeric_keys_match_the_model_on_every_backend() {
    model_and_backends(back_scans_over_numeric_keys);
}

fn back_scans_over_numeric_keys(stores: [&dyn MetaStore; 3]) {
    let key = |n: u64| [&b"e"[..], &n.to_be_bytes()].concat();
    // Dense near the start, then ever sparser: windows of 256^2 and up
    // hold many keys, one, or none.
    let stored: Vec<u64> = (0..40u64)
        .map(|i| i * 3000)
        .chain((1..12).map(|i| 1 << (i * 3 + 20)))
        .collect();
    for s in stores {
        for &n in &stored {
            put(s, &key(n), &n.to_be_bytes());
        }
    }
    let mut next = numbers(11);
    let spot = |r: u64| match r % 3 {
        0 => r % 130_000,
        1 => r % (1 << 40),
        _ => r,
    };
    for round in 0..15 {
        let mut txns: Vec<Box<dyn Txn + '_>> = stores.iter().map(|s| s.begin()).collect();
        for _ in 0..8 {
            let n = match next(2) {
                0 => stored[next(stored.len() as u64) as usize],
                _ => spot(next(u64::MAX >> 1)),
            };
            let del = next(2) == 0;
            for t in txns.iter_mut() {
                match del {
                    true => t.delete(&key(n)).unwrap(),
                    false => t.put(&key(n), b"mine").unwrap(),
                }
            }
        }
        for _ in 0..10 {
            let end = key(spot(next(u64::MAX >> 1)));
            let limit = [1, 2, 3, 16, 17][next(5) as usize];
            let back: Vec<Vec<KeyValue>> = txns
                .iter_mut()
                .map(|t| t.scan_back(b"e", &end, limit).unwrap())
                .collect();
            let mut starts: Vec<u64> = (0..6).map(|_| spot(next(u64::MAX >> 1))).collect();
            starts.sort();
            starts.dedup();
            let ranges: Vec<(Vec<u8>, Vec<u8>)> =
                starts.iter().map(|&n| (key(n), key(n + 5000))).collect();
            // Ranges must not overlap.
            if ranges.windows(2).any(|w| w[0].1 > w[1].0) {
                continue;
            }
            let around: Vec<Vec<KeyValue>> = txns
                .iter_mut()
                .map(|t| t.scan_around(b"e", &ranges).unwrap())
                .collect();
            for i in 1..stores.len() {
                assert_eq!(
                    back[i], back[0],
                    "round {round}: store {i}, back from {end:?} limit {limit}"
                );
                assert_eq!(
                    around[i], around[0],
                    "round {round}: store {i}, around {starts:?}"
                );
            }
        }
        if round % 2 == 0 {
            for t in txns {
                t.commit().unwrap();
            }
        }
    }
}

/// A transaction whose revision etcd compacted away before its next read
/// conflicts (and `transact` runs it again): it never reads a mix.
#[test]
fn etcd_a_read_at_a_compacted_revision_conflicts() {
    // Its own member: a compaction drops other tests' revisions too.
    let (_dir, _member, s) = super::test_etcd::private_store();
    put(&s, b"a", b"1");
    put(&s, b"b", b"1");
    let mut t = s.begin();
    assert_eq!(t.get(b"a").unwrap(), Some(b"1".to_vec()));
    put(&s, b"b", b"2");
    s.compact_all();
    assert!(matches!(t.get(b"b"), Err(StoreError::Conflict)));
    let mut runs = 0;
    let got = transact(&s, |t| {
        runs += 1;
        Ok((t.get(b"a")?, t.get(b"b")?))
    })
    .unwrap();
    assert_eq!(got, (Some(b"1".to_vec()), Some(b"2".to_vec())));
    assert_eq!(runs, 1);
}
