//! Two mounts of one volume (two processes, as two hosts would mount it):
//! creates racing on one name, close-to-open consistency, and concurrent
//! writers to one file that never corrupt each other's fsynced bytes.
//! (Locks across mounts: `locks.rs`.)

use std::{
    fs::{self, OpenOptions},
    io::{Read, Write},
    os::unix::fs::FileExt,
    process::{Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use crate::harness::{pattern, Cluster, Mount};

/// Opens `count` names in a directory with O_CREAT (and O_EXCL when
/// asked); prints how many opens succeeded and the errors of the others.
const CREATOR: &str = r#"
import errno, os, sys
d, count, excl = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "excl"
flags = os.O_CREAT | os.O_RDWR | (os.O_EXCL if excl else 0)
ok, errors = 0, {}
for i in range(count):
    try:
        os.close(os.open(f"{d}/n{i}", flags, 0o644))
        ok += 1
    except OSError as e:
        errors[errno.errorcode[e.errno]] = errors.get(errno.errorcode[e.errno], 0) + 1
print(ok, errors)
"#;

/// Runs CREATOR in `a` and `b` at once; their answers.
fn race(a: &std::path::Path, b: &std::path::Path, count: u32, mode: &str) -> (String, String) {
    let run = |dir: &std::path::Path| {
        Command::new("python3")
            .args(["-c", CREATOR])
            .arg(dir)
            .arg(count.to_string())
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (run(a), run(b));
    let out = |p: std::process::Child| {
        let o = p.wait_with_output().unwrap();
        assert!(o.status.success());
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    (out(pa), out(pb))
}

#[test]
fn two_mounts_create_see_and_write_one_file_together() {
    let c = Cluster::start(6);
    c.create_volume("two", "4GiB", "ec:4+2");
    let ma = c.mount_at("two", "host-a");
    let mb = c.mount_at("two", "host-b");

    // open(O_CREAT) racing on the same names from both mounts: every
    // open succeeds; with O_EXCL each name is created exactly once.
    fs::create_dir(ma.path("plain")).unwrap();
    let (a, b) = race(&ma.path("plain"), &mb.path("plain"), 300, "plain");
    assert_eq!((a.as_str(), b.as_str()), ("300 {}", "300 {}"));
    fs::create_dir(ma.path("excl")).unwrap();
    let (a, b) = race(&ma.path("excl"), &mb.path("excl"), 300, "excl");
    let made = |s: &str| s.split_whitespace().next().unwrap().parse::<u32>().unwrap();
    assert_eq!(made(&a) + made(&b), 300, "O_EXCL creates: {a} / {b}");
    assert_eq!(fs::read_dir(mb.path("excl")).unwrap().count(), 300);

    // Close-to-open: what one mount wrote and closed, the other reads at
    // its next open, though it had read the file before.
    fs::write(ma.path("cto"), b"first version").unwrap();
    assert_eq!(fs::read(mb.path("cto")).unwrap(), b"first version");
    fs::write(ma.path("cto"), b"second version, longer").unwrap();
    assert_eq!(fs::read(mb.path("cto")).unwrap(), b"second version, longer");
    fs::write(ma.path("cto"), b"3rd").unwrap();
    assert_eq!(fs::read(mb.path("cto")).unwrap(), b"3rd");

    // Two writers, one per mount, each its own half of one file, in 4 KiB
    // writes with an fsync every 16: neither loses the other's bytes.
    const HALF: u64 = 4 << 20;
    fs::File::create(ma.path("shared")).unwrap();
    let writer = |path: std::path::PathBuf, seed: u64, base: u64| {
        std::thread::spawn(move || {
            let f = OpenOptions::new().write(true).open(path).unwrap();
            let mut buf = vec![0u8; 4096];
            for (n, off) in (base..base + HALF).step_by(4096).enumerate() {
                pattern(seed, off, &mut buf);
                f.write_all_at(&buf, off).unwrap();
                if n % 16 == 15 {
                    f.sync_all().unwrap();
                }
            }
            f.sync_all().unwrap();
        })
    };
    let wa = writer(ma.path("shared"), 1, 0);
    let wb = writer(mb.path("shared"), 2, HALF);
    wa.join().unwrap();
    wb.join().unwrap();
    for m in [&ma, &mb] {
        let mut got = Vec::new();
        fs::File::open(m.path("shared"))
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(
            got.len() as u64,
            2 * HALF,
            "size seen from {}",
            m.dir.display()
        );
        let mut want = vec![0u8; HALF as usize];
        pattern(1, 0, &mut want);
        assert!(
            got[..HALF as usize] == want[..],
            "mount a's half is damaged"
        );
        pattern(2, HALF, &mut want);
        assert!(
            got[HALF as usize..] == want[..],
            "mount b's half is damaged"
        );
    }
    names_show_across_mounts(&ma, &mb);
    capabilities_from_another_mount_go_with_a_write(&ma, &mb);

    let mut f = fs::File::create(mb.path("done")).unwrap();
    f.write_all(b"ok").unwrap();
    drop(f);
    ma.unmount();
    mb.unmount();
}

/// A mount answers lookups from pages of names it fetched (the client's
/// `name_cache.rs`): another mount's create shows at once, its unlink
/// within the page's and the kernel's TTL, and this mount's own change of
/// a file at once.
fn names_show_across_mounts(ma: &Mount, mb: &Mount) {
    fs::create_dir(ma.path("names")).unwrap();
    let absent = |m: &Mount, name: &str| !m.path(&format!("names/{name}")).exists();

    // b fetches a page saying x is absent; a creates x; b opens it at
    // once (close-to-open), though the page still covers x.
    assert!(absent(mb, "x"));
    fs::write(ma.path("names/x"), b"made by a").unwrap();
    assert_eq!(fs::read(mb.path("names/x")).unwrap(), b"made by a");

    // a removes a name b's page holds: b sees it go, in well under 3 s.
    fs::write(ma.path("names/y"), b"1").unwrap();
    drop_kernel_names();
    assert!(absent(mb, "a0"), "fetches a page holding x and y");
    assert!(!absent(mb, "y"));
    fs::remove_file(ma.path("names/y")).unwrap();
    let t = Instant::now();
    while !absent(mb, "y") {
        assert!(t.elapsed() < Duration::from_secs(3), "b kept seeing y");
        sleep(Duration::from_millis(20));
    }

    // This mount's own change of a file shows at once in a lookup, though
    // a page fetched before it still covers the name (the kernel's
    // entries dropped, so it looks up again).
    fs::write(mb.path("names/w"), b"").unwrap();
    drop_kernel_names();
    assert!(absent(mb, "a0"), "fetches a page holding w");
    let mut f = OpenOptions::new()
        .append(true)
        .open(mb.path("names/w"))
        .unwrap();
    f.write_all(b"grown").unwrap();
    drop(f);
    drop_kernel_names();
    assert_eq!(fs::metadata(mb.path("names/w")).unwrap().len(), 5);
    fs::remove_file(mb.path("names/w")).unwrap();
    drop_kernel_names();
    assert!(absent(mb, "w"));
}

/// Drops the kernel's cached names and inodes, so that the next stat of
/// a name looks it up through the mount.
fn drop_kernel_names() {
    fs::write("/proc/sys/vm/drop_caches", b"2").unwrap();
}

/// A file's capabilities go with a write (as on a local file system), also
/// when another mount set them while this one had the file open and had
/// written to it already (the kernel stopped asking; the mount asks again
/// within its TTL).
fn capabilities_from_another_mount_go_with_a_write(ma: &Mount, mb: &Mount) {
    use std::{ffi::CString, os::unix::ffi::OsStrExt};
    let name = CString::new("security.capability").unwrap();
    let path = |m: &Mount| CString::new(m.path("capped").as_os_str().as_bytes()).unwrap();
    let caps_len = |m: &Mount| {
        let mut buf = [0u8; 64];
        let n =
            unsafe { libc::getxattr(path(m).as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), 64) };
        (n >= 0)
            .then_some(n)
            .ok_or(std::io::Error::last_os_error().raw_os_error())
    };
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(ma.path("capped"))
        .unwrap();
    f.write_all(b"one").unwrap();
    f.write_all(b"two").unwrap();
    // struct vfs_cap_data, revision 2: CAP_NET_BIND_SERVICE permitted.
    let mut caps = 0x0200_0000u32.to_le_bytes().to_vec();
    for word in [1u32 << 10, 0, 0, 0] {
        caps.extend_from_slice(&word.to_le_bytes());
    }
    let set = unsafe {
        libc::setxattr(
            path(mb).as_ptr(),
            name.as_ptr(),
            caps.as_ptr().cast(),
            caps.len(),
            0,
        )
    };
    assert_eq!(set, 0, "setxattr: {}", std::io::Error::last_os_error());
    assert_eq!(caps_len(mb), Ok(20));
    sleep(Duration::from_millis(1100));
    f.write_all(b"three").unwrap();
    drop(f);
    assert_eq!(
        caps_len(mb),
        Err(Some(libc::ENODATA)),
        "a write on another mount left the capabilities in place"
    );
    assert_eq!(fs::read(mb.path("capped")).unwrap(), b"onetwothree");
}
