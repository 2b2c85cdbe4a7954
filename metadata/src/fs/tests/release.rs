//! Large files are released and trimmed in steps, each safe to crash after.

use tessera_common::{Attr, Ino, SetAttr, Slice, CHUNK_SIZE, ROOT_INO};

use crate::{
    fs::{release, TreeTxn},
    keys,
    store::{transact_buffered, MetaStore},
    testing::{each_store, write, Fx},
    Meta, MetaOptions,
};

/// Chunks and slices per chunk of the large file: some 32,000 slices,
/// about 2 MB of rows, more than a step releases.
const CHUNKS: u64 = 64;
const PER_CHUNK: u32 = 512;

/// A sparse 4 GiB file with a slice every 32 bytes of the start of each
/// 64 MiB chunk, one block per chunk.
fn large_file(t: &Fx, name: &[u8]) -> Attr {
    let f = t.file(ROOT_INO, name);
    for c in 0..CHUNKS {
        let block = 1000 + c + f.ino * 10_000;
        let slices: Vec<Slice> = (0..PER_CHUNK)
            .map(|i| Slice {
                offset: c * CHUNK_SIZE + u64::from(i) * 32,
                len: 16,
                block,
                block_offset: i * 16,
                block_len: PER_CHUNK * 16,
            })
            .collect();
        t.commit_all(&[write(f.ino, slices)], &[], &[]).unwrap();
    }
    t.attr(f.ino).unwrap()
}

fn rows(store: &dyn MetaStore, prefix: u8, t: &Fx, ino: Ino) -> usize {
    let (start, end) = keys::prefix_range(&keys::under(prefix, t.v, ino));
    store.begin().scan(&start, &end, usize::MAX).unwrap().len()
}

#[test]
fn a_large_file_is_released_and_every_block_freed() {
    each_store(|s| {
        let t = Fx::new(s.clone(), 1 << 40);
        let f = large_file(&t, b"big");
        assert_eq!(
            f.size,
            (CHUNKS - 1) * CHUNK_SIZE + u64::from(PER_CHUNK - 1) * 32 + 16
        );
        t.unlink(ROOT_INO, b"big", false).unwrap();
        // The unlink answered once the file was gone and its bytes no
        // longer counted; the rest is the garbage collection task's.
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 0);
        assert_eq!(t.m.repair().status().unwrap().releasing_files, 1);
        t.m.gc().finish_deferred().unwrap();
        assert_eq!(t.m.repair().status().unwrap().releasing_files, 0);
        assert_eq!(rows(s.as_ref(), keys::SLICE, &t, f.ino), 0);
        assert!(s.begin().get(&keys::release(t.v, f.ino)).unwrap().is_none());
        assert_eq!(t.gc().len(), CHUNKS as usize, "every block queued once");
        assert_eq!(t.m.volumes().stat_fs(t.v).unwrap().used, 0);
    });
}

#[test]
fn a_release_cut_short_is_finished_at_open() {
    each_store(|s| {
        let t = Fx::new(s.clone(), 1 << 40);
        let f = large_file(&t, b"big");
        // The unlink's first transaction, then a crash.
        let pending = transact_buffered(s.as_ref(), |txn| {
            let mut tree = TreeTxn::new(txn, t.v);
            tree.delete_dentry(ROOT_INO, b"big")?;
            let pending = release::remove_inode(&mut tree, f.ino)?;
            tree.finish()?;
            Ok(pending)
        })
        .unwrap();
        assert!(pending, "one step cannot release the whole file");
        let left = rows(s.as_ref(), keys::SLICE, &t, f.ino);
        let all = (CHUNKS * u64::from(PER_CHUNK)) as usize;
        assert!(left > 0 && left < all, "{left} of {all} slices left");
        assert!(s.begin().get(&keys::release(t.v, f.ino)).unwrap().is_some());
        let v = t.v;
        drop(t);
        let m = Meta::open(s.clone(), MetaOptions::default()).unwrap();
        let t = Fx { m, v };
        assert_eq!(rows(s.as_ref(), keys::SLICE, &t, f.ino), 0);
        assert!(s.begin().get(&keys::release(v, f.ino)).unwrap().is_none());
        assert_eq!(t.gc().len(), CHUNKS as usize);
    });
}

#[test]
fn a_truncation_in_steps_never_cuts_a_later_commit() {
    each_store(|s| {
        let t = Fx::new(s.clone(), 1 << 40);
        let f = large_file(&t, b"big");
        let cut = 10 * CHUNK_SIZE + 64;
        // A truncation's first step, then a crash before the others.
        let pending = transact_buffered(s.as_ref(), |txn| {
            let mut tree = TreeTxn::new(txn, t.v);
            let mut inode = tree.inode(f.ino)?;
            inode.size = cut;
            let pending = release::cut(&mut tree, f.ino, cut)?;
            tree.set(f.ino, inode);
            tree.finish()?;
            Ok(pending)
        })
        .unwrap();
        assert!(pending);
        // Read meanwhile, the file shows nothing past its new size.
        let d = t.m.files().read(t.v, f.ino).unwrap();
        assert_eq!(d.attr.size, cut);
        assert!(
            d.slices.iter().all(|x| x.end() <= cut),
            "a reader saw cut slices"
        );
        // A commit past the cut finishes the trim first: its slice stays.
        let late = Slice {
            offset: 100 * CHUNK_SIZE,
            len: 10,
            block: 9,
            block_offset: 0,
            block_len: 10,
        };
        t.commit(f.ino, vec![late]).unwrap();
        let slices = t.slices(f.ino);
        assert!(slices.contains(&late), "the later commit was cut");
        assert!(
            slices.iter().all(|x| x.end() <= cut || *x == late),
            "bytes past the truncation are still there"
        );
        assert!(s.begin().get(&keys::trim(t.v, f.ino)).unwrap().is_none());
        // Everything cut off was given back to GC, and the file's blocks
        // before the cut stay.
        assert_eq!(t.gc().len(), (CHUNKS - 11) as usize);
        // A truncation through the service takes all its steps at once.
        t.m.tree()
            .set_attr(
                t.v,
                f.ino,
                &SetAttr {
                    size: Some(32),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(t.slices(f.ino).iter().all(|x| x.end() <= 32));
        assert!(s.begin().get(&keys::trim(t.v, f.ino)).unwrap().is_none());
    });
}
