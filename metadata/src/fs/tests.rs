//! The file tree over the in-memory store (the RocksDB backend passes the
//! same store conformance suite).

use std::sync::Arc;

use tessera_common::ROOT_INO;

use super::*;
use crate::{records::Slice, store::MemoryStore, Meta, MetaOptions};

fn meta_with_volume(size: u64) -> (Meta, u64) {
    let m = Meta::open(Arc::new(MemoryStore::new()), MetaOptions::default()).unwrap();
    for i in 0..6 {
        m.register_node(0, format!("127.0.0.1:{}", 9000 + i), Default::default())
            .unwrap();
    }
    let v = m
        .create_volume("v", size, "ec:4+2", Default::default())
        .unwrap();
    (m, v.id)
}

fn file(perm: u32) -> NewNode {
    NewNode {
        kind: KIND_FILE,
        perm,
        uid: 1,
        gid: 2,
        rdev: 0,
        target: vec![],
    }
}

fn dir() -> NewNode {
    NewNode {
        kind: KIND_DIR,
        ..file(0o755)
    }
}

fn slice(offset: u64, len: u32, block: u64) -> Slice {
    Slice {
        offset,
        len,
        block,
        block_offset: 0,
        block_len: len,
    }
}

#[test]
fn create_lookup_and_errors() {
    let (m, v) = meta_with_volume(1 << 30);
    let d = m.make_node(v, ROOT_INO, b"d", dir()).unwrap();
    let f = m.make_node(v, d.ino, b"f", file(0o644)).unwrap();
    assert_eq!(m.lookup(v, d.ino, b"f").unwrap(), f);
    assert_eq!(m.get_attr(v, ROOT_INO).unwrap().inode.nlink, 3);
    assert!(matches!(
        m.make_node(v, d.ino, b"f", file(0o644)),
        Err(MetaError::Exists { .. })
    ));
    assert!(matches!(
        m.make_node(v, f.ino, b"x", file(0o644)),
        Err(MetaError::NotDir { .. })
    ));
    assert!(matches!(
        m.lookup(v, d.ino, b"nope"),
        Err(MetaError::NotFound { .. })
    ));
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert!(matches!(
            m.make_node(v, ROOT_INO, bad, file(0o644)),
            Err(MetaError::Invalid(_))
        ));
    }
    assert!(matches!(
        m.make_node(v, ROOT_INO, &[b'x'; 300], file(0)),
        Err(MetaError::NameTooLong(_))
    ));
    assert!(matches!(
        m.unlink(v, ROOT_INO, b"d", true),
        Err(MetaError::NotEmpty { .. })
    ));
    assert!(matches!(
        m.unlink(v, ROOT_INO, b"d", false),
        Err(MetaError::IsDir { .. })
    ));
    assert!(matches!(
        m.unlink(v, d.ino, b"f", true),
        Err(MetaError::NotDir { .. })
    ));
    m.unlink(v, d.ino, b"f", false).unwrap();
    m.unlink(v, ROOT_INO, b"d", true).unwrap();
    assert_eq!(m.get_attr(v, ROOT_INO).unwrap().inode.nlink, 2);
    assert_eq!(m.stat_fs(v).unwrap().inodes, 1);
}

#[test]
fn rename_overwrites_moves_and_refuses_loops() {
    let (m, v) = meta_with_volume(1 << 30);
    let a = m.make_node(v, ROOT_INO, b"a", dir()).unwrap();
    let b = m.make_node(v, a.ino, b"b", dir()).unwrap();
    let x = m.make_node(v, ROOT_INO, b"x", file(0o600)).unwrap();
    m.make_node(v, ROOT_INO, b"y", file(0o600)).unwrap();
    m.rename(v, ROOT_INO, b"x", ROOT_INO, b"y", 0).unwrap();
    assert_eq!(m.lookup(v, ROOT_INO, b"y").unwrap().ino, x.ino);
    assert!(m.lookup(v, ROOT_INO, b"x").is_err());
    assert_eq!(
        m.stat_fs(v).unwrap().inodes,
        4,
        "the overwritten file was freed"
    );
    assert!(matches!(
        m.rename(v, ROOT_INO, b"a", b.ino, b"a2", 0),
        Err(MetaError::Invalid(_))
    ));
    m.rename(v, a.ino, b"b", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(m.get_attr(v, a.ino).unwrap().inode.nlink, 2);
    assert_eq!(m.get_attr(v, ROOT_INO).unwrap().inode.nlink, 4);
    assert!(matches!(
        m.rename(v, ROOT_INO, b"y", ROOT_INO, b"a", 0),
        Err(MetaError::IsDir { .. })
    ));
    assert!(matches!(
        m.rename(v, ROOT_INO, b"y", ROOT_INO, b"b", RENAME_NOREPLACE),
        Err(MetaError::IsDir { .. }) | Err(MetaError::Exists { .. })
    ));
    m.rename(v, ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(m.lookup(v, ROOT_INO, b"b").unwrap().ino, a.ino);
}

#[test]
fn slices_commit_truncate_and_quota() {
    let (m, v) = meta_with_volume(1 << 20);
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let w = |slices| FileWrite {
        ino: f.ino,
        slices,
        mtime_ns: 1,
    };
    m.commit_writes(v, &[w(vec![slice(0, 1000, 5), slice(500, 100, 6)])])
        .unwrap();
    let (a, s) = m.get_slices(v, f.ino).unwrap();
    assert_eq!(a.inode.size, 1000);
    assert_eq!(s.len(), 2);
    m.set_attr(
        v,
        f.ino,
        SetAttr {
            size: Some(550),
            ..Default::default()
        },
    )
    .unwrap();
    let (a, s) = m.get_slices(v, f.ino).unwrap();
    assert_eq!(a.inode.size, 550);
    assert!(s.iter().all(|x| x.end() <= 550), "{s:?}");
    assert_eq!(m.stat_fs(v).unwrap().used, 550);
    let too_big = m.commit_writes(v, &[w(vec![slice(0, 1 << 20, 7), slice(1 << 20, 10, 8)])]);
    assert!(matches!(too_big, Err(MetaError::Quota { .. })));
    assert_eq!(
        m.get_attr(v, f.ino).unwrap().inode.size,
        550,
        "a refused commit changed the file"
    );
    assert!(matches!(
        m.commit_writes(v, &[w(vec![slice(0, 0, 9)])]),
        Err(MetaError::Invalid(_))
    ));
    m.unlink(v, ROOT_INO, b"f", false).unwrap();
    assert_eq!(m.stat_fs(v).unwrap().used, 0);
}

#[test]
fn a_slice_crossing_a_chunk_is_split_and_shadowed_slices_pruned() {
    let (m, v) = meta_with_volume(1 << 40);
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let start = tessera_common::CHUNK_SIZE - 10;
    m.commit_writes(
        v,
        &[FileWrite {
            ino: f.ino,
            slices: vec![slice(start, 20, 3)],
            mtime_ns: 0,
        }],
    )
    .unwrap();
    let (_, s) = m.get_slices(v, f.ino).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[1].offset, s[1].len, s[1].block_offset),
        (tessera_common::CHUNK_SIZE, 10, 10)
    );
    for i in 0..100 {
        m.commit_writes(
            v,
            &[FileWrite {
                ino: f.ino,
                slices: vec![slice(0, 4096, 100 + i)],
                mtime_ns: 0,
            }],
        )
        .unwrap();
    }
    let (_, s) = m.get_slices(v, f.ino).unwrap();
    assert!(s.len() < 40, "shadowed slices were kept: {}", s.len());
    assert_eq!(s.iter().rev().find(|x| x.offset == 0).unwrap().block, 199);
}

#[test]
fn xattrs_and_readdir_paging() {
    let (m, v) = meta_with_volume(1 << 30);
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    m.set_xattr(v, f.ino, b"user.a", b"1", 0).unwrap();
    assert!(matches!(
        m.set_xattr(v, f.ino, b"user.a", b"2", XATTR_CREATE),
        Err(MetaError::Exists { .. })
    ));
    assert!(matches!(
        m.set_xattr(v, f.ino, b"user.b", b"2", XATTR_REPLACE),
        Err(MetaError::NoXattr { .. })
    ));
    assert_eq!(m.get_xattr(v, f.ino, b"user.a").unwrap(), b"1");
    assert_eq!(m.list_xattr(v, f.ino).unwrap(), vec![b"user.a".to_vec()]);
    m.remove_xattr(v, f.ino, b"user.a").unwrap();
    assert!(m.get_xattr(v, f.ino, b"user.a").is_err());
    for i in 0..25 {
        m.make_node(v, ROOT_INO, format!("n{i:02}").as_bytes(), file(0o644))
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after = Vec::new();
    loop {
        let page = m.read_dir(v, ROOT_INO, &after, 7).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().0.clone();
        seen.extend(page.into_iter().map(|(n, _)| n));
    }
    assert_eq!(seen.len(), 26);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
}

#[test]
fn volumes_validate_and_delete() {
    let (m, v) = meta_with_volume(1 << 30);
    assert!(matches!(
        m.create_volume("v", 1 << 30, "ec:4+2", Default::default()),
        Err(MetaError::Exists { .. })
    ));
    assert!(m
        .create_volume("../x", 1 << 30, "ec:4+2", Default::default())
        .is_err());
    assert!(m
        .create_volume("w", 0, "ec:4+2", Default::default())
        .is_err());
    assert!(m
        .create_volume("w", u64::MAX, "ec:4+2", Default::default())
        .is_err());
    assert!(m
        .create_volume("w", 1 << 30, "ec:0+9", Default::default())
        .is_err());
    assert!(matches!(
        m.create_volume("w", 1 << 30, "ec:5+2", Default::default()),
        Err(MetaError::Unavailable(_))
    ));
    assert_eq!(m.list_volumes().unwrap().len(), 1);
    m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    m.delete_volume("v").unwrap();
    assert!(m.get_volume("v").is_err());
    assert!(m.get_attr(v, ROOT_INO).is_err());
}

#[test]
fn removing_a_volume_queues_exactly_its_blocks_for_gc() {
    let (m, v) = meta_with_volume(1 << 30);
    let other = m
        .create_volume("other", 1 << 30, "ec:4+2", Default::default())
        .unwrap();
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let g = m.make_node(other.id, ROOT_INO, b"g", file(0o644)).unwrap();
    let w = |ino, slices| FileWrite {
        ino,
        slices,
        mtime_ns: 1,
    };
    // Two slices share block 5; block 6 alone; a far chunk uses block 7.
    let far = 3 * tessera_common::CHUNK_SIZE;
    m.commit_writes(
        v,
        &[w(
            f.ino,
            vec![
                slice(0, 100, 5),
                slice(100, 100, 5),
                slice(200, 10, 6),
                slice(far, 10, 7),
            ],
        )],
    )
    .unwrap();
    m.commit_writes(other.id, &[w(g.ino, vec![slice(0, 100, 9)])])
        .unwrap();
    assert!(m.gc_pending(100).unwrap().is_empty(), "nothing dead yet");

    m.delete_volume("v").unwrap();
    let mut queued: Vec<u64> = m.gc_pending(100).unwrap().iter().map(|(b, _)| *b).collect();
    queued.sort();
    assert_eq!(queued, vec![5, 6, 7], "the other volume's block 9 stays");
    let (_, rec) = m.gc_pending(1).unwrap()[0];
    assert_eq!(rec.protection.to_string(), "ec:4+2");

    m.gc_forget(&[5, 7]).unwrap();
    let left: Vec<u64> = m.gc_pending(100).unwrap().iter().map(|(b, _)| *b).collect();
    assert_eq!(left, vec![6]);
    let (_, s) = m.get_slices(other.id, g.ino).unwrap();
    assert_eq!(s.len(), 1, "the other volume is untouched");
}

#[test]
fn degraded_commits_queue_missing_shards_and_refuse_bad_reports() {
    use crate::repair::Degraded;
    let (m, v) = meta_with_volume(1 << 30);
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let w = |slices| FileWrite {
        ino: f.ino,
        slices,
        mtime_ns: 1,
    };
    let d = |block, missing: Vec<u8>| Degraded {
        block,
        block_len: 4 << 20,
        missing,
    };
    // Refused, and nothing committed or queued.
    for bad in [
        d(5, vec![6]),       // beyond the 6-shard stripe
        d(5, vec![0, 1, 2]), // more than M missing
        d(5, vec![]),
        d(99, vec![1]), // not a block of this commit
        Degraded {
            block_len: 0,
            ..d(5, vec![1])
        },
    ] {
        let r =
            m.commit_writes_degraded(v, &[w(vec![slice(0, 100, 5)])], std::slice::from_ref(&bad));
        assert!(matches!(r, Err(MetaError::Invalid(_))), "{bad:?}: {r:?}");
    }
    assert_eq!(m.get_slices(v, f.ino).unwrap().1.len(), 0);
    assert!(m.repair_pending(10).unwrap().is_empty());

    m.commit_writes_degraded(v, &[w(vec![slice(0, 100, 5)])], &[d(5, vec![2])])
        .unwrap();
    m.commit_writes_degraded(v, &[w(vec![slice(0, 100, 5)])], &[d(5, vec![4])])
        .unwrap();
    let q = m.repair_pending(10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0, 5);
    assert_eq!(q[0].1.missing, vec![2, 4], "reports of one block merge");
    let s = m.queue_status().unwrap();
    assert_eq!(
        (s.repair_blocks, s.repair_shards, s.repair_bytes),
        (1, 2, 2 << 20)
    );

    m.repair_done(5, &[2]).unwrap();
    assert_eq!(m.repair_pending(10).unwrap()[0].1.missing, vec![4]);
    m.repair_done(5, &[4]).unwrap();
    assert!(m.repair_pending(10).unwrap().is_empty());
}

#[test]
fn blocks_are_freed_when_their_last_reference_goes() {
    let (m, v) = meta_with_volume(1 << 30);
    let gc = |m: &Meta| {
        let mut b: Vec<u64> = m
            .gc_pending(1000)
            .unwrap()
            .iter()
            .map(|(b, _)| *b)
            .collect();
        b.sort();
        b
    };
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let w = |ino, slices| FileWrite {
        ino,
        slices,
        mtime_ns: 1,
    };
    // Block 10 backs two slices; 11 overwrites half of one of them.
    m.commit_writes(v, &[w(f.ino, vec![slice(0, 100, 10), slice(100, 100, 10)])])
        .unwrap();
    m.commit_writes(v, &[w(f.ino, vec![slice(0, 100, 11)])])
        .unwrap();
    assert_eq!(m.block(10).unwrap().unwrap().refs, 2);
    // Truncating below 100 drops the slice at 100 and shortens the others.
    m.set_attr(
        v,
        f.ino,
        SetAttr {
            size: Some(50),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(m.block(10).unwrap().unwrap().refs, 1);
    assert!(
        gc(&m).is_empty(),
        "block 10 is still referenced (hidden, but present)"
    );

    // Many overwrites of the same range: pruned slices free their blocks.
    for b in 20..60 {
        m.commit_writes(v, &[w(f.ino, vec![slice(0, 50, b)])])
            .unwrap();
    }
    let freed = gc(&m);
    assert!(freed.contains(&10) && freed.contains(&11), "{freed:?}");
    assert!(!freed.contains(&59), "the visible block stays");
    for b in &freed {
        assert!(m.block(*b).unwrap().is_none());
    }

    // A hard link keeps the data until the last name goes.
    let g = m.make_node(v, ROOT_INO, b"g", file(0o644)).unwrap();
    m.commit_writes(v, &[w(g.ino, vec![slice(0, 10, 70)])])
        .unwrap();
    m.link(v, g.ino, ROOT_INO, b"g2").unwrap();
    m.unlink(v, ROOT_INO, b"g", false).unwrap();
    assert!(!gc(&m).contains(&70));
    m.unlink(v, ROOT_INO, b"g2", false).unwrap();
    assert!(gc(&m).contains(&70));

    // A freed block cannot be referenced again; another class's block
    // cannot be passed off as this one.
    let h = m.make_node(v, ROOT_INO, b"h", file(0o644)).unwrap();
    assert!(m
        .commit_writes(v, &[w(h.ino, vec![slice(0, 10, 70)])])
        .is_err());
    let mut odd = slice(0, 10, 59);
    odd.block_len = 999;
    assert!(m.commit_writes(v, &[w(h.ino, vec![odd])]).is_err());
}

#[test]
fn a_volume_min_durable_bounds_degraded_commits() {
    use crate::{repair::Degraded, volumes::VolumeSettings};
    let (m, _) = meta_with_volume(1 << 30);
    let strict = |n| VolumeSettings { min_durable: n };
    assert!(m
        .create_volume_with("weak", 1 << 30, "ec:4+2", Default::default(), strict(4))
        .is_err());
    let v = m
        .create_volume_with("strict", 1 << 30, "ec:4+2", Default::default(), strict(6))
        .unwrap();
    assert_eq!(
        m.volume_settings(v.id)
            .unwrap()
            .min_durable_for(v.protection),
        6
    );
    let f = m.make_node(v.id, ROOT_INO, b"f", file(0o644)).unwrap();
    let w = FileWrite {
        ino: f.ino,
        slices: vec![slice(0, 100, 5)],
        mtime_ns: 1,
    };
    let d = Degraded {
        block: 5,
        block_len: 100,
        missing: vec![1],
    };
    assert!(m
        .commit_writes_degraded(v.id, std::slice::from_ref(&w), &[d])
        .is_err());
    assert!(m.repair_pending(10).unwrap().is_empty());
    m.commit_writes(v.id, &[w]).unwrap();
}

#[test]
fn a_volume_deletion_cut_short_is_finished_at_open() {
    use crate::store::MetaStore;
    let store = Arc::new(MemoryStore::new());
    let m = Meta::open(store.clone(), MetaOptions::default()).unwrap();
    for i in 0..6 {
        m.register_node(0, format!("127.0.0.1:{}", 9000 + i), Default::default())
            .unwrap();
    }
    let v = m
        .create_volume("v", 1 << 30, "ec:4+2", Default::default())
        .unwrap();
    let f = m.make_node(v.id, ROOT_INO, b"f", file(0o644)).unwrap();
    let w = FileWrite {
        ino: f.ino,
        slices: vec![slice(0, 100, 5)],
        mtime_ns: 1,
    };
    m.commit_writes(v.id, &[w]).unwrap();
    // The "crash": the name and record are gone, the tree is not.
    m.begin_delete("v").unwrap();
    drop(m);
    let m = Meta::open(store.clone(), MetaOptions::default()).unwrap();
    let (start, end) = keys::prefix_range(&keys::in_volume(keys::INODE, v.id));
    assert!(
        store.begin().scan(&start, &end, 10).unwrap().is_empty(),
        "tree deleted"
    );
    assert_eq!(
        m.gc_pending(10).unwrap().len(),
        1,
        "its block queued for GC"
    );
    assert!(m.get_volume("v").is_err());
}

#[test]
fn sync_names_the_volume_and_create_answers_with_the_parent() {
    let (m, v) = meta_with_volume(1 << 30);
    m.sync(v).unwrap();
    assert!(matches!(m.sync(v + 1000), Err(MetaError::NotFound { .. })));
    let d = m.make_node(v, ROOT_INO, b"d", dir()).unwrap();
    let (f, parent) = m.make_node_in(v, d.ino, b"f", file(0o644)).unwrap();
    assert_eq!(parent.ino, d.ino);
    assert_eq!(parent.inode, m.get_attr(v, d.ino).unwrap().inode);
    assert_eq!(parent.inode.mtime_ns, f.inode.ctime_ns);
}

#[test]
fn a_file_unlinked_while_open_lives_until_released_or_its_lease_ends() {
    let (m, v) = meta_with_volume(1 << 30);
    let commit = |ino, block| {
        m.commit_writes(
            v,
            &[FileWrite {
                ino,
                slices: vec![slice(0, 1000, block)],
                mtime_ns: 1,
            }],
        )
        .unwrap();
    };
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let g = m.make_node(v, ROOT_INO, b"g", file(0o644)).unwrap();
    commit(f.ino, 5);
    commit(g.ino, 6);
    let open = [f.ino, g.ino];
    let holder = Holder {
        open: &open,
        session: 7,
    };
    // Unlinked while open: nameless, but its bytes stay, and it counts.
    assert_eq!(
        m.unlink_held(v, ROOT_INO, b"f", false, holder).unwrap(),
        Some(f.ino)
    );
    assert!(m.lookup(v, ROOT_INO, b"f").is_err());
    let (a, s) = m.get_slices(v, f.ino).unwrap();
    assert_eq!((a.inode.nlink, a.inode.size, s.len()), (0, 1000, 1));
    commit(f.ino, 7);
    assert_eq!(m.stat_fs(v).unwrap().used, 2000);
    // Replaced by a rename while open: the same.
    let h = m.make_node(v, ROOT_INO, b"h", file(0o644)).unwrap();
    assert_eq!(
        m.rename_held(v, ROOT_INO, b"h", ROOT_INO, b"g", 0, holder)
            .unwrap(),
        Some(g.ino)
    );
    assert_eq!(m.lookup(v, ROOT_INO, b"g").unwrap().ino, h.ino);
    // Released: gone, space given back, and its blocks queued for GC.
    m.release_orphan(v, f.ino).unwrap();
    assert!(m.get_attr(v, f.ino).is_err());
    assert_eq!(m.stat_fs(v).unwrap().used, 1000);
    assert_eq!(m.gc_pending(10).unwrap().len(), 2);
    m.release_orphan(v, f.ino).unwrap();
    // g is still kept: its lease has not run out.
    m.renew_orphans(v, 8, &[g.ino]).unwrap();
    assert_eq!(m.expire_orphans().unwrap(), 0, "lease of 10 minutes");
    // Nothing open: a file losing its last name goes at once.
    let k = m.make_node(v, ROOT_INO, b"k", file(0o644)).unwrap();
    assert_eq!(
        m.unlink_held(v, ROOT_INO, b"k", false, Holder::NONE)
            .unwrap(),
        None
    );
    assert!(m.get_attr(v, k.ino).is_err());
}

#[test]
fn an_orphan_whose_session_stops_renewing_is_removed() {
    let m = Meta::open(
        Arc::new(MemoryStore::new()),
        MetaOptions {
            orphan_lease: std::time::Duration::from_millis(300),
            ..Default::default()
        },
    )
    .unwrap();
    for i in 0..6 {
        m.register_node(0, format!("127.0.0.1:{}", 9000 + i), Default::default())
            .unwrap();
    }
    let v = m
        .create_volume("v", 1 << 30, "ec:4+2", Default::default())
        .unwrap()
        .id;
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let g = m.make_node(v, ROOT_INO, b"g", file(0o644)).unwrap();
    let open = [f.ino, g.ino];
    let holder = Holder {
        open: &open,
        session: 3,
    };
    m.unlink_held(v, ROOT_INO, b"f", false, holder).unwrap();
    m.unlink_held(v, ROOT_INO, b"g", false, holder).unwrap();
    // f's session keeps renewing it; g's client is gone.
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(150));
        m.renew_orphans(v, 3, &[f.ino]).unwrap();
        m.renew_orphans(v, 4, &[g.ino]).unwrap();
    }
    assert_eq!(m.expire_orphans().unwrap(), 1);
    assert!(m.get_attr(v, f.ino).is_ok());
    assert!(m.get_attr(v, g.ino).is_err());
    assert_eq!(m.stat_fs(v).unwrap().inodes, 2, "root and f");
}

#[test]
fn inline_blocks_are_kept_with_their_slices_and_freed_with_the_last_one() {
    use tessera_common::{INLINE_BIT, INLINE_MAX};
    let (m, v) = meta_with_volume(1 << 30);
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let g = m.make_node(v, ROOT_INO, b"g", file(0o644)).unwrap();
    let block = INLINE_BIT | m.alloc_blocks(1).unwrap();
    let data = b"hello, tiny file".to_vec();
    let len = data.len() as u32;
    let part = |ino, block_offset, len| FileWrite {
        ino,
        slices: vec![Slice {
            offset: 0,
            len,
            block,
            block_offset,
            block_len: data.len() as u32,
        }],
        mtime_ns: 1,
    };
    let inline = [InlineBlock {
        block,
        data: data.clone(),
    }];
    // Two files packed into one inline block, committed together.
    m.commit_writes_inline(v, &[part(f.ino, 0, 5), part(g.ino, 7, 9)], &[], &inline, 0)
        .unwrap();
    let d = m.file_data(v, g.ino).unwrap();
    assert_eq!(d.attr.inode.size, 9);
    assert_eq!(d.inline, inline);
    // The same commit retried file by file finds the block kept.
    m.commit_writes_inline(v, &[part(g.ino, 7, 9)], &[], &inline, 0)
        .unwrap();

    // Bad input changes nothing.
    let h = m.make_node(v, ROOT_INO, b"h", file(0o644)).unwrap();
    let other = INLINE_BIT | m.alloc_blocks(1).unwrap();
    let bad = |files: &[FileWrite], inline: &[InlineBlock]| {
        let r = m.commit_writes_inline(v, files, &[], inline, 0);
        assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
        assert_eq!(m.get_attr(v, h.ino).unwrap().inode.size, 0);
    };
    let wrote = |block, block_len| FileWrite {
        ino: h.ino,
        slices: vec![Slice {
            offset: 0,
            len: 1,
            block,
            block_offset: 0,
            block_len,
        }],
        mtime_ns: 1,
    };
    let ib = |block, len: usize| InlineBlock {
        block,
        data: vec![1; len],
    };
    // A slice into an inline block that is not kept.
    bad(&[wrote(other, 1)], &[]);
    // Too large, empty, without the bit, or of another length.
    bad(
        &[wrote(other, INLINE_MAX as u32 + 1)],
        &[ib(other, INLINE_MAX + 1)],
    );
    bad(&[wrote(other, 1)], &[ib(other, 0)]);
    bad(
        &[wrote(other & !INLINE_BIT, 1)],
        &[ib(other & !INLINE_BIT, 1)],
    );
    bad(&[wrote(other, 2)], &[ib(other, 1)]);
    // Nothing points into it, or it is kept with other bytes.
    bad(&[], &[ib(other, 1)]);
    bad(&[wrote(block, len)], &[ib(block, len as usize)]);
    // An inline block has no shards to repair.
    let degraded = crate::repair::Degraded {
        block,
        block_len: len,
        missing: vec![0],
    };
    let r = m.commit_writes_inline(v, &[part(h.ino, 0, 1)], &[degraded], &inline, 0);
    assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");

    // The bytes stay while any slice points into them; the last one gone
    // removes them, and nothing waits for GC on the storage nodes.
    m.unlink(v, ROOT_INO, b"f", false).unwrap();
    assert_eq!(m.file_data(v, g.ino).unwrap().inline, inline);
    m.unlink(v, ROOT_INO, b"g", false).unwrap();
    assert!(m.block(block).unwrap().is_none());
    let key = crate::keys::inline(block);
    assert!(m.store.begin().get(&key).unwrap().is_none());
    assert_eq!(m.queue_status().unwrap().gc_blocks, 0);
}

#[test]
fn an_inline_block_refused_for_quota_leaves_nothing_behind() {
    use tessera_common::INLINE_BIT;
    let (m, v) = meta_with_volume(1 << 20);
    let f = m.make_node(v, ROOT_INO, b"f", file(0o644)).unwrap();
    let w = |slices| FileWrite {
        ino: f.ino,
        slices,
        mtime_ns: 1,
    };
    m.commit_writes(v, &[w(vec![slice(0, (1 << 20) - 8, 5)])])
        .unwrap();
    let block = INLINE_BIT | m.alloc_blocks(1).unwrap();
    let inline = [InlineBlock {
        block,
        data: vec![7; 16],
    }];
    let s = Slice {
        offset: (1 << 20) - 8,
        len: 16,
        block,
        block_offset: 0,
        block_len: 16,
    };
    let r = m.commit_writes_inline(v, &[w(vec![s])], &[], &inline, 0);
    assert!(matches!(r, Err(MetaError::Quota { .. })), "{r:?}");
    assert!(m.block(block).unwrap().is_none());
    let key = crate::keys::inline(block);
    assert!(m.store.begin().get(&key).unwrap().is_none());
    assert_eq!(m.get_attr(v, f.ino).unwrap().inode.size, (1 << 20) - 8);
}
