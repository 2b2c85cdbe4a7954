//! Names, attributes and xattrs.

use tessera_common::{
    fs::{RENAME_EXCHANGE, RENAME_NOREPLACE, XATTR_CREATE, XATTR_REPLACE},
    FileKind, NewNode, ROOT_INO,
};

use crate::{
    fs::MakeNode,
    testing::{each_store, Fx},
    MetaError,
};

#[test]
fn create_lookup_and_errors() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let d = t.dir(ROOT_INO, b"d");
        let f = t.file(d.ino, b"f");
        assert_eq!(t.m.tree().lookup(t.v, d.ino, b"f").unwrap(), f);
        assert_eq!(t.attr(ROOT_INO).unwrap().nlink, 3);
        assert!(matches!(
            t.make(d.ino, b"f", FileKind::File),
            Err(MetaError::Exists { .. })
        ));
        assert!(matches!(
            t.make(f.ino, b"x", FileKind::File),
            Err(MetaError::NotDir { .. })
        ));
        assert!(matches!(
            t.m.tree().lookup(t.v, d.ino, b"nope"),
            Err(MetaError::NotFound { .. })
        ));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
            assert!(matches!(
                t.make(ROOT_INO, bad, FileKind::File),
                Err(MetaError::Invalid(_))
            ));
        }
        assert!(matches!(
            t.make(ROOT_INO, &[b'x'; 300], FileKind::File),
            Err(MetaError::NameTooLong(_))
        ));
        for target in [&b""[..], &[b'x'; 5000][..]] {
            let r = t.m.tree().make_node(&MakeNode {
                vol: t.v,
                parent: ROOT_INO,
                name: b"l",
                node: NewNode {
                    target,
                    ..NewNode::new(FileKind::Symlink, 0o777)
                },
            });
            assert!(matches!(r, Err(MetaError::Invalid(_))), "{r:?}");
        }
        assert!(matches!(
            t.unlink(ROOT_INO, b"d", true),
            Err(MetaError::NotEmpty { .. })
        ));
        assert!(matches!(
            t.unlink(ROOT_INO, b"d", false),
            Err(MetaError::IsDir { .. })
        ));
        assert!(matches!(
            t.unlink(d.ino, b"f", true),
            Err(MetaError::NotDir { .. })
        ));
        t.unlink(d.ino, b"f", false).unwrap();
        t.unlink(ROOT_INO, b"d", true).unwrap();
        assert_eq!(t.attr(ROOT_INO).unwrap().nlink, 2);
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().inodes, 1);
    });
}

#[test]
fn rename_overwrites_moves_and_refuses_loops() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let a = t.dir(ROOT_INO, b"a");
        let b = t.dir(a.ino, b"b");
        let x = t.file(ROOT_INO, b"x");
        t.file(ROOT_INO, b"y");
        t.rename(ROOT_INO, b"x", ROOT_INO, b"y", 0).unwrap();
        assert_eq!(t.m.tree().lookup(t.v, ROOT_INO, b"y").unwrap().ino, x.ino);
        assert!(t.m.tree().lookup(t.v, ROOT_INO, b"x").is_err());
        assert_eq!(
            t.m.volumes().stat_fs(t.v).unwrap().inodes,
            4,
            "the overwritten file was freed"
        );
        assert!(matches!(
            t.rename(ROOT_INO, b"a", b.ino, b"a2", 0),
            Err(MetaError::Invalid(_))
        ));
        t.rename(a.ino, b"b", ROOT_INO, b"b", 0).unwrap();
        assert_eq!(t.attr(a.ino).unwrap().nlink, 2);
        assert_eq!(t.attr(ROOT_INO).unwrap().nlink, 4);
        assert!(matches!(
            t.rename(ROOT_INO, b"y", ROOT_INO, b"a", 0),
            Err(MetaError::IsDir { .. })
        ));
        assert!(matches!(
            t.rename(ROOT_INO, b"y", ROOT_INO, b"b", RENAME_NOREPLACE),
            Err(MetaError::IsDir { .. }) | Err(MetaError::Exists { .. })
        ));
        assert!(matches!(
            t.rename(
                ROOT_INO,
                b"y",
                ROOT_INO,
                b"z",
                RENAME_NOREPLACE | RENAME_EXCHANGE
            ),
            Err(MetaError::Invalid(_))
        ));
        t.rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE)
            .unwrap();
        assert_eq!(t.m.tree().lookup(t.v, ROOT_INO, b"b").unwrap().ino, a.ino);
    });
}

#[test]
fn xattrs_and_readdir_paging() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let tree = t.m.tree();
        let f = t.file(ROOT_INO, b"f");
        tree.set_xattr(t.v, f.ino, b"user.a", b"1", 0).unwrap();
        assert!(matches!(
            tree.set_xattr(t.v, f.ino, b"user.a", b"2", XATTR_CREATE),
            Err(MetaError::Exists { .. })
        ));
        assert!(matches!(
            tree.set_xattr(t.v, f.ino, b"user.b", b"2", XATTR_REPLACE),
            Err(MetaError::NoXattr { .. })
        ));
        assert!(matches!(
            tree.set_xattr(t.v, f.ino, b"user.b", b"2", 8),
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            tree.set_xattr(t.v, f.ino, b"user\0b", b"2", 0),
            Err(MetaError::Invalid(_))
        ));
        assert_eq!(tree.get_xattr(t.v, f.ino, b"user.a").unwrap(), b"1");
        assert_eq!(
            tree.list_xattr(t.v, f.ino).unwrap(),
            vec![b"user.a".to_vec()]
        );
        tree.remove_xattr(t.v, f.ino, b"user.a").unwrap();
        assert!(tree.get_xattr(t.v, f.ino, b"user.a").is_err());
        for i in 0..25 {
            t.file(ROOT_INO, format!("n{i:02}").as_bytes());
        }
        let mut seen = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = tree.read_dir(t.v, ROOT_INO, &after, 7).unwrap();
            if page.is_empty() {
                break;
            }
            after = page.last().unwrap().name.clone();
            seen.extend(page.into_iter().map(|e| e.name));
        }
        assert_eq!(seen.len(), 26);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
    });
}

#[test]
fn sync_names_the_volume_and_create_answers_with_the_parent() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        t.m.tree().sync(t.v).unwrap();
        assert!(matches!(
            t.m.tree().sync(t.v + 1000),
            Err(MetaError::NotFound { .. })
        ));
        let d = t.dir(ROOT_INO, b"d");
        let made =
            t.m.tree()
                .make_node(&MakeNode {
                    vol: t.v,
                    parent: d.ino,
                    name: b"f",
                    node: NewNode::new(FileKind::File, 0o644),
                })
                .unwrap();
        assert_eq!(made.parent, t.attr(d.ino).unwrap());
        assert_eq!(made.parent.mtime_ns, made.node.ctime_ns);
    });
}

#[test]
fn a_lookup_page_holds_the_names_from_one_on_with_their_attributes() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let tree = t.m.tree();
        let d = t.dir(ROOT_INO, b"d");
        let files: Vec<_> = (0..10)
            .map(|i| t.file(d.ino, format!("f{i}").as_bytes()))
            .collect();
        // From a name that exists: it comes first, with what lookup says.
        let p = tree.lookup_page(t.v, d.ino, b"f3", 4).unwrap();
        let names: Vec<_> = p.entries.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, [&b"f3"[..], b"f4", b"f5", b"f6"]);
        assert_eq!(p.entries[0].1, files[3]);
        assert_eq!(p.entries[1].1, tree.lookup(t.v, d.ino, b"f4").unwrap());
        assert!(!p.complete);
        // From a name that does not: the names after it, to the end.
        let p = tree.lookup_page(t.v, d.ino, b"f55", 100).unwrap();
        let names: Vec<_> = p.entries.iter().map(|(n, _)| n.clone()).collect();
        assert_eq!(names, [&b"f6"[..], b"f7", b"f8", b"f9"]);
        assert!(p.complete);
        let p = tree.lookup_page(t.v, d.ino, b"g", 100).unwrap();
        assert!(p.entries.is_empty() && p.complete);
        // A limit of 0 means 1, and a page never holds more than its most.
        assert_eq!(
            tree.lookup_page(t.v, d.ino, b"f", 0).unwrap().entries.len(),
            1
        );
        let p = tree
            .lookup_page(t.v, d.ino, b"f", u32::MAX as usize)
            .unwrap();
        assert_eq!(p.entries.len(), 10);
        assert!(p.complete);
        // Not a directory, no such directory, a name no lookup takes.
        assert!(matches!(
            tree.lookup_page(t.v, files[0].ino, b"a", 4),
            Err(MetaError::NotDir { .. })
        ));
        assert!(tree.lookup_page(t.v, 999_999, b"a", 4).is_err());
        for bad in [&b""[..], b"..", b"a/b", b"a\0b"] {
            assert!(matches!(
                tree.lookup_page(t.v, d.ino, bad, 4),
                Err(MetaError::Invalid(_))
            ));
        }
        assert!(matches!(
            tree.lookup_page(t.v, d.ino, &[b'x'; 300], 4),
            Err(MetaError::NameTooLong(_))
        ));
    });
}
