//! Volumes: validation, deletion, and a deletion cut short, on every
//! backend.

use tessera_common::{VolumeSpec, CHUNK_SIZE, ROOT_INO};

use crate::{
    keys,
    testing::{each_store, slice, spec, write, Fx},
    Meta, MetaError, MetaOptions,
};

#[test]
fn volumes_validate_and_delete() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let vols = t.m.volumes();
        assert!(matches!(
            vols.create(&spec("v", 1 << 30, "ec:4+2")),
            Err(MetaError::Exists { .. })
        ));
        for bad in [
            spec("../x", 1 << 30, "ec:4+2"),
            spec("w", 0, "ec:4+2"),
            spec("w", u64::MAX, "ec:4+2"),
            spec(&"x".repeat(300), 1 << 30, "ec:4+2"),
            spec("a\0b", 1 << 30, "ec:4+2"),
            VolumeSpec {
                min_durable: 9,
                ..spec("w", 1 << 30, "ec:4+2")
            },
        ] {
            let r = vols.create(&bad);
            assert!(matches!(r, Err(MetaError::Invalid(_))), "{bad:?}: {r:?}");
        }
        assert!(matches!(
            vols.create(&spec("w", 1 << 30, "ec:5+2")),
            Err(MetaError::Unavailable(_))
        ));
        assert_eq!(vols.list().unwrap().len(), 1);
        t.file(ROOT_INO, b"f");
        vols.delete("v").unwrap();
        assert!(vols.get("v").is_err());
        // The tree goes in the background.
        t.m.gc().finish_deferred().unwrap();
        assert!(t.attr(ROOT_INO).is_err());
    });
}

#[test]
fn removing_a_volume_queues_exactly_its_blocks_for_gc() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let other =
            t.m.volumes()
                .create(&spec("other", 1 << 30, "ec:4+2"))
                .unwrap();
        let f = t.file(ROOT_INO, b"f");
        // Two slices share block 5; block 6 alone; a far chunk uses block 7.
        let far = 3 * CHUNK_SIZE;
        t.commit(
            f.ino,
            vec![
                slice(0, 100, 5),
                slice(100, 100, 5),
                slice(200, 10, 6),
                slice(far, 10, 7),
            ],
        )
        .unwrap();
        let o = Fx {
            m: t.m,
            v: other.id,
        };
        let g = o.file(ROOT_INO, b"g");
        o.commit_all(&[write(g.ino, vec![slice(0, 100, 9)])], &[], &[])
            .unwrap();
        assert!(o.gc().is_empty(), "nothing dead yet");

        o.m.volumes().delete("v").unwrap();
        assert!(o.gc().is_empty(), "the tree goes in the background");
        o.m.gc().finish_deferred().unwrap();
        assert_eq!(o.gc(), vec![5, 6, 7], "the other volume's block 9 stays");
        let (_, rec) = o.m.gc().pending(1).unwrap()[0];
        assert_eq!(rec.protection.to_string(), "ec:4+2");
        o.m.gc().forget(&[5, 7]).unwrap();
        assert_eq!(o.gc(), vec![6]);
        assert_eq!(o.slices(g.ino).len(), 1, "the other volume is untouched");
    });
}

#[test]
fn a_volume_deletion_cut_short_is_finished_at_open() {
    each_store(|s| {
        let t = Fx::new(s.clone(), 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        t.commit(f.ino, vec![slice(0, 100, 5)]).unwrap();
        // The "crash": the name and record are gone, the tree is not.
        t.m.volumes().begin_delete("v").unwrap();
        let v = t.v;
        drop(t);
        let m = Meta::open(s.clone(), MetaOptions::default()).unwrap();
        let (start, end) = keys::prefix_range(&keys::in_volume(keys::INODE, v));
        assert!(
            s.begin().scan(&start, &end, 10).unwrap().is_empty(),
            "tree deleted"
        );
        assert_eq!(
            m.gc().pending(10).unwrap().len(),
            1,
            "its block queued for GC"
        );
        assert!(m.volumes().get("v").is_err());
    });
}
