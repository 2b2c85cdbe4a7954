//! Deleted data is freed on the nodes, and nothing still referenced is,
//! even while a writer runs next to the deletes.

use std::{fs, thread};

use tracing::info;

use crate::{
    data::{check_big, write_big},
    harness::Cluster,
};

const MIB: u64 = 1 << 20;
/// How far above the expected bytes the nodes may stay once GC is done.
const BOUND: u64 = MIB;

#[test]
fn deleting_a_gib_frees_its_shards_while_a_concurrent_writer_keeps_its_data() {
    let c = Cluster::start_opts(6, &[], &["--compact-interval-secs", "1"]);
    c.create_volume("gc", "8GiB", "ec:4+2");
    let m = c.mount("gc");
    let base = c.used_bytes();
    for i in 0..8 {
        write_big(&m.path(&format!("old{i}")), 100 + i, 128 * MIB);
    }
    // 1 GiB of data is 1.5 GiB of ec:4+2 shards.
    assert_eq!(c.used_bytes() - base, 1536 * MIB);
    let disk_before = c.segment_bytes();

    let dir = m.dir.clone();
    let writer = thread::spawn(move || {
        for i in 0..40 {
            write_big(&dir.join(format!("new{i}")), 200 + i, 4 * MIB);
        }
    });
    for i in 0..8 {
        fs::remove_file(m.path(&format!("old{i}"))).unwrap();
    }
    writer.join().unwrap();

    // The writer's 160 MiB are 240 MiB of shards; everything else goes.
    let want = base + 240 * MIB;
    c.wait_for("the deleted files' shards to be freed", 60, |c| {
        let used = c.used_bytes();
        used >= want && used <= want + BOUND
    });
    info!("--- nodes hold {} MiB after GC", c.used_bytes() / MIB);
    // Compaction gives the disk space back too (the segments still being
    // appended to keep some garbage until they fill up).
    c.wait_for("compaction to give the disk space back", 60, |c| {
        c.segment_bytes() * 3 < disk_before
    });
    info!(
        "--- segment files: {} MiB before the deletes, {} MiB after",
        disk_before / MIB,
        c.segment_bytes() / MIB
    );
    for i in 0..40 {
        check_big(&m.path(&format!("new{i}")), 200 + i, 4 * MIB).unwrap();
    }
    m.unmount();
}
