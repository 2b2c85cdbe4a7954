//! Files unlinked while open.

use std::time::Duration;

use tessera_common::ROOT_INO;

use crate::{
    fs::{Holder, MAX_RENEW},
    testing::{each_store, slice, Fx},
    MetaError, MetaOptions,
};

#[test]
fn a_file_unlinked_while_open_lives_until_released_or_its_lease_ends() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        let g = t.file(ROOT_INO, b"g");
        t.commit(f.ino, vec![slice(0, 1000, 5)]).unwrap();
        t.commit(g.ino, vec![slice(0, 1000, 6)]).unwrap();
        let open = [f.ino, g.ino];
        let holder = Holder {
            open: &open,
            session: 7,
        };
        // Unlinked while open: nameless, but its bytes stay, and it counts.
        assert_eq!(
            t.unlink_held(ROOT_INO, b"f", false, holder).unwrap(),
            Some(f.ino)
        );
        assert!(t.m.tree().lookup(t.v, ROOT_INO, b"f").is_err());
        let d = t.m.files().read(t.v, f.ino).unwrap();
        assert_eq!((d.attr.nlink, d.attr.size, d.slices.len()), (0, 1000, 1));
        t.commit(f.ino, vec![slice(0, 1000, 7)]).unwrap();
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 2000);
        // Replaced by a rename while open: the same.
        let h = t.file(ROOT_INO, b"h");
        let r = t.m.tree().rename(&crate::fs::Rename {
            vol: t.v,
            parent: ROOT_INO,
            name: b"h",
            new_parent: ROOT_INO,
            new_name: b"g",
            flags: 0,
            holder,
        });
        assert_eq!(r.unwrap(), Some(g.ino));
        assert_eq!(t.m.tree().lookup(t.v, ROOT_INO, b"g").unwrap().ino, h.ino);
        // Released: gone, space given back, and its blocks queued for GC.
        t.m.tree().release_orphan(t.v, f.ino).unwrap();
        assert!(t.attr(f.ino).is_err());
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 1000);
        assert_eq!(t.gc(), vec![5, 7]);
        t.m.tree().release_orphan(t.v, f.ino).unwrap();
        // g is still kept: its lease has not run out.
        t.m.tree().renew_orphans(t.v, 8, &[g.ino]).unwrap();
        assert_eq!(
            t.m.tree().expire_orphans().unwrap(),
            0,
            "lease of 10 minutes"
        );
        // Nothing open: a file losing its last name goes at once.
        let k = t.file(ROOT_INO, b"k");
        assert_eq!(t.unlink(ROOT_INO, b"k", false).unwrap(), None);
        assert!(t.attr(k.ino).is_err());
    });
}

#[test]
fn an_orphan_whose_session_stops_renewing_is_removed() {
    each_store(|s| {
        let options = MetaOptions {
            orphan_lease: Duration::from_millis(300),
            ..Default::default()
        };
        let t = Fx::with(s, 1 << 30, options);
        let f = t.file(ROOT_INO, b"f");
        let g = t.file(ROOT_INO, b"g");
        let open = [f.ino, g.ino];
        let holder = Holder {
            open: &open,
            session: 3,
        };
        t.unlink_held(ROOT_INO, b"f", false, holder).unwrap();
        t.unlink_held(ROOT_INO, b"g", false, holder).unwrap();
        // f's session keeps renewing it; g's client is gone.
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(150));
            t.m.tree().renew_orphans(t.v, 3, &[f.ino]).unwrap();
            t.m.tree().renew_orphans(t.v, 4, &[g.ino]).unwrap();
        }
        assert_eq!(t.m.tree().expire_orphans().unwrap(), 1);
        assert!(t.attr(f.ino).is_ok());
        assert!(t.attr(g.ino).is_err());
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().inodes, 2, "root and f");
    });
}

#[test]
fn a_renewal_or_unlink_naming_too_many_inodes_is_refused() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f");
        let open = [f.ino];
        t.unlink_held(
            ROOT_INO,
            b"f",
            false,
            Holder {
                open: &open,
                session: 3,
            },
        )
        .unwrap();
        let many: Vec<u64> = (0..MAX_RENEW as u64 + 1).map(|i| f.ino + i).collect();
        assert!(matches!(
            t.m.tree().renew_orphans(t.v, 3, &many),
            Err(MetaError::Invalid(_))
        ));
        // What an older client sends in one call is renewed in steps.
        t.m.tree().renew_orphans(t.v, 3, &many[..5000]).unwrap();
        let huge = vec![0u64; crate::fs::MAX_OPEN + 1];
        t.file(ROOT_INO, b"g");
        let r = t.unlink_held(
            ROOT_INO,
            b"g",
            false,
            Holder {
                open: &huge,
                session: 3,
            },
        );
        assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
        assert!(
            t.m.tree().lookup(t.v, ROOT_INO, b"g").is_ok(),
            "a refused unlink changed nothing"
        );
    });
}
