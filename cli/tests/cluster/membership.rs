//! Membership changes: a node that stays away goes `out` and its shards are
//! rebuilt elsewhere; a new node takes its share of the placement groups;
//! a drained node can be removed with nothing lost.

use tracing::info;

use crate::{
    data::{check_big, write_big},
    harness::Cluster,
};

const MIB: u64 = 1 << 20;

#[test]
fn a_node_that_goes_out_is_rebuilt_elsewhere_and_two_more_losses_lose_nothing() {
    let mut c = Cluster::start_with(7, &["--down-after-secs", "2", "--out-after-secs", "4"]);
    c.create_volume("big", "8GiB", "ec:4+2");
    let m = c.mount("big");
    let size = 2048 * MIB;
    write_big(&m.path("file"), 11, size);
    m.unmount();
    assert_eq!(c.repair_waiting().0, 0);

    c.kill_node(0);
    c.wait_for("node 1 to be out", 30, |c| {
        c.node_state(0).as_deref() == Some("out")
    });
    c.wait_for("the repair of node 1's shards", 600, |c| {
        c.repaired() > 0 && c.repair_waiting().0 == 0
    });
    info!("--- {} shards rebuilt after node 1 went out", c.repaired());
    // Node 1 held one shard of the ~6/7 of the 512 blocks whose PG had it.
    let rebuilt = c.repaired();
    assert!((300..=512).contains(&rebuilt), "{rebuilt} shards rebuilt");

    c.kill_node(1);
    c.kill_node(2);
    let m = c.mount("big");
    check_big(&m.path("file"), 11, size).expect("every byte reads back after three losses");
    m.unmount();
}

#[test]
fn a_new_node_takes_a_seventh_and_a_drained_node_is_removed_with_nothing_lost() {
    let mut c = Cluster::start(6);
    c.create_volume("grow", "4GiB", "ec:4+2");
    let m = c.mount("grow");
    let size = 512 * MIB;
    write_big(&m.path("file"), 12, size);
    m.unmount();
    let blocks = size / (4 * MIB);
    let shards = blocks * 6;
    c.wait_for("every shard to be counted", 30, |c| {
        c.shard_count() == shards
    });

    let new = c.add_node();
    c.wait_nodes_up(7);
    c.wait_for("the moves to the new node", 300, |c| {
        c.repaired() > 0 && c.repair_waiting().0 == 0
    });
    let moved = c.node_stat(new).put_count;
    info!("--- {moved} of {shards} shards moved to the new node");
    let share = moved as f64 / shards as f64;
    assert!(
        (0.10..=0.19).contains(&share),
        "moved {moved} of {shards} ({share:.3}), expected about 1/7"
    );
    c.wait_for("old copies of moved shards to be deleted", 30, |c| {
        c.shard_count() == shards
    });

    // Removing a node that still holds data is refused.
    let id = c.node_id(0);
    let out = c.cli(&["node", "rm", &id.to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("drain it first"));

    c.cli_ok(&["node", "drain", &id.to_string()]);
    assert_eq!(c.node_state(0).as_deref(), Some("draining"));
    c.wait_for("the drain to finish", 300, |c| {
        c.repair_waiting().0 == 0 && c.node_stat(0).shard_count == 0
    });
    c.cli_ok(&["node", "rm", &id.to_string()]);
    assert!(c.node_state(0).is_none(), "node 1 is no longer listed");
    c.kill_node(0);
    c.wait_for("every shard to be counted", 30, |c| {
        c.shard_count() == shards
    });

    let m = c.mount("grow");
    check_big(&m.path("file"), 12, size).expect("every byte reads back after the drain");
    m.unmount();
}
