use std::{
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use super::*;
use crate::{
    keys,
    store::{copy::summarize, MemoryStore, RocksStore},
    testing::{each_store, Fx},
    Meta, MetaError,
};

const ROOT: u64 = 1;

/// What `tessera meta backup` does: every page of a new session into
/// `dir`.
fn back_up(m: &Meta, dir: &Path) -> Manifest {
    let mut w = BackupWriter::create(dir).unwrap();
    let (mut session, mut page) = (0, 0);
    loop {
        let (s, p) = m.backup_page(session, page).unwrap();
        (session, page) = (s, page + 1);
        for (k, v) in &p.records {
            w.add(k, v).unwrap();
        }
        if let Some(end) = p.end {
            assert_eq!(w.summary(), end.summary);
            return w.finish(&end.cluster_id, "a test", 1).unwrap();
        }
    }
}

/// Keys enough for several pages.
fn fill(store: &dyn MetaStore, n: u32) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let mut t = store.begin();
        for i in chunk {
            t.put(&[b"ztest", &i.to_be_bytes()[..]].concat(), &[7u8; 100])
                .unwrap();
        }
        t.commit().unwrap();
    }
}

fn counter(store: &dyn MetaStore, name: &str) -> u64 {
    let v = store.begin().get(&keys::counter(name)).unwrap().unwrap();
    u64::from_be_bytes(v.try_into().unwrap())
}

/// A backup of a live service on each backend, restored into another
/// backend: every key arrives, the service opens on it with the same
/// cluster id and files, and new block ids start far past the old ones.
#[test]
fn a_backup_restores_into_another_backend_key_for_key() {
    let targets = std::sync::Mutex::new(0);
    each_store(|store| {
        let fx = Fx::new(store.clone(), 1 << 30);
        let f = fx.file(ROOT, b"kept");
        fx.m.files().alloc_blocks(3).unwrap();
        fill(store.as_ref(), 20_000);
        let dir = tempfile::tempdir().unwrap();
        let manifest = back_up(&fx.m, dir.path());
        assert_eq!(manifest.cluster_id, fx.m.cluster_id());
        assert_eq!(manifest.summary, summarize(store.as_ref()).unwrap());
        assert_eq!(verify(dir.path()).unwrap(), manifest);

        let rocks_dir = tempfile::tempdir().unwrap();
        let to: Arc<dyn MetaStore> = match *targets.lock().unwrap() {
            0 => Arc::new(RocksStore::open(rocks_dir.path()).unwrap()),
            1 => Arc::new(crate::store::test_etcd::store()),
            _ => Arc::new(MemoryStore::new()),
        };
        *targets.lock().unwrap() += 1;
        restore(dir.path(), &manifest, to.as_ref()).unwrap();
        for name in [crate::ids::BLOCK, crate::ids::INODE] {
            assert_eq!(
                counter(to.as_ref(), name),
                counter(store.as_ref(), name) + ID_JUMP,
                "{name}"
            );
        }
        let back = Meta::open(to, Default::default()).unwrap();
        assert_eq!(back.cluster_id(), fx.m.cluster_id());
        let found = back.tree().lookup(fx.v, ROOT, b"kept").unwrap();
        assert_eq!(found.ino, f.ino);
    });
}

/// Writers carry on during a backup, and it still holds one moment: two
/// keys always written together are equal in the restored copy.
#[test]
fn a_backup_holds_one_moment_while_writers_carry_on() {
    // Not the in-memory test store: its reads see the newest commits.
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn MetaStore>; 2] = [
        Arc::new(RocksStore::open(dir.path()).unwrap()),
        Arc::new(crate::store::test_etcd::store()),
    ];
    for store in stores {
        let fx = Fx::new(store.clone(), 1 << 30);
        fill(store.as_ref(), 30_000);
        let stop = AtomicBool::new(false);
        // One before the 30,000 filler keys, one after: pages apart.
        let (a, b) = (b"apair".as_slice(), b"zzpair".as_slice());
        let dir = tempfile::tempdir().unwrap();
        let writes = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut t = store.begin();
                    t.put(a, &n.to_be_bytes()).unwrap();
                    t.put(&[b"znew", &n.to_be_bytes()[..]].concat(), b"x")
                        .unwrap();
                    t.put(b, &n.to_be_bytes()).unwrap();
                    t.commit().unwrap();
                }
                n
            });
            back_up(&fx.m, dir.path());
            stop.store(true, Ordering::Relaxed);
            writer.join().unwrap()
        });
        assert!(writes > 0);
        let manifest = verify(dir.path()).unwrap();
        let to = MemoryStore::new();
        restore(dir.path(), &manifest, &to).unwrap();
        let mut t = to.begin();
        let (got_a, got_b) = (t.get(a).unwrap(), t.get(b).unwrap());
        assert_eq!(got_a, got_b, "a backup mixed two moments");
        let n = got_a.map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
        let new = t.scan(b"znew", b"znex", usize::MAX).unwrap();
        assert_eq!(new.len() as u64, n, "the new keys are of another moment");
    }
}

fn copy_dir(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for name in [RECORDS, MANIFEST] {
        std::fs::copy(from.join(name), to.path().join(name)).unwrap();
    }
    to
}

fn refused(dir: &Path) -> String {
    match verify(dir) {
        Err(BackupError::Refused { why, .. }) => why,
        other => panic!("a bad backup was not refused: {other:?}"),
    }
}

/// Any byte changed, a manifest of another cluster or format, a missing
/// manifest: refused with a reason, and a restore into a store that is
/// not empty changes nothing.
#[test]
fn a_damaged_or_foreign_backup_is_refused() {
    let store: Arc<dyn MetaStore> = Arc::new(MemoryStore::new());
    let fx = Fx::new(store.clone(), 1 << 30);
    fx.file(ROOT, b"a");
    fill(store.as_ref(), 50);
    let good = tempfile::tempdir().unwrap();
    let manifest = back_up(&fx.m, good.path());
    let len = manifest.records_bytes as usize;

    for at in [0, 9, 12, 15, 17, len / 2, len - 5, len - 1] {
        let bad = copy_dir(good.path());
        let path = bad.path().join(RECORDS);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[at] ^= 0x20;
        std::fs::write(&path, bytes).unwrap();
        let why = refused(bad.path());
        assert!(!why.is_empty(), "byte {at}");
    }
    let text = std::fs::read_to_string(good.path().join(MANIFEST)).unwrap();
    let rewrite = |text: &str| {
        let bad = copy_dir(good.path());
        std::fs::write(bad.path().join(MANIFEST), text).unwrap();
        bad
    };
    let why = refused(rewrite(&text.replacen("keys: ", "keys: 1", 1)).path());
    assert!(why.contains("CRC32"), "{why}");
    let mut foreign = manifest.clone();
    foreign.cluster_id = "0123".into();
    let why = refused(rewrite(&foreign.render()).path());
    assert!(why.contains("cluster 0123"), "{why}");
    let mut newer = manifest.clone();
    newer.format = FORMAT + 1;
    let why = refused(rewrite(&newer.render()).path());
    assert!(why.contains("format"), "{why}");
    let why = refused(rewrite("hello\n").path());
    assert!(why.contains("not a Tessera"), "{why}");
    let bad = copy_dir(good.path());
    std::fs::remove_file(bad.path().join(MANIFEST)).unwrap();
    assert!(refused(bad.path()).contains("no manifest"));

    // A cut records file.
    let bad = copy_dir(good.path());
    let path = bad.path().join(RECORDS);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..len - 3]).unwrap();
    assert!(refused(bad.path()).contains("manifest says"));

    // Into a store that holds anything: refused, and it is unchanged.
    let full = MemoryStore::new();
    fill(&full, 3);
    let before = summarize(&full).unwrap();
    let into_full = restore(good.path(), &manifest, &full);
    assert!(
        matches!(into_full, Err(BackupError::Store(_))),
        "{into_full:?}"
    );
    assert_eq!(summarize(&full).unwrap(), before);

    // And a backup only goes into an empty directory.
    let again = BackupWriter::create(good.path());
    assert!(matches!(again, Err(BackupError::Refused { .. })));
}

/// Pages are taken in order, each once; sessions are bounded.
#[test]
fn backup_sessions_take_pages_in_order_and_are_bounded() {
    let store: Arc<dyn MetaStore> = Arc::new(MemoryStore::new());
    let fx = Fx::new(store.clone(), 1 << 30);
    fill(store.as_ref(), 20_000);
    let (one, first) = fx.m.backup_page(0, 0).unwrap();
    assert!(first.end.is_none() && !first.records.is_empty());
    let skipped = fx.m.backup_page(one, 2);
    assert!(matches!(skipped, Err(MetaError::Invalid(_))), "{skipped:?}");
    let (two, _) = fx.m.backup_page(0, 0).unwrap();
    let third = fx.m.backup_page(0, 0);
    assert!(matches!(third, Err(MetaError::Busy(_))), "{third:?}");
    assert!(fx.m.backup_page(two, 1).is_ok());
    let unknown = fx.m.backup_page(99, 0);
    assert!(matches!(unknown, Err(MetaError::NotFound { .. })));
}

/// A backup damaged after it was verified (between `verify` and the
/// load) stops the restore midway: the store keeps its unfinished mark,
/// which the metadata service refuses to start on.
#[test]
fn a_restore_cut_short_leaves_the_store_marked_unfinished() {
    let store: Arc<dyn MetaStore> = Arc::new(MemoryStore::new());
    let fx = Fx::new(store.clone(), 1 << 30);
    fill(store.as_ref(), 5_000);
    let dir = tempfile::tempdir().unwrap();
    let manifest = back_up(&fx.m, dir.path());
    let path = dir.path().join(RECORDS);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let to = MemoryStore::new();
    let cut = restore(dir.path(), &manifest, &to);
    assert!(matches!(cut, Err(BackupError::Refused { .. })), "{cut:?}");
    assert!(crate::store::copy::unfinished(&to).unwrap());
}
