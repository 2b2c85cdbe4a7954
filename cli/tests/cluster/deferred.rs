//! Deferred writes: a small fsync into a large file (a database's commit)
//! is an inline block, durable once the metadata service's transaction is,
//! and moved to the storage nodes later: while the file is written once
//! enough waits, and all of it once the file is quiet.

use std::{fs, os::unix::fs::FileExt, os::unix::fs::MetadataExt};

use tessera_client::MetaClient;
use tessera_common::FileSlices;
use tracing::info;

use crate::harness::{pattern, Cluster, Mount};

const MIB: u64 = 1 << 20;
const PAGE: usize = 8192;

/// Bytes of the file's inline blocks, as the metadata service holds them.
fn inline_bytes(c: &Cluster, rt: &tokio::runtime::Runtime, ino: u64) -> u64 {
    let meta = rt.block_on(MetaClient::connect(&c.meta_addr)).unwrap();
    let vol = rt.block_on(meta.volume("db")).unwrap().id;
    let f: FileSlices = rt.block_on(meta.file_slices(vol, ino)).unwrap();
    f.inline.iter().map(|b| b.data.len() as u64).sum()
}

/// Writes page `seed`'s bytes at page `at` (modulo the file's pages) and
/// fdatasyncs, as a database's commit.
fn commit(f: &fs::File, seed: u64, at: u64, want: &mut [u8]) {
    let at = (at % (want.len() / PAGE) as u64) as usize * PAGE;
    let p = page(seed);
    f.write_all_at(&p, at as u64).unwrap();
    f.sync_data().unwrap();
    want[at..at + PAGE].copy_from_slice(&p);
}

/// `wal` on `m`: `size` bytes of pattern `seed`, written and fsynced,
/// open for reading and writing; its bytes and inode number.
fn synced_file(m: &Mount, seed: u64, size: u64) -> (fs::File, Vec<u8>, u64) {
    let mut want = vec![0u8; size as usize];
    pattern(seed, 0, &mut want);
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("wal"))
        .unwrap();
    f.write_all_at(&want, 0).unwrap();
    f.sync_data().unwrap();
    let ino = f.metadata().unwrap().ino();
    (f, want, ino)
}

/// A page of bytes from `n`.
fn page(n: u64) -> Vec<u8> {
    let mut p = vec![0u8; PAGE];
    pattern(n, 0, &mut p);
    p
}

#[test]
fn small_fsyncs_into_a_large_file_are_deferred_durable_and_moved_to_the_nodes() {
    let mut c = Cluster::start(6);
    c.create_volume("db", "1GiB", "ec:4+2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = c.mount("db");
    let size = 16 * MIB;
    let (f, mut want, ino) = synced_file(&m, 1, size);
    let shards = c.stored_shards();

    // 12 commits of a page each, here and there (a few in each 4 MiB
    // window, with the file's other bytes between them): no shard stored,
    // the bytes inline.
    for n in 0..12 {
        commit(&f, n, n * 7919, &mut want);
    }
    let held = inline_bytes(&c, &rt, ino);
    info!(
        "--- after 12 page commits: {held} bytes inline, {} shards more",
        c.stored_shards() - shards
    );
    assert_eq!(c.stored_shards(), shards, "a deferred write stored shards");
    assert_eq!(held, 12 * PAGE as u64);

    // Acknowledged is durable: the metadata service and the mount die.
    drop(f);
    m.kill();
    c.kill_meta();
    c.start_meta();
    c.wait_nodes_up(6);
    let m = c.mount("db");
    let back = fs::read(m.path("wal")).unwrap();
    assert!(back == want, "deferred writes lost across a crash");

    // Left by a mount that died: moved by one that reads the file once it
    // has been unchanged for a while (`LEFT_AFTER`).
    std::thread::sleep(std::time::Duration::from_secs(6));
    assert!(inline_bytes(&c, &rt, ino) > 0);
    assert!(fs::read(m.path("wal")).unwrap() == want);
    c.wait_for("the deferred writes to move to the nodes", 60, |c| {
        inline_bytes(c, &rt, ino) == 0
    });
    // As one block: no block per window, none stored and then refused.
    assert_eq!(c.stored_shards(), shards + 6);

    // Written page after page without a pause: moved while written (had
    // nothing moved, about every page written would be inline).
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.path("wal"))
        .unwrap();
    let pages = size / PAGE as u64;
    let mut moved_while_written = None;
    for k in 0..4 * pages {
        commit(&f, 1000 + k, k, &mut want);
        if k % 32 == 31 {
            let held = inline_bytes(&c, &rt, ino);
            let written = (k + 1).min(pages) * PAGE as u64;
            // (A page or two may be stripes: a file's first commit in a
            // mount does not know the file's size yet.)
            if held + MIB / 2 < written {
                moved_while_written = Some((k + 1, held));
                break;
            }
        }
    }
    let (k, held) = moved_while_written.expect("nothing moved while the file was written");
    info!("--- after {k} page commits without a pause: {held} bytes inline");
    let mut got = vec![0u8; size as usize];
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want, "the file reads back different while written");
    drop(f);
    c.wait_for("the deferred writes to move to the nodes", 60, |c| {
        inline_bytes(c, &rt, ino) == 0
    });
    // Another mount reads what the nodes hold now.
    let other = c.mount_at("db", "mnt-db-other");
    assert!(fs::read(other.path("wal")).unwrap() == want);
    other.unmount();

    // A mount unmounted right after its commits moves them first.
    let f = fs::OpenOptions::new()
        .write(true)
        .open(m.path("wal"))
        .unwrap();
    for n in 0..12 {
        commit(&f, 5000 + n, n * 7919, &mut want);
    }
    drop(f);
    assert!(inline_bytes(&c, &rt, ino) > 0);
    m.unmount();
    assert_eq!(
        inline_bytes(&c, &rt, ino),
        0,
        "the unmount left deferred writes"
    );
    let m = c.mount("db");
    assert!(fs::read(m.path("wal")).unwrap() == want);
    m.unmount();
}

/// With more nodes down than the class can spare, a small fsync into a
/// large file still succeeds (its bytes need only the metadata service);
/// moving them to the nodes fails and leaves them inline and readable;
/// once the nodes are back, a mount that reads the file moves them.
#[test]
fn deferred_writes_wait_inline_while_too_many_nodes_are_down() {
    let mut c = Cluster::start(6);
    c.create_volume("db", "1GiB", "ec:4+2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m = c.mount("db");
    let (f, mut want, ino) = synced_file(&m, 2, 4 * MIB);

    for i in 0..3 {
        c.kill_node(i);
    }
    let committed = std::time::Instant::now();
    for n in 0..12 {
        commit(&f, 300 + n, n * 37, &mut want);
    }
    drop(f);
    // The quiet pass tries to move them, and cannot.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(inline_bytes(&c, &rt, ino), 12 * PAGE as u64);
    // The file's other bytes are a stripe the nodes left cannot rebuild;
    // the deferred pages read back.
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let r = fs::File::open(m.path("wal")).unwrap();
    for n in 0..12u64 {
        let at = (n * 37 % (want.len() / PAGE) as u64) as usize * PAGE;
        let mut got = vec![0u8; PAGE];
        r.read_exact_at(&mut got, at as u64).unwrap();
        assert!(
            got == want[at..at + PAGE],
            "page {n} read back different with nodes down"
        );
    }
    drop(r);

    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_nodes_up(6);
    std::thread::sleep(std::time::Duration::from_secs(6).saturating_sub(committed.elapsed()));
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert!(fs::read(m.path("wal")).unwrap() == want);
    c.wait_for("the deferred writes to move to the nodes", 60, |c| {
        inline_bytes(c, &rt, ino) == 0
    });
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    assert!(
        fs::read(m.path("wal")).unwrap() == want,
        "read back different after the move"
    );
    m.unmount();
}
