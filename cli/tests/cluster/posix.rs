//! File-system semantics through a real mount: what applications rely on.

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
};

use crate::harness::{Cluster, Mount};

/// A cluster with a 1 GiB `ec:4+2` volume mounted.
fn mounted() -> (Cluster, Mount) {
    let c = Cluster::start(6);
    c.create_volume("fs", "1GiB", "ec:4+2");
    let m = c.mount("fs");
    (c, m)
}

#[test]
fn directories_and_rename_with_overwrite() {
    let (_c, m) = mounted();
    fs::create_dir_all(m.path("a/b/c")).unwrap();
    fs::write(m.path("a/one"), b"one").unwrap();
    fs::write(m.path("a/two"), b"two").unwrap();
    fs::rename(m.path("a/one"), m.path("a/two")).unwrap();
    assert_eq!(fs::read(m.path("a/two")).unwrap(), b"one");
    assert!(!m.path("a/one").exists());
    fs::rename(m.path("a/b"), m.path("moved")).unwrap();
    assert!(m.path("moved/c").is_dir());
    assert_eq!(
        fs::rename(m.path("moved"), m.path("moved/c/x"))
            .unwrap_err()
            .raw_os_error(),
        Some(libc::EINVAL)
    );
    assert_eq!(
        fs::remove_dir(m.path("moved")).unwrap_err().raw_os_error(),
        Some(libc::ENOTEMPTY)
    );
    fs::remove_dir(m.path("moved/c")).unwrap();
    fs::remove_dir(m.path("moved")).unwrap();
    assert_eq!(fs::metadata(m.path("a")).unwrap().nlink(), 2);
    let mut names: Vec<String> = fs::read_dir(&m.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a"]);
    m.unmount();
}

#[test]
fn symlinks_hard_links_permissions_and_owners() {
    let (_c, m) = mounted();
    fs::write(m.path("two"), b"one").unwrap();
    std::os::unix::fs::symlink("two", m.path("link")).unwrap();
    assert_eq!(fs::read_link(m.path("link")).unwrap().to_str(), Some("two"));
    assert_eq!(fs::read(m.path("link")).unwrap(), b"one");
    fs::hard_link(m.path("two"), m.path("hard")).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().nlink(), 2);
    fs::remove_file(m.path("two")).unwrap();
    assert_eq!(fs::read(m.path("hard")).unwrap(), b"one");
    fs::set_permissions(m.path("hard"), fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(m.path("hard"), Some(1000), Some(1000)).unwrap();
    assert_eq!(fs::metadata(m.path("hard")).unwrap().uid(), 1000);
    m.unmount();
}

#[test]
fn overwrites_extends_truncates_and_holes() {
    let (_c, m) = mounted();
    // Overwrite in the middle, extend, truncate down and up again.
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("t"))
        .unwrap();
    f.write_all(&[b'a'; 10_000]).unwrap();
    f.seek(SeekFrom::Start(5_000)).unwrap();
    f.write_all(b"XYZ").unwrap();
    f.sync_all().unwrap();
    f.set_len(5_001).unwrap();
    f.set_len(8_000).unwrap();
    drop(f);
    let mut got = Vec::new();
    File::open(m.path("t"))
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got.len(), 8_000);
    assert!(got[..5_000].iter().all(|&b| b == b'a'));
    assert_eq!(got[5_000], b'X');
    assert!(
        got[5_001..].iter().all(|&b| b == 0),
        "bytes past a truncation reappeared"
    );

    // Sparse write: the hole reads as zeros.
    let mut f = File::create(m.path("sparse")).unwrap();
    f.seek(SeekFrom::Start(3 << 20)).unwrap();
    f.write_all(b"end").unwrap();
    drop(f);
    let s = fs::read(m.path("sparse")).unwrap();
    assert_eq!(s.len(), (3 << 20) + 3);
    assert!(s[..3 << 20].iter().all(|&b| b == 0));
    m.unmount();
}

#[test]
fn extended_attributes_and_capabilities() {
    let (_c, m) = mounted();
    fs::write(m.path("t"), b"x").unwrap();
    xattr_roundtrip(&m.path("t"));
    a_write_drops_capabilities(&m.path("caps"));
    m.unmount();
}

#[test]
fn statfs_reports_the_volume_quota() {
    let (_c, m) = mounted();
    let st = nix_statvfs(&m.dir);
    assert_eq!(st.0 * st.1, 1 << 30, "statfs size is not the volume size");
    m.unmount();
}

fn xattr_roundtrip(path: &std::path::Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("user.color").unwrap();
    unsafe {
        assert_eq!(
            libc::setxattr(p.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0),
            0
        );
        let mut buf = [0u8; 16];
        let n = libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        );
        assert_eq!(&buf[..n as usize], b"blue");
        let n = libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(&buf[..n as usize], b"user.color\0");
        assert_eq!(libc::removexattr(p.as_ptr(), name.as_ptr()), 0);
        assert_eq!(
            libc::getxattr(
                p.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len()
            ),
            -1
        );
    }
}

/// A write drops the file's capabilities. The kernel asks for them before
/// every write, and the mount answers "none" for an open file it has asked
/// about: setting capabilities through the mount must make it ask again.
fn a_write_drops_capabilities(path: &std::path::Path) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = CString::new("security.capability").unwrap();
    let caps_len = || unsafe {
        let mut buf = [0u8; 64];
        let n = libc::getxattr(p.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64);
        (n >= 0)
            .then_some(n)
            .ok_or(std::io::Error::last_os_error().raw_os_error())
    };
    let mut f = File::create(path).unwrap();
    f.write_all(b"before").unwrap();
    assert_eq!(caps_len(), Err(Some(libc::ENODATA)));
    // struct vfs_cap_data, revision 2: CAP_NET_BIND_SERVICE permitted.
    let mut caps = 0x0200_0000u32.to_le_bytes().to_vec();
    for word in [1u32 << 10, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    let set = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            caps.as_ptr().cast(),
            caps.len(),
            0,
        )
    };
    assert_eq!(set, 0, "setxattr: {}", std::io::Error::last_os_error());
    assert_eq!(caps_len(), Ok(20));
    f.write_all(b"after").unwrap();
    assert_eq!(
        caps_len(),
        Err(Some(libc::ENODATA)),
        "a write left the file's capabilities in place"
    );
    drop(f);
    assert_eq!(fs::read(path).unwrap(), b"beforeafter");
}

/// (fragment size, blocks) from statvfs.
fn nix_statvfs(path: &std::path::Path) -> (u64, u64) {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(p.as_ptr(), &mut st) }, 0);
    (st.f_frsize, st.f_blocks)
}
