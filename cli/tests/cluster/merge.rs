//! A file overwritten in small pieces (a database's pages) has its
//! fragments merged once it is quiet: it reads back the same (also with
//! rotten shards on two nodes, and with a node down), and the blocks its
//! overwritten bytes lived in are freed.

use std::{fs, os::unix::fs::FileExt};

use tracing::info;

use crate::{faults::segment_files, harness::Cluster};

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

#[test]
fn fragments_of_a_quiet_file_are_merged_and_their_blocks_freed() {
    let mut c = Cluster::start(6);
    c.create_volume("merge", "1GiB", "ec:4+2");
    let m = c.mount("merge");
    let base = c.used_bytes();
    let size = 8 * MIB;
    let mut want = vec![1u8; size as usize];
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(m.path("db"))
        .unwrap();
    f.write_all_at(&want, 0).unwrap();
    f.sync_data().unwrap();
    // Rot under the file's first shards on two nodes, in every 64 KiB
    // piece: the merge's batched reads from them fail (the node finds the
    // CRC wrong), and their runs are read one by one, from parity.
    for n in 1..3 {
        for seg in segment_files(&c.nodes[n].dir) {
            let mut bytes = fs::read(&seg).unwrap();
            for at in (4096..bytes.len()).step_by(64 << 10) {
                bytes[at] ^= 0x5a;
            }
            fs::write(&seg, &bytes).unwrap();
        }
    }
    overwrite_pages(&f, &mut want, 7);
    // Another mount opens it and reads it now: its cached slices point at
    // the fragments' blocks, which the merge frees.
    let other = c.mount_at("merge", "mnt-merge-other");
    let reader = fs::File::open(other.path("db")).unwrap();
    let mut got = vec![0u8; size as usize];
    reader.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want, "the other mount reads back different");
    let fragmented = c.used_bytes() - base;
    info!("--- shards after the overwrites: {} MiB", fragmented / MIB);
    assert!(fragmented > 18 * MIB, "{fragmented} bytes of shards");
    // Quiet now: merged into fresh blocks, the old ones freed. 8 MiB is
    // 12 MiB of ec:4+2 shards.
    c.wait_for("the fragments to be merged and freed", 60, |c| {
        c.used_bytes() - base <= 13 * MIB
    });
    info!(
        "--- shards after the merge: {} MiB",
        (c.used_bytes() - base) / MIB
    );
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(got == want, "the merged file reads back different");
    for node in ["node-2", "node-3"] {
        let log = fs::read_to_string(c.log(node)).unwrap().to_lowercase();
        assert!(log.contains("corrupt"), "{node} did not see its rot");
    }
    // The other mount's reads reach it past the kernel's page cache: they
    // find the blocks gone, fetch the slices again and read the same.
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    got.fill(0);
    reader.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == want,
        "a mount that read before the merge reads back different"
    );
    drop(reader);
    other.unmount();

    // With a storage node gone, a merge reads what that node held from
    // parity (its batched reads skip the node) and the file reads the same.
    c.kill_node(0);
    overwrite_pages(&f, &mut want, 11);
    let fragmented = c.used_bytes();
    c.wait_for("a merge with a storage node down", 60, |c| {
        c.used_bytes() + 8 * MIB <= fragmented
    });
    fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    f.read_exact_at(&mut got, 0).unwrap();
    assert!(
        got == want,
        "merged with a node down, the file reads back different"
    );
    drop(f);
    m.unmount();
    let m = c.mount("merge");
    assert!(
        fs::read(m.path("db")).unwrap() == want,
        "the merged file reads back different through a new mount"
    );
    m.unmount();
}

/// 2,048 random pages of `f` rewritten (seeded by `seed`), an fsync every
/// 32 (a block each); `want` follows.
fn overwrite_pages(f: &fs::File, want: &mut [u8], seed: u64) {
    let pages = want.len() as u64 / PAGE;
    let mut x = seed;
    for i in 0..2048u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let at = (x >> 33) % pages * PAGE;
        let page = vec![((i + seed) % 251) as u8 + 2; PAGE as usize];
        f.write_all_at(&page, at).unwrap();
        want[at as usize..(at + PAGE) as usize].copy_from_slice(&page);
        if i % 32 == 31 {
            f.sync_data().unwrap();
        }
    }
}
