//! Degraded writes are queued for repair; a node that returns after a short
//! outage receives exactly the shards it missed.

use std::fs;

use tracing::info;

use crate::harness::{pattern, Cluster};

fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    pattern(seed, 0, &mut b);
    b
}

#[test]
fn a_returning_node_catches_up_with_exactly_the_shards_it_missed() {
    let mut c = Cluster::start(6);
    c.create_volume("heal", "4GiB", "ec:4+2");
    let m = c.mount("heal");
    let before = blob(1, 32 << 20);
    fs::write(m.path("before"), &before).unwrap();
    assert_eq!(c.repair_waiting(), (0, 0), "nothing degraded yet");

    // With 6 nodes and ec:4+2 every block has a shard on every node.
    c.kill_node(2);
    let during = blob(2, 96 << 20);
    fs::write(m.path("during"), &during).unwrap();
    let (shards, missed) = c.repair_waiting();
    info!("--- {shards} shards ({missed} bytes) queued while node 3 was down");
    assert_eq!(shards, 24, "one shard of each of the 24 blocks written");
    assert_eq!(missed, 24 << 20);

    c.start_node(2);
    c.wait_nodes_up(6);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while c.repair_waiting().0 > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "repair did not finish"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let sent = c.node_stat(2).put_bytes;
    info!("--- node 3 received {sent} bytes after its restart; it missed {missed}");
    assert!(
        sent >= missed && sent * 10 <= missed * 11,
        "catch-up sent {sent} bytes for {missed} missed"
    );
    let status = c.cli_ok(&["cluster", "status"]);
    assert!(status.contains("repaired:    24 shards"), "{status}");

    // Node 3's rebuilt shards are right: with two other nodes gone, every
    // block needs them.
    m.unmount();
    c.kill_node(0);
    c.kill_node(1);
    let m = c.mount("heal");
    assert!(
        fs::read(m.path("during")).unwrap() == during,
        "file written during the outage differs"
    );
    assert!(
        fs::read(m.path("before")).unwrap() == before,
        "file written before the outage differs"
    );
    m.unmount();
}

#[test]
fn min_durable_is_a_volume_setting_and_a_write_below_it_fails() {
    use std::io::Write;
    let mut c = Cluster::start(6);
    let out = c.cli(&[
        "volume",
        "create",
        "weak",
        "--size",
        "1GiB",
        "--min-durable",
        "4",
    ]);
    assert!(
        !out.status.success(),
        "K durable shards with M = 2 is refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("min_durable"));
    c.cli_ok(&[
        "volume",
        "create",
        "strict",
        "--size",
        "1GiB",
        "--min-durable",
        "6",
    ]);
    assert!(c
        .cli_ok(&["volume", "inspect", "strict"])
        .contains("min_durable: 6"));

    let m = c.mount("strict");
    c.kill_node(0);
    let mut f = fs::File::create(m.path("f")).unwrap();
    f.write_all(&blob(3, 8 << 20)).unwrap();
    let err = f.sync_all().expect_err("5 durable shards are fewer than 6");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    drop(f);
    m.unmount();
    assert_eq!(
        c.repair_waiting(),
        (0, 0),
        "nothing was acknowledged, nothing queued"
    );
}

#[test]
fn writers_skip_a_node_reported_down_instead_of_waiting_on_it() {
    let c = Cluster::start_with(6, &["--down-after-secs", "2"]);
    c.create_volume("hang", "1GiB", "ec:4+2");
    // A stopped (not dead) node accepts connections and never answers.
    let pid = c.nodes[0].child.as_ref().unwrap().id() as i32;
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    c.wait_for("node 1 to be reported down", 30, |c| {
        c.node_state(0).as_deref() == Some("down")
    });
    let m = c.mount("hang");
    let data = blob(4, 64 << 20);
    fs::write(m.path("f"), &data).unwrap();
    assert_eq!(c.repair_waiting().0, 16, "its 16 shards are queued instead");
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Asked at once: repair only starts once its heartbeats say it is back.
    assert_eq!(
        c.node_stat(0).put_count,
        0,
        "no shard was sent to the stopped node"
    );
    assert!(fs::read(m.path("f")).unwrap() == data);
    m.unmount();
}
