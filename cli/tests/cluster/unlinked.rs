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

use tessera_client::{Volume, VolumeOptions};
use tessera_common::{FileKind, NewNode, ROOT_INO};

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

/// An open that loses a race with an unlink in its own mount (the kernel
/// had the inode from a lookup, the unlink took the mount's list of open
/// files before the open was in it) is ENOENT, not a removed file whose
/// reads return zeros (seen once in CI: `pg_ctl` read an empty
/// postmaster.pid as the postmaster removed it).
#[test]
fn an_open_that_loses_a_race_with_an_unlink_is_enoent_not_an_empty_file() {
    let c = Cluster::start(6);
    c.create_volume("race", "1GiB", "ec:4+2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vol = rt
        .block_on(Volume::open(&c.meta_addr, "race", VolumeOptions::default()))
        .unwrap();
    let file = NewNode::new(FileKind::File, 0o644);
    let make = |name: &[u8]| {
        let ino = vol.make_node(ROOT_INO, name, &file).unwrap().node.ino;
        vol.open_file(ino, 100 + ino, None).unwrap();
        vol.block_on(vol.write(ino, 100 + ino, 0, b"4242\n"))
            .unwrap();
        vol.block_on(vol.flush(ino, None)).unwrap();
        vol.block_on(vol.release_file(ino, 100 + ino)).unwrap();
        ino
    };

    // An open with an inode from the kernel's cache.
    let looked_up = make(b"postmaster.pid");
    vol.unlink(ROOT_INO, b"postmaster.pid", false).unwrap();
    let err = vol
        .open_file(looked_up, 1, None)
        .expect_err("an open of a removed file succeeded");
    assert_eq!(err.errno(), libc::ENOENT, "{err}");

    // A create's own inode, the unlink finishing before its open.
    let since = vol.removals_finished();
    let made = make(b"created");
    vol.unlink(ROOT_INO, b"created", false).unwrap();
    let err = vol
        .open_file(made, 2, Some(since))
        .expect_err("a create opened a removed file");
    assert_eq!(err.errno(), libc::ENOENT, "{err}");

    // An open that won the race keeps the file for its handle.
    let since = vol.removals_finished();
    let kept = make(b"kept");
    vol.open_file(kept, 3, Some(since)).unwrap();
    vol.unlink(ROOT_INO, b"kept", false).unwrap();
    let back = vol.block_on(vol.read(kept, 0, 100)).unwrap();
    assert_eq!(&back[..], b"4242\n");
    vol.block_on(vol.release_file(kept, 3)).unwrap();
}
