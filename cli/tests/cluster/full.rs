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

/// A volume at its quota fails the writes past it with ENOSPC, on every
/// handle of the file (one process's close does not hide it from
/// another's fsync); removing files makes room again.
#[test]
fn a_full_volume_says_enospc_to_every_handle_and_recovers() {
    use std::{fs::OpenOptions, io::Write, os::fd::IntoRawFd};

    let c = Cluster::start(6);
    c.create_volume("quota", "16MiB", "ec:4+2");
    let m = c.mount("quota");
    let mut a = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(m.path("big"))
        .unwrap();
    let b = fs::File::open(m.path("big")).unwrap();
    let chunk = vec![7u8; MIB as usize];
    let mut told_a = false;
    for i in 0..24 {
        if let Err(e) = a.write_all(&chunk) {
            info!("--- write {i} MiB in: {e}");
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            told_a = true;
            break;
        }
    }
    // Another handle's close flushes the file: it hears of the failure.
    let closed = unsafe { libc::close(b.into_raw_fd()) };
    let err = std::io::Error::last_os_error();
    assert_eq!(closed, -1, "closing the second handle of a file over quota");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    // And the writer's fsync too, unless one of its writes already did.
    match a.sync_all() {
        Ok(()) => assert!(told_a, "fsync of a file written past the quota succeeded"),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}"),
    }
    // Told once: a second fsync has nothing new to report.
    a.sync_all().unwrap();
    drop(a);
    let size = fs::metadata(m.path("big")).unwrap().len();
    assert!(
        size <= 16 * MIB,
        "{size} bytes committed on a 16 MiB volume"
    );

    // Removing the file gives its bytes back: new writes fit again.
    fs::remove_file(m.path("big")).unwrap();
    let mut f = fs::File::create(m.path("after")).unwrap();
    f.write_all(&vec![9u8; 8 * MIB as usize]).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount();
    let m = c.mount("quota");
    assert_eq!(
        fs::read(m.path("after")).unwrap(),
        vec![9u8; 8 * MIB as usize]
    );
    m.unmount();
}
