//! fio with data verification through a mount (fio comes from
//! scripts/setup.sh).

use std::process::Command;

use crate::harness::Cluster;

#[test]
fn fio_randrw_verifies_through_the_mount() {
    let c = Cluster::start(6);
    c.create_volume("fio", "4GiB", "ec:4+2");
    let m = c.mount("fio");
    let out = Command::new("fio")
        .args([
            "--name=verify",
            "--rw=randrw",
            "--bsrange=4k-1m",
            "--size=512m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--ioengine=psync",
            "--end_fsync=1",
            "--verify_state_save=0",
        ])
        .arg(format!("--directory={}", m.dir.display()))
        .output()
        .expect("fio is installed by scripts/setup.sh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("verify: bad"), "{text}");
    m.unmount();
}
