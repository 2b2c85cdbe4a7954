//! The scrubber finds bytes rotted on disk, the shards are rebuilt, and
//! `cluster status` reports them.

use std::{
    fs::{self, OpenOptions},
    os::unix::fs::FileExt,
    path::Path,
};

use tracing::info;

use crate::{
    data::{check_big, write_big},
    faults::segment_files,
    harness::{pattern, Cluster},
};

/// (file, offset of the data) of every shard record in a node's segments
/// (storage-node/FORMAT.md: magic "TSRD", kind 1 = shard, header 40 + 4P
/// for P pieces of 4 KiB, 64 KiB in version 1, zeros up to a 4 KiB
/// boundary are padding).
fn shard_records(node_dir: &Path) -> Vec<(std::path::PathBuf, u64, u32)> {
    let mut out = Vec::new();
    let mut segs = segment_files(node_dir);
    segs.sort();
    for seg in segs {
        let bytes = fs::read(&seg).unwrap();
        let mut at = 0usize;
        while at + 40 <= bytes.len() {
            if !at.is_multiple_of(4096) && bytes[at..at + 4] == [0; 4] {
                // Padding up to a record written with O_DIRECT.
                at = at.next_multiple_of(4096);
                continue;
            }
            assert_eq!(
                &bytes[at..at + 4],
                b"TSRD",
                "record at {at} of {}",
                seg.display()
            );
            let version = u16::from_le_bytes(bytes[at + 4..at + 6].try_into().unwrap());
            let kind = bytes[at + 6];
            let len = u32::from_le_bytes(bytes[at + 20..at + 24].try_into().unwrap());
            let piece: u32 = if version == 1 { 64 << 10 } else { 4 << 10 };
            let pieces = len.div_ceil(piece) as usize;
            let data = at + 40 + 4 * pieces;
            if kind == 1 {
                out.push((seg.clone(), data as u64, len));
            }
            at = data + len as usize;
        }
    }
    out
}

#[test]
fn the_scrubber_finds_rotted_shards_and_they_are_rebuilt() {
    let mut c = Cluster::start_opts(
        6,
        &[],
        &["--scrub-bandwidth", "256MiB", "--scrub-interval-secs", "1"],
    );
    c.create_volume("rot", "2GiB", "ec:4+2");
    let m = c.mount("rot");
    // 300 small files (one block each) and one of 64 MiB.
    for i in 0..300u64 {
        let mut b = vec![0u8; 48 << 10];
        pattern(i, 0, &mut b);
        fs::write(m.path(&format!("f{i}")), &b).unwrap();
    }
    write_big(&m.path("big"), 5, 64 << 20);
    m.unmount();
    let before = c.node_stat(0).scrub_passes;
    c.wait_for("a clean scrub pass", 60, |c| {
        c.node_stat(0).scrub_passes > before
    });
    assert_eq!(c.node_stat(0).scrub_corrupt, 0);

    // Flip a byte in 1% of node 1's shards.
    let records = shard_records(&c.nodes[0].dir);
    assert!(records.len() >= 300, "{} shard records", records.len());
    let flipped: Vec<_> = records.iter().step_by(100).collect();
    info!(
        "--- flipping a byte in {} of {} shards on node 1",
        flipped.len(),
        records.len()
    );
    for (seg, data, len) in &flipped {
        let f = OpenOptions::new().read(true).write(true).open(seg).unwrap();
        let at = data + u64::from(*len) / 2;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    }
    let n = flipped.len() as u64;
    c.wait_for("the scrubber to find every flipped shard", 60, |c| {
        c.node_stat(0).scrub_corrupt == n
    });
    c.wait_for("cluster status to report them", 30, |c| {
        c.corrupt_reported() >= n
    });
    c.wait_for("their repair", 60, |c| {
        c.repaired() >= n && c.repair_waiting().0 == 0
    });
    // Passes after the repair find nothing: the rebuilt copies are good.
    // A pass that ran before the repair ended found the same shards again,
    // so count from the end of the first pass begun after it.
    let scrub_passes = |c: &Cluster, more: u64| {
        let from = c.node_stat(0).scrub_passes;
        c.wait_for("scrub passes", 60, |c| {
            c.node_stat(0).scrub_passes >= from + more
        });
    };
    scrub_passes(&c, 2);
    let found = c.node_stat(0).scrub_corrupt;
    scrub_passes(&c, 2);
    assert_eq!(c.node_stat(0).scrub_corrupt, found, "rebuilt shards verify");

    // With two other nodes gone, node 1's rebuilt shards are needed.
    c.kill_node(1);
    c.kill_node(2);
    let m = c.mount("rot");
    for i in 0..300u64 {
        let mut want = vec![0u8; 48 << 10];
        pattern(i, 0, &mut want);
        assert!(
            fs::read(m.path(&format!("f{i}"))).unwrap() == want,
            "f{i} differs"
        );
    }
    check_big(&m.path("big"), 5, 64 << 20).unwrap();
    m.unmount();
}
