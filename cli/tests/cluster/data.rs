//! Bytes written through a mount come back exactly: after a full restart of
//! every process, and with up to M storage nodes SIGKILLed; with more
//! missing, reads fail with EIO and never return wrong bytes.

use std::{
    fs::{self, File},
    io::{Read, Write},
    path::Path,
};

use tracing::info;

use crate::harness::{docker::blob, pattern, Cluster};

const MIB: u64 = 1 << 20;

pub fn write_big(path: &Path, seed: u64, size: u64) {
    let mut f = File::create(path).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        pattern(seed, off, &mut buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        off += n as u64;
    }
    f.sync_all().unwrap();
}

/// Reads the file and compares it with the pattern; returns the first
/// error the read hit, if any.
pub fn check_big(path: &Path, seed: u64, size: u64) -> std::io::Result<()> {
    let mut f = File::open(path)?;
    assert_eq!(
        f.metadata()?.len(),
        size,
        "{} has the wrong size",
        path.display()
    );
    let mut buf = vec![0u8; MIB as usize];
    let mut want = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < size {
        let n = (size - off).min(MIB) as usize;
        f.read_exact(&mut buf[..n])?;
        pattern(seed, off, &mut want[..n]);
        assert!(
            buf[..n] == want[..n],
            "{} differs in the MiB at {off}",
            path.display()
        );
        off += n as u64;
    }
    Ok(())
}

/// A tree of `dirs` directories of `files` small files each (`dD/fI`
/// holds "D-I") and `big`, `blocks` blocks of 16 MiB, fsynced.
pub fn write_tree(d: &Path, dirs: u64, files: u64, blocks: u64) {
    for dir in 0..dirs {
        fs::create_dir(d.join(format!("d{dir}"))).unwrap();
        for i in 0..files {
            fs::write(d.join(format!("d{dir}/f{i}")), format!("{dir}-{i}")).unwrap();
        }
    }
    let mut big = File::create(d.join("big")).unwrap();
    for i in 0..blocks {
        big.write_all(&blob(i, 16 << 20)).unwrap();
    }
    big.sync_all().unwrap();
}

/// Checks a tree [`write_tree`] wrote, but for the files `skip` names
/// (moved since).
pub fn check_tree(d: &Path, dirs: u64, files: u64, blocks: u64, skip: &[(u64, u64)]) {
    for dir in 0..dirs {
        for i in (0..files).filter(|i| !skip.contains(&(dir, *i))) {
            let got = fs::read_to_string(d.join(format!("d{dir}/f{i}"))).unwrap();
            assert_eq!(got, format!("{dir}-{i}"));
        }
    }
    let mut f = File::open(d.join("big")).unwrap();
    let mut buf = vec![0u8; 16 << 20];
    for i in 0..blocks {
        f.read_exact(&mut buf).unwrap();
        assert!(buf == blob(i, 16 << 20), "block {i} of big differs");
    }
}

fn small_size(i: u64) -> usize {
    // 0 bytes up to 12 KiB, a few odd sizes.
    ((i * 7919) % 12_289) as usize
}

fn write_small(root: &Path, count: u64) {
    for i in 0..count {
        let dir = root.join(format!("d{:03}", i % 100));
        if i < 100 {
            fs::create_dir(&dir).unwrap();
        }
        let mut data = vec![0u8; small_size(i).next_multiple_of(8)];
        pattern(i, 0, &mut data);
        data.truncate(small_size(i));
        fs::write(dir.join(format!("f{i}")), &data).unwrap();
    }
}

fn check_small(root: &Path, count: u64, step: u64) {
    for i in (0..count).step_by(step as usize) {
        let path = root.join(format!("d{:03}/f{i}", i % 100));
        let got = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut want = vec![0u8; small_size(i).next_multiple_of(8)];
        pattern(i, 0, &mut want);
        want.truncate(small_size(i));
        assert!(got == want, "{} differs", path.display());
    }
}

fn expect_eio(r: std::io::Result<()>) {
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "expected EIO, got {e}"),
        Ok(()) => panic!("read succeeded with more shards missing than parity"),
    }
}

#[test]
fn ec_4_2_survives_restart_and_two_node_losses() {
    let big = 1024 * MIB;
    let small = 10_000;
    let mut c = Cluster::start(6);
    c.create_volume("vol", "20GiB", "ec:4+2");
    let m = c.mount("vol");
    info!("--- write 1 GiB and {small} small files");
    write_big(&m.path("big"), 1, big);
    write_small(&m.dir, small);
    // The design's memory bound for a mount (blocks in flight, a block
    // cache), whatever the allocator keeps for itself.
    let peak = m.peak_rss_mib();
    info!("--- peak resident memory of the mount: {peak} MiB");
    assert!(peak < 300, "the mount peaked at {peak} MiB resident");
    m.unmount();

    info!("--- stop every process, start again");
    c.stop_all();
    c.start_all();
    let m = c.mount("vol");
    check_big(&m.path("big"), 1, big).unwrap();
    check_small(&m.dir, small, 1);
    assert_eq!(fs::read_dir(m.path("d007")).unwrap().count(), 100);

    c.kill_node(1);
    c.kill_node(4);
    info!("--- read with two nodes gone");
    check_big(&m.path("big"), 1, big).unwrap();
    check_small(&m.dir, small, 7);

    c.kill_node(0);
    info!("--- read with three nodes gone: EIO, never wrong bytes");
    expect_eio(check_big(&m.path("big"), 1, big));
    m.unmount();
}

#[test]
fn replica_3_survives_two_node_losses() {
    let size = 96 * MIB + 12_345;
    let mut c = Cluster::start(5);
    c.create_volume("rep", "2GiB", "replica:3");
    let m = c.mount("rep");
    write_big(&m.path("file"), 9, size);
    write_small(&m.dir, 300);
    c.kill_node(0);
    c.kill_node(3);
    info!("--- read with two of five nodes gone");
    check_big(&m.path("file"), 9, size).unwrap();
    check_small(&m.dir, 300, 1);
    c.kill_node(1);
    c.kill_node(2);
    expect_eio(check_big(&m.path("file"), 9, size));
    m.unmount();
}
