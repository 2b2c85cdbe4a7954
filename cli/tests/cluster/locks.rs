//! Advisory locks across two mounts of one volume (two processes, as two
//! hosts would mount it): fcntl record locks and flock exclude each other
//! across mounts, a blocked lock waits until the holder lets go, a lock
//! taken reads what the last holder wrote, and a holder's locks go when
//! it exits, or when its whole mount dies and its lease runs out.

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{channel, Receiver},
    time::{Duration, Instant},
};

use crate::harness::Cluster;

/// Takes commands on stdin, one answer line each: the result or the
/// errno's name.
const LOCKER: &str = r#"
import errno, fcntl, os, struct, sys
f = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
kinds = {"R": fcntl.F_RDLCK, "W": fcntl.F_WRLCK}
def flock(kind, start, length):
    return struct.pack("hhqqi4x", kind, 0, start, length, 0)
for line in sys.stdin:
    w = line.split()
    try:
        if w[0] == "ofd":
            fcntl.fcntl(f, fcntl.F_OFD_SETLK, flock(kinds[w[1]], int(w[2]), int(w[3])))
            print("ok")
        elif w[0] in ("lock", "wait"):
            cmd = fcntl.F_SETLK if w[0] == "lock" else fcntl.F_SETLKW
            fcntl.fcntl(f, cmd, flock(kinds[w[1]], int(w[2]), int(w[3])))
            print("ok")
        elif w[0] == "unlock":
            fcntl.fcntl(f, fcntl.F_SETLK, flock(fcntl.F_UNLCK, int(w[1]), int(w[2])))
            print("ok")
        elif w[0] == "test":
            r = fcntl.fcntl(f, fcntl.F_GETLK, flock(kinds[w[1]], int(w[2]), int(w[3])))
            t, _, s, l, pid = struct.unpack("hhqqi4x", r)
            print("free" if t == fcntl.F_UNLCK else f"{'R' if t == fcntl.F_RDLCK else 'W'} {s} {l} {pid}")
        elif w[0] == "flock":
            op = {"EX": fcntl.LOCK_EX, "SH": fcntl.LOCK_SH, "UN": fcntl.LOCK_UN}[w[1]]
            fcntl.flock(f, op | (fcntl.LOCK_NB if len(w) > 2 else 0))
            print("ok")
        elif w[0] == "write":
            os.pwrite(f, w[2].encode(), int(w[1]))
            print("ok")
        elif w[0] == "truncate":
            os.ftruncate(f, int(w[1]))
            print("ok")
        elif w[0] == "sync":
            os.fsync(f)
            print("ok")
        elif w[0] == "read":
            print(os.pread(f, int(w[2]), int(w[1])).decode() or "-")
        elif w[0] == "pid":
            print(os.getpid())
    except OSError as e:
        print(errno.errorcode[e.errno])
    sys.stdout.flush()
"#;

/// One process with a file open, driven line by line.
struct Locker {
    child: Child,
    stdin: Option<ChildStdin>,
    answers: Receiver<String>,
}

impl Locker {
    fn open(path: &Path) -> Locker {
        let mut child = Command::new("python3")
            .args(["-c", LOCKER])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Locker {
            child,
            stdin: Some(stdin),
            answers,
        }
    }

    fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("running");
        writeln!(stdin, "{command}").unwrap();
        stdin.flush().unwrap();
    }

    /// The next answer, if one comes within `wait`.
    fn answer(&self, wait: Duration) -> Option<String> {
        self.answers.recv_timeout(wait).ok()
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.answer(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("no answer to {command:?} in 30 s"))
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Closes its stdin: the process exits, closing the file.
    fn exit(mut self) {
        self.stdin = None;
        let _ = self.child.wait();
    }
}

impl Drop for Locker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn locks_exclude_across_mounts_and_go_with_their_holder() {
    let c = Cluster::start_with(6, &["--lock-lease-secs", "5"]);
    c.create_volume("lk", "1GiB", "ec:4+2");
    let ma = c.mount_at("lk", "host-a");
    let mb = c.mount_at("lk", "host-b");
    let mut a = Locker::open(&ma.path("f"));
    let mut b = Locker::open(&mb.path("f"));
    let mut b2 = Locker::open(&mb.path("f"));

    // Record locks: overlapping exclusive locks exclude each other across
    // mounts and across processes of one mount; disjoint ones do not.
    assert_eq!(a.ask("lock W 0 100"), "ok");
    assert_eq!(b.ask("lock W 50 10"), "EAGAIN");
    assert_eq!(b2.ask("lock R 0 1"), "EAGAIN");
    assert_eq!(b.ask("lock R 100 10"), "ok");
    assert_eq!(b.ask("test W 0 10"), format!("W 0 100 {}", a.pid()));
    assert_eq!(a.ask("test R 0 10"), "free", "a process's own locks");
    assert_eq!(a.ask("lock W 100 1"), "EAGAIN");

    // A blocked lock waits for the holder, then reads what it wrote,
    // though its mount had read the old bytes.
    assert_eq!(b.ask("write 10 xxxxx"), "ok");
    assert_eq!(b.ask("sync"), "ok");
    assert_eq!(b.ask("read 10 5"), "xxxxx");
    assert_eq!(a.ask("write 10 hello"), "ok");
    b.send("wait W 0 100");
    assert_eq!(b.answer(Duration::from_millis(500)), None, "b waits");
    assert_eq!(a.ask("unlock 0 100"), "ok");
    assert_eq!(b.answer(Duration::from_secs(10)).as_deref(), Some("ok"));
    assert_eq!(b.ask("read 10 5"), "hello");
    assert_eq!(a.ask("lock R 0 1"), "EAGAIN");

    // A truncation is a change too: a lock taken after it, on the other
    // mount, reads the new bytes though it had read the old ones (a
    // knows every change before it: it locks and reads first).
    assert_eq!(b.ask("unlock 0 0"), "ok");
    assert_eq!(a.ask("lock R 0 1"), "ok");
    assert_eq!(a.ask("read 10 5"), "hello");
    assert_eq!(a.ask("unlock 0 0"), "ok");
    assert_eq!(b.ask("lock W 0 100"), "ok");
    assert_eq!(b.ask("truncate 0"), "ok");
    assert_eq!(b.ask("truncate 15"), "ok");
    assert_eq!(b.ask("unlock 0 0"), "ok");
    a.send("wait W 0 100");
    assert_eq!(a.answer(Duration::from_secs(10)).as_deref(), Some("ok"));
    assert_eq!(a.ask("read 10 5"), "\0\0\0\0\0");
    assert_eq!(a.ask("unlock 0 0"), "ok");

    // A holder that dies lets go at once.
    assert_eq!(b.ask("unlock 0 0"), "ok");
    let mut a2 = Locker::open(&ma.path("f"));
    assert_eq!(a2.ask("lock W 200 10"), "ok");
    assert_eq!(b.ask("lock W 200 1"), "EAGAIN");
    a2.kill();
    b.send("wait W 200 10");
    assert_eq!(b.answer(Duration::from_secs(10)).as_deref(), Some("ok"));

    // A process waiting for a lock can be killed (FUSE cannot interrupt
    // the request: the mount ends the wait when it sees the signal).
    let mut waiter = Locker::open(&mb.path("f"));
    assert_eq!(b.ask("lock W 300 1"), "ok");
    assert_eq!(waiter.ask("pid"), waiter.pid().to_string());
    waiter.send("wait W 300 1");
    // Until it is inside fcntl.
    let syscall = format!("/proc/{}/syscall", waiter.pid());
    let fcntl = format!("{} ", libc::SYS_fcntl);
    let since = Instant::now();
    while !std::fs::read_to_string(&syscall).is_ok_and(|s| s.starts_with(&fcntl)) {
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "the waiter never waits"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(waiter.answer(Duration::from_millis(300)), None, "it waits");
    let started = Instant::now();
    unsafe { libc::kill(waiter.pid() as i32, libc::SIGKILL) };
    while waiter.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a SIGKILLed lock waiter did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.ask("unlock 300 1"), "ok");
    assert_eq!(
        a.ask("lock W 300 1"),
        "ok",
        "the killed waiter took nothing"
    );

    // Open file description locks (F_OFD_SETLK, as QEMU takes on disk
    // images) go with the holder's last close.
    let mut oa = Locker::open(&ma.path("ofd"));
    let mut ob = Locker::open(&mb.path("ofd"));
    assert_eq!(oa.ask("ofd W 0 10"), "ok");
    assert_eq!(ob.ask("lock W 5 1"), "EAGAIN");
    oa.exit();
    ob.send("wait W 5 1");
    assert_eq!(ob.answer(Duration::from_secs(10)).as_deref(), Some("ok"));

    // flock: whole-file, across mounts; released by the holder's close.
    let mut fa = Locker::open(&ma.path("g"));
    let mut fb = Locker::open(&mb.path("g"));
    assert_eq!(fa.ask("flock EX NB"), "ok");
    assert_eq!(fb.ask("flock SH NB"), "EAGAIN");
    fb.send("flock EX");
    assert_eq!(fb.answer(Duration::from_millis(500)), None, "fb waits");
    fa.exit();
    assert_eq!(fb.answer(Duration::from_secs(10)).as_deref(), Some("ok"));
    assert_eq!(fb.ask("flock UN"), "ok");

    // A mount that dies holding a lock: others get it once its lease
    // (5 s here; renewed every 1.7 s) has run out, not before.
    let mut a3 = Locker::open(&ma.path("h"));
    assert_eq!(a3.ask("lock W 0 0"), "ok");
    let mut b3 = Locker::open(&mb.path("h"));
    let killed = Instant::now();
    ma.kill();
    a3.kill();
    assert_eq!(b3.ask("lock W 0 0"), "EAGAIN");
    loop {
        if b3.ask("lock W 0 0") == "ok" {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the dead mount's lock was never released"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // A 5 s lease renewed every 1.7 s: it ends at least 3.3 s after the
    // kill; 1.6 s leaves room for a late renewal on a busy machine.
    assert!(killed.elapsed() >= Duration::from_millis(1600));
    drop((b, b2, b3, fb, a, ob));
    mb.unmount();
}

/// A close whose written bytes could not be stored (too few storage nodes
/// up) keeps the closing process's locks until they land: the next holder,
/// on another mount, reads them, and they never land over its writes.
#[test]
fn a_close_whose_bytes_wait_keeps_its_locks_until_they_land() {
    let mut c = Cluster::start(6);
    c.create_volume("lw", "1GiB", "ec:4+2");
    let ma = c.mount_at("lw", "host-a");
    let mb = c.mount_at("lw", "host-b");
    let mut a = Locker::open(&ma.path("f"));
    // Over 4 KiB, so that the bytes go to the storage nodes (not inline).
    let pad = "x".repeat(8192);
    assert_eq!(a.ask("lock W 0 0"), "ok");
    assert_eq!(a.ask(&format!("write 0 before{pad}")), "ok");
    assert_eq!(a.ask("sync"), "ok");
    // Three of six nodes gone: an ec:4+2 block cannot be made durable.
    for i in 0..3 {
        c.kill_node(i);
    }
    assert_eq!(a.ask(&format!("write 0 latest{pad}")), "ok");
    assert_eq!(a.ask("sync"), "EIO", "the bytes could not be stored");
    a.exit();
    let mut b = Locker::open(&mb.path("f"));
    assert_eq!(
        b.ask("lock W 0 0"),
        "EAGAIN",
        "a's bytes wait: its lock must stay"
    );
    for i in 0..3 {
        c.start_node(i);
    }
    c.wait_nodes_up(6);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match b.ask("lock W 0 0").as_str() {
            "ok" => break,
            "EAGAIN" if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("b's lock after the nodes came back: {other}"),
        }
    }
    assert_eq!(
        b.ask("read 0 6"),
        "latest",
        "the next holder reads a's bytes"
    );
    assert_eq!(b.ask("write 0 b-wins"), "ok");
    assert_eq!(b.ask("sync"), "ok");
    // Nothing of a's lands later over b's bytes.
    std::thread::sleep(Duration::from_secs(3));
    let fresh = c.mount_at("lw", "host-c");
    let got = std::fs::read(fresh.path("f")).unwrap();
    assert_eq!(got.len(), 6 + pad.len());
    assert_eq!(&got[..6], b"b-wins", "a's bytes landed over b's");
    b.exit();
    fresh.unmount();
    ma.unmount();
    mb.unmount();
}
