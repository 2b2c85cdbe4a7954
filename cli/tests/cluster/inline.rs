//! Tiny files: what a flush leaves in a file's first 4 KiB is kept in the
//! metadata service with the slices that point at it (an inline block),
//! not as a stripe on the storage nodes. Such files are durable once
//! closed (by one writer or eight at once), survive a SIGKILLed metadata
//! service, read back with every storage node down, grow into ordinary
//! blocks, and give their quota back when removed.

use std::{fs, io::Write};

use tessera_common::INLINE_MAX;
use tracing::info;

use crate::harness::{pattern, Cluster};

fn content(seed: u64) -> Vec<u8> {
    // 1 byte to 4 KiB: one file alone always fits an inline block.
    let mut buf = vec![0u8; 1 + (seed * 7919 % INLINE_MAX as u64) as usize];
    pattern(seed, 0, &mut buf);
    buf
}

#[test]
fn tiny_files_are_kept_in_the_metadata_service() {
    const FILES: u64 = 100;
    let mut c = Cluster::start(6);
    c.create_volume("tiny", "1GiB", "ec:4+2");
    let m = c.mount("tiny");
    let before = c.stored_shards();
    for i in 0..FILES {
        fs::write(m.path(&format!("f{i}")), content(i)).unwrap();
    }
    // Eight writers: tiny files closed together share a commit.
    let writers: Vec<_> = (0..8u64)
        .map(|w| {
            let dir = m.dir.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    let seed = 1000 + w * 100 + i;
                    fs::write(dir.join(format!("w{seed}")), content(seed)).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(
        c.stored_shards(),
        before,
        "tiny files were stored on the storage nodes"
    );
    // Overlapping rewrites of the first 4 KiB: more dirty bytes than an
    // inline block holds, all of them in the file's first 4 KiB.
    {
        use std::os::unix::fs::FileExt;
        let f = fs::File::create(m.path("rewritten")).unwrap();
        f.write_all_at(&[b'a'; 3096], 1000).unwrap();
        f.write_all_at(&[b'b'; 1000], 0).unwrap();
        f.write_all_at(&[b'c'; 3096], 1000).unwrap();
        f.sync_all().unwrap();
    }
    let mut rewritten = vec![b'b'; 1000];
    rewritten.extend_from_slice(&[b'c'; 3096]);
    assert_eq!(fs::read(m.path("rewritten")).unwrap(), rewritten);
    // An overwrite in place, and a file that grows past an inline block.
    fs::write(m.path("f0"), b"overwritten").unwrap();
    let mut big = vec![0u8; 3 << 20];
    pattern(7, 0, &mut big);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.path("f1"))
        .unwrap();
    f.write_all(&big).unwrap();
    drop(f);
    let mut grown = content(1);
    grown.extend_from_slice(&big);
    m.kill();

    // Acknowledged means durable: the metadata service dies at once.
    c.kill_meta();
    c.start_meta();
    c.wait_nodes_up(6);
    // With every storage node down, the tiny files still read back.
    for i in 0..6 {
        c.kill_node(i);
    }
    let m = c.mount("tiny");
    assert_eq!(fs::read(m.path("f0")).unwrap(), b"overwritten");
    for i in 2..FILES {
        assert_eq!(
            fs::read(m.path(&format!("f{i}"))).unwrap(),
            content(i),
            "f{i}"
        );
    }
    for w in 0..8u64 {
        for i in 0..25 {
            let seed = 1000 + w * 100 + i;
            let got = fs::read(m.path(&format!("w{seed}"))).unwrap();
            assert_eq!(got, content(seed), "w{seed}");
        }
    }
    let err = fs::read(m.path("f1")).unwrap_err();
    info!("--- the grown file with no storage node: {err}");
    assert_eq!(err.raw_os_error(), Some(libc::EIO));
    m.unmount();
    for i in 0..6 {
        c.start_node(i);
    }
    c.wait_nodes_up(6);
    let m = c.mount("tiny");
    assert_eq!(fs::read(m.path("f1")).unwrap(), grown);
    assert_eq!(fs::read(m.path("rewritten")).unwrap(), rewritten);
    // Removing them gives the quota back.
    fs::remove_file(m.path("rewritten")).unwrap();
    for i in 0..FILES {
        fs::remove_file(m.path(&format!("f{i}"))).unwrap();
    }
    for w in 0..8u64 {
        for i in 0..25 {
            fs::remove_file(m.path(&format!("w{}", 1000 + w * 100 + i))).unwrap();
        }
    }
    let inspect = c.cli_ok(&["volume", "inspect", "tiny"]);
    let used = inspect.lines().find(|l| l.starts_with("used:")).unwrap();
    assert!(used.ends_with("(0 bytes)"), "{inspect}");
    m.unmount();
}
