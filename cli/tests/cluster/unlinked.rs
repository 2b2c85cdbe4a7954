//! A file unlinked (or replaced by a rename) while open lives on for its
//! open handles, as POSIX says and databases' temporary files rely on, and
//! goes when the last one closes, or when its mount dies and the orphan's
//! lease runs out.

use std::{
    fs::{self, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::Path,
};

use crate::harness::{pattern, Cluster};

const MIB: usize = 1 << 20;

fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    pattern(seed, 0, &mut b);
    b
}

/// Bytes the volume reports used, from statvfs through the mount.
fn used(mount: &Path) -> u64 {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let p = CString::new(mount.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
    (st.f_blocks - st.f_bfree) * st.f_frsize
}

#[test]
fn a_file_unlinked_while_open_lives_until_closed_or_its_mount_dies() {
    let c = Cluster::start_with(6, &["--orphan-lease-secs", "2"]);
    c.create_volume("o", "1GiB", "ec:4+2");
    let m = c.mount("o");

    // Unlinked while open: the handle reads and writes on.
    let p = m.path("tmp");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    f.write_all(&bytes(1, 3 * MIB)).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    assert_eq!(f.metadata().unwrap().nlink(), 0);
    f.write_all(&bytes(2, MIB)).unwrap();
    f.sync_all().unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut back = Vec::new();
    f.read_to_end(&mut back).unwrap();
    let mut want = bytes(1, 3 * MIB);
    want.extend(bytes(2, MIB));
    assert!(back == want, "an unlinked open file lost bytes");
    assert!(used(&m.dir) >= 4 * MIB as u64);
    drop(f);
    c.wait_for("the closed file's space to be given back", 10, |_| {
        used(&m.dir) < MIB as u64
    });

    // Replaced by a rename while open: the handle keeps the old bytes.
    fs::write(m.path("a"), bytes(3, 100_000)).unwrap();
    let mut old = fs::File::open(m.path("a")).unwrap();
    fs::write(m.path("b"), bytes(4, 50_000)).unwrap();
    fs::rename(m.path("b"), m.path("a")).unwrap();
    let mut back = Vec::new();
    old.read_to_end(&mut back).unwrap();
    assert!(back == bytes(3, 100_000), "a replaced open file lost bytes");
    assert_eq!(fs::read(m.path("a")).unwrap(), bytes(4, 50_000));
    drop(old);

    // Longer than the lease: the mount renews it.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("held"))
        .unwrap();
    f.write_all(&bytes(5, MIB)).unwrap();
    f.sync_all().unwrap();
    fs::remove_file(m.path("held")).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(5));
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert!(
        back == bytes(5, MIB),
        "an open unlinked file went while renewed"
    );
    let before = used(&m.dir);
    assert!(before >= MIB as u64 + 50_000);

    // The mount dies with the file open: once the lease has run out, the
    // file goes anyway.
    m.kill();
    drop(f);
    let m = c.mount("o");
    c.wait_for("the dead mount's unlinked file to go", 30, |_| {
        used(&m.dir) < MIB as u64
    });
    assert_eq!(fs::read(m.path("a")).unwrap(), bytes(4, 50_000));
    m.unmount();
}
