//! One suite, every backend.

use super::*;

fn both(test: impl Fn(&dyn MetaStore)) {
    test(&MemoryStore::new());
    let dir = tempfile::tempdir().unwrap();
    test(&RocksStore::open(dir.path()).unwrap());
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

/// A RocksDB transaction's reads all see the moment it began (its own
/// writes on top): what it reads together belongs together.
#[test]
fn rocks_reads_of_a_transaction_see_one_moment() {
    let dir = tempfile::tempdir().unwrap();
    let s = RocksStore::open(dir.path()).unwrap();
    put(&s, b"k1", b"old");
    put(&s, b"k2", b"old");
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
