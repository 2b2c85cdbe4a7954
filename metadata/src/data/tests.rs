//! Commits: slices, quota, block references, degraded and inline blocks,
//! on every backend.

use std::sync::Barrier;

use tessera_common::{
    DegradedBlock, InlineBlock, SetAttr, Slice, CHUNK_SIZE, DEFERRED_MAX, INLINE_BIT, ROOT_INO,
};

use crate::{
    testing::{each_store, slice, spec, write, Fx},
    MetaError,
};

fn truncate(t: &Fx, ino: u64, size: u64) -> Result<tessera_common::Attr, MetaError> {
    t.m.tree().set_attr(
        t.v,
        ino,
        &SetAttr {
            size: Some(size),
            ..Default::default()
        },
    )
}

#[test]
fn slices_commit_truncate_and_quota() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 20);
        let f = t.file(ROOT_INO, b"f");
        t.commit(f.ino, vec![slice(0, 1000, 5), slice(500, 100, 6)])
            .unwrap();
        assert_eq!(t.attr(f.ino).unwrap().size, 1000);
        // The second falls inside the first: three extents show.
        assert_eq!(
            t.slices(f.ino)
                .iter()
                .map(|x| (x.offset, x.len, x.block))
                .collect::<Vec<_>>(),
            vec![(0, 500, 5), (500, 100, 6), (600, 400, 5)]
        );
        truncate(&t, f.ino, 550).unwrap();
        assert_eq!(t.attr(f.ino).unwrap().size, 550);
        let s = t.slices(f.ino);
        assert!(s.iter().all(|x| x.end() <= 550), "{s:?}");
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 550);
        let too_big = t.commit(f.ino, vec![slice(0, 1 << 20, 7), slice(1 << 20, 10, 8)]);
        assert!(matches!(too_big, Err(MetaError::Quota { .. })));
        assert_eq!(
            t.attr(f.ino).unwrap().size,
            550,
            "a refused commit changed the file"
        );
        assert!(matches!(
            truncate(&t, f.ino, 2 << 20),
            Err(MetaError::Quota { .. })
        ));
        assert!(matches!(
            truncate(&t, f.ino, u64::MAX),
            Err(MetaError::FileTooLarge { .. })
        ));
        assert!(matches!(
            t.commit(f.ino, vec![slice(0, 0, 9)]),
            Err(MetaError::Invalid(_))
        ));
        t.unlink(ROOT_INO, b"f", false).unwrap();
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 0);
    });
}

/// Writers racing for the last bytes of a volume never take it past its
/// size, whether they grow files by commits or by truncation.
#[test]
fn racing_writers_never_pass_the_quota() {
    each_store(|s| {
        const WRITERS: usize = 8;
        const SIZE: u64 = 1 << 20;
        let t = Fx::new(s, SIZE);
        let files: Vec<u64> = (0..WRITERS)
            .map(|i| t.file(ROOT_INO, format!("f{i}").as_bytes()).ino)
            .collect();
        for round in 0..20u64 {
            let barrier = Barrier::new(WRITERS);
            std::thread::scope(|sc| {
                for (i, &ino) in files.iter().enumerate() {
                    let (t, barrier) = (&t, &barrier);
                    sc.spawn(move || {
                        barrier.wait();
                        // Each asks for a sixth of the volume more.
                        let end = (round + 1) * SIZE / 6;
                        let _ = if i % 2 == 0 {
                            t.commit(
                                ino,
                                vec![slice(end - 4096, 4096, 1 + round * 100 + i as u64)],
                            )
                            .map(drop)
                        } else {
                            truncate(t, ino, end).map(drop)
                        };
                    });
                }
            });
            let sizes: u64 = files.iter().map(|&f| t.attr(f).unwrap().size).sum();
            let used = t.m.volumes().stat_fs(t.v).unwrap().used;
            assert_eq!(used, sizes, "usage drifted from the inodes");
            assert!(used <= SIZE, "round {round}: {used} bytes used of {SIZE}");
        }
    });
}

#[test]
fn overwrites_leave_one_extent_per_run_of_bytes() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 40);
        let f = t.file(ROOT_INO, b"f");
        // A slice may cross a chunk boundary: it stays one extent.
        t.commit(f.ino, vec![slice(CHUNK_SIZE - 10, 20, 3)])
            .unwrap();
        assert_eq!(t.slices(f.ino).len(), 1);
        for i in 0..100 {
            t.commit(f.ino, vec![slice(0, 4096, 100 + i)]).unwrap();
        }
        let s = t.slices(f.ino);
        assert_eq!(s.len(), 2, "overwritten slices were kept: {s:?}");
        assert_eq!(s[0].block, 199);
        // 4 KiB writes all over a file leave one extent per 4 KiB.
        for i in 0..256u64 {
            let at = (i * 7919 % 256) * 4096;
            t.commit(f.ino, vec![slice(at, 4096, 1000 + i)]).unwrap();
        }
        for i in 0..256u64 {
            t.commit(f.ino, vec![slice(i * 4096, 4096, 2000 + i)])
                .unwrap();
        }
        let s = t.slices(f.ino);
        assert_eq!(s.len(), 257, "one extent per 4 KiB, and the far one");
    });
}

#[test]
fn degraded_commits_queue_missing_shards_and_refuse_bad_reports() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        let w = || [write(f.ino, vec![slice(0, 100, 5)])];
        let d = |block, missing: Vec<u8>| DegradedBlock {
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
            DegradedBlock {
                block_len: 0,
                ..d(5, vec![1])
            },
        ] {
            let r = t.commit_all(&w(), std::slice::from_ref(&bad), &[]);
            assert!(matches!(r, Err(MetaError::Invalid(_))), "{bad:?}: {r:?}");
        }
        assert!(t.slices(f.ino).is_empty());
        assert!(t.m.repair().pending(10).unwrap().is_empty());

        t.commit_all(&w(), &[d(5, vec![2])], &[]).unwrap();
        t.commit_all(&w(), &[d(5, vec![4])], &[]).unwrap();
        let q = t.m.repair().pending(10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].0, 5);
        assert_eq!(q[0].1.missing, vec![2, 4], "reports of one block merge");
        let st = t.m.repair().status().unwrap();
        assert_eq!(
            (st.repair_blocks, st.repair_shards, st.repair_bytes),
            (1, 2, 2 << 20)
        );
        t.m.repair().done(5, &[2]).unwrap();
        assert_eq!(t.m.repair().pending(10).unwrap()[0].1.missing, vec![4]);
        t.m.repair().done(5, &[4]).unwrap();
        assert!(t.m.repair().pending(10).unwrap().is_empty());
    });
}

#[test]
fn blocks_are_freed_when_their_last_reference_goes() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        // Block 10 backs two slices; 11 covers one of them whole, which
        // goes at once (no byte of it shows any more).
        t.commit(f.ino, vec![slice(0, 100, 10), slice(100, 100, 10)])
            .unwrap();
        t.commit(f.ino, vec![slice(0, 100, 11)]).unwrap();
        assert_eq!(t.m.files().block(10).unwrap().unwrap().refs, 1);
        assert_eq!(t.slices(f.ino).len(), 2);
        assert!(t.gc().is_empty(), "block 10 is still referenced");
        // Truncating below 100 drops the slice at 100 (block 10's last)
        // and shortens the other.
        truncate(&t, f.ino, 50).unwrap();
        assert_eq!(t.gc(), vec![10]);
        assert_eq!(t.m.files().block(11).unwrap().unwrap().refs, 1);

        // Many overwrites of the same range: each frees the block before.
        for b in 20..60 {
            t.commit(f.ino, vec![slice(0, 50, b)]).unwrap();
        }
        let freed = t.gc();
        assert!(freed.contains(&11) && freed.contains(&58), "{freed:?}");
        assert!(!freed.contains(&59), "the visible block stays");
        assert_eq!(t.slices(f.ino).len(), 1);
        for b in &freed {
            assert!(t.m.files().block(*b).unwrap().is_none());
        }

        // A hard link keeps the data until the last name goes.
        let g = t.file(ROOT_INO, b"g");
        t.commit(g.ino, vec![slice(0, 10, 70)]).unwrap();
        t.m.tree().link(t.v, g.ino, ROOT_INO, b"g2").unwrap();
        t.unlink(ROOT_INO, b"g", false).unwrap();
        assert!(!t.gc().contains(&70));
        t.unlink(ROOT_INO, b"g2", false).unwrap();
        assert!(t.gc().contains(&70));

        // A freed block cannot be referenced again; another class's block
        // cannot be passed off as this one.
        let h = t.file(ROOT_INO, b"h");
        assert!(t.commit(h.ino, vec![slice(0, 10, 70)]).is_err());
        let mut odd = slice(0, 10, 59);
        odd.block_len = 999;
        assert!(t.commit(h.ino, vec![odd]).is_err());
    });
}

#[test]
fn a_volume_min_durable_bounds_degraded_commits() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let weak = tessera_common::VolumeSpec {
            min_durable: 4,
            ..spec("weak", 1 << 30, "ec:4+2")
        };
        assert!(t.m.volumes().create(&weak).is_err());
        let strict = tessera_common::VolumeSpec {
            min_durable: 6,
            ..spec("strict", 1 << 30, "ec:4+2")
        };
        let v = t.m.volumes().create(&strict).unwrap();
        assert_eq!(t.m.volumes().info(v.clone()).unwrap().min_durable, 6);
        let strict = Fx { m: t.m, v: v.id };
        let f = strict.file(ROOT_INO, b"f");
        let w = [write(f.ino, vec![slice(0, 100, 5)])];
        let d = DegradedBlock {
            block: 5,
            block_len: 100,
            missing: vec![1],
        };
        assert!(strict.commit_all(&w, &[d], &[]).is_err());
        assert!(strict.m.repair().pending(10).unwrap().is_empty());
        strict.commit_all(&w, &[], &[]).unwrap();
    });
}

#[test]
fn inline_blocks_are_kept_with_their_slices_and_freed_with_the_last_one() {
    each_store(|s| {
        let t = Fx::new(s.clone(), 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        let g = t.file(ROOT_INO, b"g");
        let block = INLINE_BIT | t.m.files().alloc_blocks(1).unwrap();
        let data = b"hello, tiny file".to_vec();
        let len = data.len() as u32;
        let part = |ino, block_offset, len| {
            write(
                ino,
                vec![Slice {
                    offset: 0,
                    len,
                    block,
                    block_offset,
                    block_len: data.len() as u32,
                }],
            )
        };
        let inline = [InlineBlock {
            block,
            data: data.clone().into(),
        }];
        // Two files packed into one inline block, committed together.
        t.commit_all(&[part(f.ino, 0, 5), part(g.ino, 7, 9)], &[], &inline)
            .unwrap();
        let d = t.m.files().read(t.v, g.ino).unwrap();
        assert_eq!(d.attr.size, 9);
        assert_eq!(d.inline, inline);
        // The same commit retried file by file finds the block kept.
        t.commit_all(&[part(g.ino, 7, 9)], &[], &inline).unwrap();

        // Bad input changes nothing.
        let h = t.file(ROOT_INO, b"h");
        let other = INLINE_BIT | t.m.files().alloc_blocks(1).unwrap();
        let bad = |files: &[tessera_common::FileWrite], inline: &[InlineBlock]| {
            let r = t.commit_all(files, &[], inline);
            assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
            assert_eq!(t.attr(h.ino).unwrap().size, 0);
        };
        let wrote = |block, block_len| {
            write(
                h.ino,
                vec![Slice {
                    offset: 0,
                    len: 1,
                    block,
                    block_offset: 0,
                    block_len,
                }],
            )
        };
        let ib = |block, len: usize| InlineBlock {
            block,
            data: vec![1; len].into(),
        };
        // A slice into an inline block that is not kept.
        bad(&[wrote(other, 1)], &[]);
        // Too large, empty, without the bit, or of another length.
        bad(
            &[wrote(other, DEFERRED_MAX as u32 + 1)],
            &[ib(other, DEFERRED_MAX + 1)],
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
        let degraded = DegradedBlock {
            block,
            block_len: len,
            missing: vec![0],
        };
        let r = t.commit_all(&[part(h.ino, 0, 1)], &[degraded], &inline);
        assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");

        // The bytes stay while any slice points into them; the last one gone
        // removes them, and nothing waits for GC on the storage nodes.
        t.unlink(ROOT_INO, b"f", false).unwrap();
        assert_eq!(t.m.files().read(t.v, g.ino).unwrap().inline, inline);
        t.unlink(ROOT_INO, b"g", false).unwrap();
        assert!(t.m.files().block(block).unwrap().is_none());
        assert!(s
            .begin()
            .get(&crate::keys::inline(block))
            .unwrap()
            .is_none());
        assert!(t.gc().is_empty());
    });
}

#[test]
fn an_inline_block_refused_for_quota_leaves_nothing_behind() {
    each_store(|s| {
        let t = Fx::new(s.clone(), 1 << 20);
        let f = t.file(ROOT_INO, b"f");
        t.commit(f.ino, vec![slice(0, (1 << 20) - 8, 5)]).unwrap();
        let block = INLINE_BIT | t.m.files().alloc_blocks(1).unwrap();
        let inline = [InlineBlock {
            block,
            data: vec![7; 16].into(),
        }];
        let s2 = Slice {
            offset: (1 << 20) - 8,
            len: 16,
            block,
            block_offset: 0,
            block_len: 16,
        };
        let r = t.commit_all(&[write(f.ino, vec![s2])], &[], &inline);
        assert!(matches!(r, Err(MetaError::Quota { .. })), "{r:?}");
        assert!(t.m.files().block(block).unwrap().is_none());
        assert!(s
            .begin()
            .get(&crate::keys::inline(block))
            .unwrap()
            .is_none());
        assert_eq!(t.attr(f.ino).unwrap().size, (1 << 20) - 8);
    });
}

/// A merge lays fresh slices with the same bytes over a fragmented span
/// only if what shows there is what the merger read; it frees the blocks
/// it leaves without a reference, fills no hole and changes no time.
#[test]
fn a_merge_replaces_fragments_only_if_they_did_not_change() {
    use tessera_common::FileWrite;

    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        // Four fragments from four blocks, with a hole at [300, 400).
        for (i, at) in [0u64, 100, 200, 400].into_iter().enumerate() {
            t.commit(f.ino, vec![slice(at, 100, 10 + i as u64)])
                .unwrap();
        }
        let before = t.attr(f.ino).unwrap();
        let read = t.slices(f.ino);
        assert_eq!(read.len(), 4);
        let merged = |block: u64| FileWrite {
            ino: f.ino,
            slices: vec![
                Slice {
                    offset: 0,
                    len: 300,
                    block,
                    block_offset: 0,
                    block_len: 400,
                },
                Slice {
                    offset: 400,
                    len: 100,
                    block,
                    block_offset: 300,
                    block_len: 400,
                },
            ],
            replaces: read.clone(),
            mtime_ns: i64::MAX,
        };
        // Filling the hole is refused.
        let mut filler = merged(20);
        filler.slices[0].len = 400;
        filler.slices[1].offset = 400;
        assert!(matches!(
            t.commit_all(&[filler], &[], &[]),
            Err(MetaError::Invalid(_))
        ));
        // A write since the read: the merge is refused and changes nothing.
        t.commit(f.ino, vec![slice(150, 10, 30)]).unwrap();
        let now = t.slices(f.ino);
        assert!(matches!(
            t.commit_all(&[merged(21)], &[], &[]),
            Err(MetaError::Busy(_))
        ));
        assert_eq!(t.slices(f.ino), now);
        // Read again, merged: two extents of one block, old blocks freed.
        let read = t.slices(f.ino);
        let mut m = merged(22);
        m.replaces = read;
        t.commit_all(&[m], &[], &[]).unwrap();
        let after = t.slices(f.ino);
        assert_eq!(
            after
                .iter()
                .map(|x| (x.offset, x.len, x.block))
                .collect::<Vec<_>>(),
            vec![(0, 300, 22), (400, 100, 22)]
        );
        let mut freed = t.gc();
        freed.sort();
        assert_eq!(freed, vec![10, 11, 12, 13, 30]);
        let a = t.attr(f.ino).unwrap();
        assert_eq!(
            (a.size, a.mtime_ns, a.ctime_ns),
            (before.size, before.mtime_ns, before.ctime_ns)
        );
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 500);
    });
}
