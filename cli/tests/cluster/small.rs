//! Small files: the remainders that several files flush at about the same
//! time share one block (group commit), one file's failed commit does not
//! fail the others', and every file reads back exactly.

use std::{fs, thread};

use tessera_client::{Volume, VolumeOptions};
use tessera_common::{FileKind, NewNode, ROOT_INO};
use tracing::info;

use crate::harness::{pattern, Cluster};

fn content(seed: u64) -> Vec<u8> {
    // 1 byte to 12 KiB.
    let mut buf = vec![0u8; 1 + (seed * 7919 % 12_288) as usize];
    pattern(seed, 0, &mut buf);
    buf
}

#[test]
fn small_files_flushed_together_share_blocks_and_read_back() {
    const FILES: u64 = 200;
    const GONE: u64 = 77;
    let c = Cluster::start(6);
    c.create_volume("small", "1GiB", "ec:4+2");
    let before = c.stored_shards();
    // 200 files written, then flushed together (as an unmount does), one
    // of them removed by another client before its data is committed.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let open = || {
        rt.block_on(Volume::open(
            &c.meta_addr,
            "small",
            VolumeOptions::default(),
        ))
        .unwrap()
    };
    let vol = open();
    let file = NewNode::new(FileKind::File, 0o644);
    for i in 0..FILES {
        let name = format!("f{i}");
        let a = vol
            .make_node(ROOT_INO, name.as_bytes(), &file)
            .unwrap()
            .node;
        vol.open_file(a.ino, i, None).unwrap();
        vol.block_on(vol.write(a.ino, i, 0, &content(i))).unwrap();
    }
    // Another client, which does not have it open, removes one.
    open()
        .unlink(ROOT_INO, format!("f{GONE}").as_bytes(), false)
        .unwrap();
    let flushed = vol.block_on(vol.flush_all());
    let err = flushed.expect_err("the removed file's flush fails");
    info!("--- flush of the removed file: {err}");
    // About 1 MiB in all: a few blocks, not one per file.
    let blocks = (c.stored_shards() - before) / 6;
    info!("--- {FILES} small files flushed together: {blocks} blocks");
    assert!(blocks <= 4, "{FILES} small files took {blocks} blocks");

    let m = c.mount("small");
    for i in (0..FILES).filter(|i| *i != GONE) {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).unwrap(),
            content(i),
            "f{i}"
        );
    }
    assert!(!m.path(&format!("f{GONE}")).exists());

    // Through FUSE: eight writers closing small files at the same time.
    let before = c.stored_shards();
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let dir = m.dir.clone();
            thread::spawn(move || {
                for i in 0..50 {
                    let seed = 1000 + w * 100 + i;
                    fs::write(dir.join(format!("w{seed}")), content(seed)).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let blocks = (c.stored_shards() - before) / 6;
    info!("--- 400 small files from 8 writers: {blocks} blocks");
    m.unmount();
    let m = c.mount("small");
    for w in 0..8u64 {
        for i in 0..50 {
            let seed = 1000 + w * 100 + i;
            assert_eq!(
                fs::read(m.path(&format!("w{seed}"))).unwrap(),
                content(seed),
                "w{seed}"
            );
        }
    }
    m.unmount();
}
