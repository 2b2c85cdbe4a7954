//! A node whose file system is full refuses new shards cleanly: writes go on
//! with the other nodes, nothing stored is damaged, and once space is freed
//! the node receives what it missed.

use std::{fs, path::PathBuf, process::Command};

use tracing::info;

use crate::{
    data::{check_big, write_big},
    harness::Cluster,
};

const MIB: u64 = 1 << 20;

/// Unmounts the small file system when the test ends, after the cluster.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &PathBuf, size: &str) {
    fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs on {}", dir.display());
}

#[test]
fn a_full_node_refuses_shards_cleanly_and_catches_up_when_space_is_freed() {
    let mut guard = None;
    let mut c = Cluster::start_prepared(
        6,
        &[],
        &["--scrub-bandwidth", "512MiB", "--scrub-interval-secs", "1"],
        |c| {
            let dir = c.nodes[0].dir.clone();
            mount_tmpfs(&dir, "40m");
            guard = Some(Tmpfs(dir));
        },
    );
    let _guard = guard;
    c.create_volume("full", "4GiB", "ec:4+2");
    let m = c.mount("full");
    // Node 1 would need 64 MiB of shards; it has 40 MiB.
    write_big(&m.path("file"), 21, 256 * MIB);
    m.unmount();
    let (waiting, _) = c.repair_waiting();
    info!("--- {waiting} shards could not be stored on the full node");
    assert!(waiting > 0, "node 1 should have refused some shards");
    let log = fs::read_to_string(c.log("node-1")).unwrap().to_lowercase();
    assert!(
        log.contains("full") || log.contains("no space"),
        "node 1 logs why it refused"
    );

    // What node 1 did store is intact.
    let passes = c.node_stat(0).scrub_passes;
    c.wait_for("a scrub pass on the full node", 60, |c| {
        c.node_stat(0).scrub_passes > passes
    });
    assert_eq!(c.node_stat(0).scrub_corrupt, 0);

    // Free space: the node takes the shards it missed.
    let st = Command::new("mount")
        .args(["-o", "remount,size=256m"])
        .arg(&c.nodes[0].dir)
        .status()
        .unwrap();
    assert!(st.success());
    c.wait_for("the full node to catch up", 120, |c| {
        c.repair_waiting().0 == 0
    });

    c.kill_node(1);
    c.kill_node(2);
    let m = c.mount("full");
    check_big(&m.path("file"), 21, 256 * MIB).expect("every byte, with node 1's shards needed");
    m.unmount();
}
