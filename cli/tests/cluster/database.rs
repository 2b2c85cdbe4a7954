//! The POSIX a database relies on, through a real mount and in a local
//! directory on the same machine: each behaviour must give the same
//! results in both (fallocate may instead fail with a clear EOPNOTSUPP).

use std::{
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, PermissionsExt},
    },
    path::Path,
};

use crate::harness::{Acked, Cluster};

/// What a call gave: its value, or the errno's name.
fn outcome<T: std::fmt::Debug>(r: std::io::Result<T>) -> String {
    match r {
        Ok(v) => format!("{v:?}"),
        Err(e) => match e.raw_os_error() {
            Some(n) => format!("{:?}", nix::errno::Errno::from_raw(n)),
            None => e.to_string(),
        },
    }
}

fn cvt(r: libc::c_int) -> std::io::Result<libc::c_int> {
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn seek(f: &File, offset: u64, whence: libc::c_int) -> String {
    let r = unsafe { libc::lseek(f.as_raw_fd(), offset as libc::off_t, whence) };
    outcome(if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    })
}

/// A new empty file, open for reading and writing.
fn fresh(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap()
}

/// Runs every behaviour in `dir`; one line of results each.
fn behaviours(dir: &Path) -> Vec<(&'static str, String)> {
    let p = |name: &str| dir.join(name);
    let mut out = Vec::new();

    // O_APPEND: every write goes to the end, wherever the offset was.
    fs::write(p("append"), b"0123").unwrap();
    let mut f = OpenOptions::new().append(true).open(p("append")).unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"ab").unwrap();
    let pos = f.stream_position().unwrap();
    drop(f);
    out.push((
        "O_APPEND",
        format!(
            "{pos} {:?}",
            String::from_utf8(fs::read(p("append")).unwrap())
        ),
    ));

    // O_EXCL: the second exclusive create fails.
    let excl = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p("excl"))
            .map(|_| ())
    };
    out.push(("O_EXCL", format!("{} {}", outcome(excl()), outcome(excl()))));

    // O_TRUNC: the file is empty at open, and takes new bytes.
    fs::write(p("trunc"), vec![7u8; 5000]).unwrap();
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p("trunc"))
        .unwrap();
    let at_open = f.metadata().unwrap().len();
    f.write_all(b"x").unwrap();
    drop(f);
    out.push((
        "O_TRUNC",
        format!("{at_open} {:?}", fs::read(p("trunc")).unwrap()),
    ));

    // Holes: data at [0, 4 KiB) and [1 MiB, 1 MiB + 4 KiB) of a 2 MiB file.
    let mut f = fresh(&p("sparse"));
    f.write_all(&[1u8; 4096]).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(&[2u8; 4096]).unwrap();
    // Written, not yet synced: the data is data already.
    out.push((
        "SEEK_DATA/SEEK_HOLE before fsync",
        format!(
            "{} {}",
            seek(&f, 4096, libc::SEEK_DATA),
            seek(&f, 1 << 20, libc::SEEK_HOLE)
        ),
    ));
    f.set_len(2 << 20).unwrap();
    f.sync_all().unwrap();
    let seeks = [
        (0, libc::SEEK_DATA),
        (0, libc::SEEK_HOLE),
        (4096, libc::SEEK_DATA),
        (100_000, libc::SEEK_HOLE),
        (1 << 20, libc::SEEK_HOLE),
        ((1 << 20) + 4096, libc::SEEK_DATA),
        (2 << 20, libc::SEEK_HOLE),
        // A negative offset (-1).
        (u64::MAX, libc::SEEK_DATA),
    ];
    let found: Vec<String> = seeks.iter().map(|&(o, w)| seek(&f, o, w)).collect();
    out.push(("SEEK_DATA/SEEK_HOLE", found.join(" ")));
    let mut all = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut all).unwrap();
    let ones = all.iter().filter(|&&b| b == 1).count();
    let twos = all.iter().filter(|&&b| b == 2).count();
    out.push(("sparse bytes", format!("{} {ones} {twos}", all.len())));
    drop(f);

    // fallocate: allocating and punching (a file system may refuse with
    // EOPNOTSUPP); posix_fallocate works either way (glibc writes the
    // range itself when the file system refuses).
    let f = fresh(&p("falloc"));
    let fd = f.as_raw_fd();
    out.push((
        "fallocate",
        outcome(cvt(unsafe { libc::fallocate(fd, 0, 0, 8192) })),
    ));
    out.push((
        "fallocate PUNCH_HOLE",
        outcome(cvt(unsafe {
            libc::fallocate(
                fd,
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                0,
                4096,
            )
        })),
    ));
    let r = unsafe { libc::posix_fallocate(fd, 0, 16384) };
    out.push((
        "posix_fallocate",
        format!("{r} {}", fs::metadata(p("falloc")).unwrap().len()),
    ));
    drop(f);

    // Truncating down and up; past the largest file either can hold.
    let mut f = fresh(&p("size"));
    f.write_all(&[9u8; 10_000]).unwrap();
    f.set_len(3000).unwrap();
    f.set_len(6000).unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    let nines = back.iter().take_while(|&&b| b == 9).count();
    let zeros = back[nines..].iter().filter(|&&b| b == 0).count();
    out.push((
        "truncate down and up",
        format!("{} {nines} {zeros}", back.len()),
    ));
    drop(f);

    // Rename over an existing file: atomic, and a handle open on the old
    // one still reads it.
    fs::write(p("target"), b"old").unwrap();
    fs::write(p("staged"), b"new").unwrap();
    let mut old = File::open(p("target")).unwrap();
    fs::rename(p("staged"), p("target")).unwrap();
    let mut was = String::new();
    old.read_to_string(&mut was).unwrap();
    out.push((
        "rename over",
        format!(
            "{:?} {was} {}",
            String::from_utf8(fs::read(p("target")).unwrap()),
            outcome(fs::metadata(p("staged")).map(|_| ()))
        ),
    ));

    // Hard links share the bytes.
    fs::hard_link(p("target"), p("linked")).unwrap();
    fs::write(p("linked"), b"via link").unwrap();
    out.push((
        "hard link",
        format!(
            "{} {:?}",
            fs::metadata(p("target")).unwrap().nlink(),
            String::from_utf8(fs::read(p("target")).unwrap())
        ),
    ));

    // fsync, fdatasync and a directory's fsync succeed.
    let mut f = File::create(p("synced")).unwrap();
    f.write_all(b"durable").unwrap();
    let synced = [
        outcome(f.sync_data()),
        outcome(f.sync_all()),
        outcome(File::open(dir).and_then(|d| d.sync_all())),
    ];
    out.push(("fsync, fdatasync, dir fsync", synced.join(" ")));
    drop(f);

    // A shared writable mapping's stores reach the file.
    let f = fresh(&p("mapped"));
    f.set_len(8192).unwrap();
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            8192,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            m,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(b"mapped!".as_ptr(), (m as *mut u8).add(4096), 7);
        cvt(libc::msync(m, 8192, libc::MS_SYNC)).unwrap();
        libc::munmap(m, 8192);
    }
    drop(f);
    let bytes = fs::read(p("mapped")).unwrap();
    out.push((
        "shared writable mmap",
        format!(
            "{} {:?}",
            bytes.len(),
            String::from_utf8_lossy(&bytes[4096..4103])
        ),
    ));

    // Set-ID bits: a write or a truncate by a user without CAP_FSETID
    // drops them, and so does a change of owner; root's write keeps them.
    let setid = p("setid");
    let mode = || format!("{:o}", fs::metadata(&setid).unwrap().mode() & 0o7777);
    let chmod = |m: u32| fs::set_permissions(&setid, fs::Permissions::from_mode(m)).unwrap();
    fs::write(&setid, b"x").unwrap();
    let mut seen = Vec::new();
    for step in ["write", "truncate", "root write", "chown", "write again"] {
        chmod(0o6777);
        match step {
            "root write" => {
                let mut f = OpenOptions::new().append(true).open(&setid).unwrap();
                f.write_all(b"r").unwrap();
            }
            "chown" => std::os::unix::fs::chown(&setid, Some(65534), None).unwrap(),
            _ => as_nobody(&setid, step),
        }
        seen.push(format!("{step}: {}", mode()));
    }
    out.push(("set-ID bits", seen.join(", ")));
    out
}

/// Writes to or truncates `path` as user and group 65534 (nobody).
fn as_nobody(path: &Path, what: &str) {
    const SCRIPT: &str = r#"
import os, sys
os.setgid(65534); os.setuid(65534)
p, what = sys.argv[1], sys.argv[2]
if what == "truncate":
    os.truncate(p, 1)
else:
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"n")
    os.close(fd)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(path)
        .arg(what)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{what} of {} as nobody: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Lets other users through every directory above `path` (a test's
/// temporary directories are the owner's only).
fn let_others_through(path: &Path) {
    for dir in path.ancestors() {
        let m = fs::metadata(dir).unwrap().mode();
        if m & 0o001 == 0 {
            fs::set_permissions(dir, fs::Permissions::from_mode((m & 0o7777) | 0o011)).unwrap();
        }
    }
}

#[test]
fn the_posix_a_database_relies_on_matches_a_local_directory() {
    let c = Cluster::start(6);
    c.create_volume("db", "1GiB", "ec:4+2");
    let m = c.mount("db");
    let local = tempfile::tempdir_in("/var/tmp").unwrap();
    let_others_through(local.path());
    let_others_through(&m.path(""));
    let want = behaviours(local.path());
    let got = behaviours(&m.path(""));
    let mut differ = Vec::new();
    for ((name, w), (_, g)) in want.iter().zip(&got) {
        let refused = name.starts_with("fallocate") && g == "EOPNOTSUPP";
        if w != g && !refused {
            differ.push(format!("{name}: local {w}, tessera {g}"));
        }
    }
    assert!(
        differ.is_empty(),
        "differs from a local directory:\n{}",
        differ.join("\n")
    );
    // Tessera's own limit (1 PiB; a local file system's differs): a
    // truncation or a write past it fails with EFBIG.
    let f = OpenOptions::new().write(true).open(m.path("size")).unwrap();
    assert_eq!(outcome(f.set_len((1 << 50) + 4096)), "EFBIG");
    let r = unsafe { libc::pwrite(f.as_raw_fd(), b"x".as_ptr().cast(), 1, 1 << 50) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EFBIG))
    );
    drop(f);
    m.unmount();
}

/// Commits numbered transactions to an SQLite database in WAL mode with
/// full sync, printing each number once its commit returned; stops at the
/// first error (the mount going away).
const SQLITE_WRITER: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, pad BLOB)")
for i in range(1, 10001):
    db.execute("BEGIN")
    db.execute("INSERT INTO t VALUES (?, randomblob(300))", (i,))
    db.execute("COMMIT")
    print(i, flush=True)
"#;

/// Prints the database's integrity check, its row count and largest id.
/// Waits for the locks of the killed mount to lapse (its lease).
const SQLITE_CHECK: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60)
ok = db.execute("PRAGMA integrity_check").fetchone()[0]
n, top = db.execute("SELECT count(*), coalesce(max(id), 0) FROM t").fetchone()
print(ok, n, top)
"#;

#[test]
fn sqlite_keeps_every_committed_transaction_when_the_mount_is_killed() {
    use std::process::{Command, Stdio};
    // The killed mount's locks hold for the lease, then lapse.
    let c = Cluster::start_with(6, &["--lock-lease-secs", "3"]);
    c.create_volume("lite", "1GiB", "ec:4+2");
    let m = c.mount("lite");
    let db = m.path("t.db");
    // A point that differs from run to run, well before the last commit.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let kill_after = 200 + u64::from(nanos) % 1800;
    tracing::info!("--- killing the mount after {kill_after} commits");
    let mut writer = Command::new("python3")
        .args(["-c", SQLITE_WRITER])
        .arg(&db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let acked = Acked::follow(&mut writer);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while acked.now() < kill_after {
        if let Ok(Some(status)) = writer.try_wait() {
            let mut err = String::new();
            let _ = writer.stderr.take().unwrap().read_to_string(&mut err);
            panic!(
                "the writer stopped by itself ({status}) after {} commits: {err}",
                acked.now()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the writer made {} commits in 5 minutes",
            acked.now()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    m.kill();
    let _ = writer.wait();
    let acked = acked.finish();
    assert!(
        acked < 10_000,
        "the writer finished before the mount was killed"
    );

    let m = c.mount("lite");
    let out = Command::new("python3")
        .args(["-c", SQLITE_CHECK])
        .arg(m.path("t.db"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).trim().to_string();
    tracing::info!("--- {acked} commits returned; after a remount: {report}");
    let fields: Vec<&str> = report.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"ok"), "integrity check: {report}");
    let (rows, top): (u64, u64) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert!(
        top >= acked,
        "{acked} commits returned, the database has ids up to {top}"
    );
    assert_eq!(rows, top, "ids 1..={top} are not all there");
    m.unmount();
}
