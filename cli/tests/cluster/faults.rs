//! Crashes and corruption: a FUSE process SIGKILLed mid-write keeps every
//! fsynced file; a SIGKILLed metadata service keeps every change it
//! acknowledged, fsynced or not; a flipped byte in a shard on disk is
//! detected and the read is served from the other shards.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tracing::info;

use crate::harness::{pattern, Cluster};

fn content(i: u64) -> Vec<u8> {
    let mut v = vec![0u8; 64 * 1024 + (i as usize % 7) * 100_000 / 8 * 8];
    pattern(i, 0, &mut v);
    v
}

#[test]
fn fsynced_files_survive_a_sigkilled_fuse_process() {
    let c = Cluster::start(6);
    c.create_volume("crash", "4GiB", "ec:4+2");
    let m = c.mount("crash");
    let synced: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let dir = m.dir.clone();
    let writer = {
        let (synced, stop) = (synced.clone(), stop.clone());
        std::thread::spawn(move || {
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let write = || -> std::io::Result<()> {
                    let mut f = File::create(dir.join(format!("f{i}")))?;
                    f.write_all(&content(i))?;
                    if i % 2 == 0 {
                        f.sync_all()?;
                    }
                    Ok(())
                };
                match write() {
                    Ok(()) if i % 2 == 0 => synced.lock().unwrap().push(i),
                    Ok(()) => {}
                    Err(_) => break, // the mount died under us
                }
            }
        })
    };
    std::thread::sleep(Duration::from_secs(4));
    m.kill();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let synced = synced.lock().unwrap().clone();
    assert!(
        synced.len() > 5,
        "writer made too little progress: {}",
        synced.len()
    );

    info!("--- remount and check {} fsynced files", synced.len());
    let m = c.mount("crash");
    for i in synced {
        let got = fs::read(m.path(&format!("f{i}"))).unwrap();
        assert!(got == content(i), "fsynced file f{i} is not intact");
    }
    m.unmount();
}

/// Writes a file in steps, one per line read from stdin, saying each.
/// While the metadata service is down, it also writes 9 MiB of a second
/// file and overwrites 1 MiB of it, and writes a third file 1 MiB at a
/// time until a write fails (or 80 MiB), saying how far it got and why;
/// a child that inherited the descriptors exits (its close flushes the
/// files, and fails), then the writer's own fsyncs are tried.
const OUTAGE_WRITER: &str = r#"
import errno, os, subprocess, sys
fd = os.open(sys.argv[1], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
big = os.open(sys.argv[2], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
held = os.open(sys.argv[3], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
for what, data in (("wrote before", b"before"), ("wrote during", b" and during")):
    sys.stdin.readline()
    os.write(fd, data)
    print(what, flush=True)
os.pwrite(big, b"B" * (9 << 20), 0)
os.pwrite(big, b"C" * (1 << 20), 2 << 20)
sys.stdin.readline()
n, why = 0, "none"
while n < (80 << 20):
    try:
        n += os.write(held, b"H" * (1 << 20))
    except OSError as e:
        why = errno.errorcode[e.errno]
        break
print(f"held {n >> 20} MiB {why}", flush=True)
sys.stdin.readline()
subprocess.run(["true"], pass_fds=(fd, big, held), check=True)
said = []
for f in (fd, big, held):
    try:
        os.fsync(f)
        said.append("ok")
    except OSError as e:
        said.append(errno.errorcode[e.errno])
print("fsync during: " + " ".join(said), flush=True)
sys.stdin.readline()
for f in (fd, big, held):
    os.fsync(f)
    os.close(f)
print(f"synced {os.path.getsize(sys.argv[3])}", flush=True)
"#;

/// Names and attributes are acknowledged before the metadata service's
/// fsync (as a local file system does), but never before they are in its
/// log: killing the process loses none of them.
#[test]
fn changes_survive_a_sigkilled_metadata_service() {
    use std::os::unix::fs::PermissionsExt;

    let mut c = Cluster::start(6);
    c.create_volume("names", "1GiB", "ec:4+2");
    let m = c.mount("names");
    // First, as its commit is fsynced and would cover what came before.
    fs::write(m.path("small"), b"kept").unwrap();
    fs::create_dir(m.path("d")).unwrap();
    for i in 0..200 {
        File::create(m.path(&format!("d/f{i}"))).unwrap();
    }
    for i in 0..50 {
        fs::remove_file(m.path(&format!("d/f{i}"))).unwrap();
    }
    fs::rename(m.path("d/f199"), m.path("moved")).unwrap();
    fs::set_permissions(m.path("moved"), fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::symlink("d/f100", m.path("link")).unwrap();
    // A writer that keeps a file open across the restart, in a process of
    // its own (a process the harness forks from would close a copy of the
    // descriptor at exec, and that close flushes the file).
    let mut writer = Command::new("python3")
        .args(["-c", OUTAGE_WRITER])
        .arg(m.path("open"))
        .arg(m.path("big"))
        .arg(m.path("held"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_writer = writer.stdin.take().unwrap();
    let mut from_writer = BufReader::new(writer.stdout.take().unwrap());
    let mut say = || {
        to_writer.write_all(b"go\n").unwrap();
        to_writer.flush().unwrap();
        let mut line = String::new();
        from_writer.read_line(&mut line).unwrap();
        line.trim().to_string()
    };
    assert_eq!(say(), "wrote before");

    c.kill_meta();
    // A write to an open file while the service is down is buffered: the
    // mount's check for capabilities to drop, asked anew past its 1 s,
    // fails, and the write goes on, as the kernel's own check let it.
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(say(), "wrote during");
    // While bytes wait for the service, a file's writes are taken until
    // 64 MiB wait (`HELD_MAX`; a block being retried is not counted),
    // then refused: memory stays bounded, and the writer learns it.
    let held = say();
    let words: Vec<&str> = held.split_whitespace().collect();
    let held_mib: u64 = words[1].parse().unwrap();
    assert!(
        (60..=68).contains(&held_mib) && words[3] == "EIO",
        "writes while the service was down: {held}"
    );
    // The child's close cannot store the bytes: they stay buffered, and
    // the fsync that cannot make them durable says so.
    assert_eq!(say(), "fsync during: EIO EIO EIO");
    c.start_meta();
    c.wait_nodes_up(6);
    // What was taken is stored once the service is back.
    assert_eq!(say(), format!("synced {}", held_mib << 20));
    assert!(writer.wait().unwrap().success());
    // The mount was connected to the killed service: every FUSE thread
    // reconnects on its next call, without failing it. (Past the kernel's
    // 1 s cache of names, so the lookups reach the mount.)
    std::thread::sleep(Duration::from_millis(1100));
    for i in 50..199 {
        let p = m.path(&format!("d/f{i}"));
        assert!(
            fs::metadata(&p).is_ok(),
            "stat {} through the old mount after the restart",
            p.display()
        );
    }
    m.unmount();
    let m = c.mount("names");
    let mut names: Vec<String> = fs::read_dir(m.path("d"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let mut want: Vec<String> = (50..199).map(|i| format!("f{i}")).collect();
    want.sort();
    assert_eq!(
        names, want,
        "entries of d after the metadata service was killed"
    );
    let moved = fs::metadata(m.path("moved")).unwrap();
    assert_eq!(moved.permissions().mode() & 0o7777, 0o600);
    assert_eq!(
        fs::read_link(m.path("link")).unwrap(),
        PathBuf::from("d/f100")
    );
    assert_eq!(fs::read(m.path("small")).unwrap(), b"kept");
    assert_eq!(fs::read(m.path("open")).unwrap(), b"before and during");
    let mut big = vec![b'B'; 9 << 20];
    big[2 << 20..3 << 20].fill(b'C');
    assert!(
        fs::read(m.path("big")).unwrap() == big,
        "9 MiB written during the outage, stored after it"
    );
    assert!(
        fs::read(m.path("held")).unwrap() == vec![b'H'; (held_mib << 20) as usize],
        "{held_mib} MiB taken during the outage, stored after it"
    );

    // A mount's idle connections do not hold up the service's shutdown.
    let took = c.stop_meta();
    assert!(
        took < Duration::from_secs(8),
        "the metadata service took {took:?} to exit on SIGTERM"
    );
    c.start_meta();
    m.unmount();
}

pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                if p.file_name().is_some_and(|n| n != "index") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "tsd") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn a_flipped_byte_on_disk_is_detected_and_the_read_is_exact() {
    let c = Cluster::start(6);
    c.create_volume("rot", "2GiB", "ec:4+2");
    let m = c.mount("rot");
    let size = 40u64 << 20;
    let mut data = vec![0u8; size as usize];
    pattern(77, 0, &mut data);
    fs::write(m.path("file"), &data).unwrap();
    m.unmount();

    // Every 256 KiB, so every 1 MiB shard of node 1 is hit: reads are
    // systematic, so only a flip in a data shard is ever seen, and node 1
    // holds a data shard of some of the ten blocks.
    info!("--- flip one byte in every 256 KiB of node 1's segment files");
    let segs = segment_files(&c.nodes[0].dir);
    assert!(!segs.is_empty(), "node 1 has no segment files");
    for seg in &segs {
        let mut bytes = fs::read(seg).unwrap();
        for at in (128 << 10..bytes.len()).step_by(256 << 10) {
            bytes[at] ^= 0x5a;
        }
        fs::write(seg, &bytes).unwrap();
    }
    let m = c.mount("rot");
    let got = fs::read(m.path("file")).unwrap();
    assert!(
        got == data,
        "read returned wrong bytes after on-disk corruption"
    );
    m.unmount();
    let log = fs::read_to_string(c.log("node-1")).unwrap().to_lowercase();
    assert!(
        log.contains("corrupt") || log.contains("crc"),
        "node 1 did not report the corruption"
    );
}

/// What a database's page reads see on a file whose shards rot on one
/// node, and then with another node dead too: small reads (made on the
/// FUSE thread, one shard range each) come back exact, from parity where
/// the shard they want is bad or gone.
#[test]
fn small_reads_over_a_rotten_node_then_a_dead_one_are_exact() {
    let mut c = Cluster::start(6);
    let data = write_db(&c, 78);
    let size = data.len() as u64;

    // Pages and odd ranges all over the file; the kernel asks for each
    // read as it is (no read-ahead), as a database's reads arrive.
    let mut reads: Vec<(u64, usize)> = (0..600u64)
        .map(|i| ((i * 7919 % 10240) * 4096, 4096))
        .collect();
    reads.extend((0..300u64).map(|i| (i * 40_009 % (size - 6000), 1 + (i as usize * 37) % 6000)));
    reads.push(((4 << 20) - 2048, 4096)); // across two blocks
    reads.push((size - 500, 4096)); // past the end: 500 bytes
    read_pages(&c, &reads, &data, "healthy").0.unmount();

    info!("--- flip a byte in every 64 KiB of node 1's segment files");
    for seg in segment_files(&c.nodes[0].dir) {
        let mut bytes = fs::read(&seg).unwrap();
        for at in (32 << 10..bytes.len()).step_by(64 << 10) {
            bytes[at] ^= 0x5a;
        }
        fs::write(&seg, &bytes).unwrap();
    }
    let (m, _) = read_pages(&c, &reads, &data, "rotten node 1");
    let log = fs::read_to_string(&m.log).unwrap();
    m.unmount();
    // The first read of a rotten shard was made on the FUSE thread (node 1
    // was suspect for nothing yet): node 1 answered DATA_LOSS and the read
    // went on from parity, which also reported the shard for repair.
    assert!(
        log.lines().any(|l| l.contains("shard read failed; reading from parity")
            && l.contains("DataLoss")),
        "no small read met a rotten shard on the FUSE thread:\n{log}"
    );
    let node_log = fs::read_to_string(c.log("node-1")).unwrap().to_lowercase();
    assert!(
        node_log.contains("corrupt"),
        "node 1 did not report the corruption"
    );

    c.kill_node(1);
    read_pages(&c, &reads, &data, "rotten node 1, dead node 2")
        .0
        .unmount();
}

/// A node that hangs (stopped: it accepts connections and answers
/// nothing, as on a stuck disk) costs a read about `SLOW_READ` (1 s), not
/// the 10 s a read of a shard may take: reads go around it from parity
/// and come back exact, page reads and a sequential read alike; once it
/// runs again, reads are exact too. Writes do not wait on it either:
/// an fsync costs about `SLOW_PUT` (1 s) more at most, the shards left
/// out of it are queued for repair and written once it runs again.
#[test]
fn reads_and_writes_go_around_a_hung_node_without_waiting_on_it() {
    // A stopped node sends no heartbeats: it would be marked down after
    // 10 s and skipped from then on; this test is about the time before
    // (and about a node on a stuck disk, which goes on sending them).
    let c = Cluster::start_with(6, &["--down-after-secs", "600"]);
    let data = write_db(&c, 79);
    let reads: Vec<(u64, usize)> = (0..400u64)
        .map(|i| ((i * 7919 % 10240) * 4096, 4096))
        .collect();

    c.pause_node(0);
    let (m, slowest) = read_pages(&c, &reads, &data, "hung node 1");
    // Each read waited for node 1 at most about a second (on the FUSE
    // thread or in the degraded read, not both); 10 s is the timeout of a
    // read it would otherwise have waited out.
    assert!(
        slowest < Duration::from_secs(5),
        "a page read took {slowest:?} with node 1 hung"
    );
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(
        log.contains("shard read failed; reading from parity"),
        "no read met the hung node:\n{log}"
    );
    m.unmount();
    // A sequential read: whole blocks (read-ahead), a data shard of some
    // on node 1.
    let m = c.mount("pages");
    let started = std::time::Instant::now();
    let got = fs::read(m.path("db")).unwrap();
    let took = started.elapsed();
    assert!(
        got == data,
        "the sequential read with node 1 hung read wrong"
    );
    assert!(
        took < Duration::from_secs(20),
        "the sequential read of 40 MiB took {took:?} with node 1 hung"
    );
    m.unmount();

    // Writes with an fsync every MiB: each block leaves node 1's shard
    // out after a second (queued for repair) and the next ones skip it.
    let m = c.mount("pages");
    let mut fresh = vec![0u8; 12 << 20];
    pattern(80, 0, &mut fresh);
    let mut f = File::create(m.path("fresh")).unwrap();
    let mut slowest = Duration::ZERO;
    for chunk in fresh.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
        let started = std::time::Instant::now();
        f.sync_all().unwrap();
        slowest = slowest.max(started.elapsed());
    }
    drop(f);
    assert!(
        slowest < Duration::from_secs(5),
        "an fsync took {slowest:?} with node 1 hung"
    );
    assert!(fs::read(m.path("fresh")).unwrap() == fresh);
    let log = fs::read_to_string(&m.log).unwrap();
    assert!(
        log.contains("shard write slow"),
        "no store left node 1 out:\n{log}"
    );
    m.unmount();
    let (queued, _) = c.repair_waiting();
    assert!(queued > 0, "no shard of node 1 was queued for repair");

    c.resume_node(0);
    // What was left out of node 1 is repaired once it answers again.
    c.wait_for("the repair queue to empty", 60, |c| {
        c.repair_waiting().0 == 0
    });
    let m = c.mount("pages");
    assert!(fs::read(m.path("fresh")).unwrap() == fresh);
    m.unmount();
    read_pages(&c, &reads, &data, "node 1 running again")
        .0
        .unmount();
}

/// Creates the `ec:4+2` volume `pages` and writes its file `db`: 40 MiB
/// and 1,000 bytes of pattern `seed`, returned. Ten blocks, so every node
/// holds a data shard of some (reads are systematic: a parity shard is
/// read only around a failure); not a whole number of pages, so the last
/// read is short.
fn write_db(c: &Cluster, seed: u64) -> Vec<u8> {
    c.create_volume("pages", "2GiB", "ec:4+2");
    let m = c.mount("pages");
    let mut data = vec![0u8; (40 << 20) + 1000];
    pattern(seed, 0, &mut data);
    fs::write(m.path("db"), &data).unwrap();
    m.unmount();
    data
}

/// Mounts `pages` and reads `reads` of its file `db` one by one (no
/// read-ahead), checking each against `data`; returns the mount.
fn read_pages(
    c: &Cluster,
    reads: &[(u64, usize)],
    data: &[u8],
    label: &str,
) -> (crate::harness::Mount, Duration) {
    use std::os::{fd::AsRawFd, unix::fs::FileExt};
    let m = c.mount("pages");
    let mut slowest = Duration::ZERO;
    let f = File::open(m.path("db")).unwrap();
    // SAFETY: a plain advice call on a descriptor we hold open.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(r, 0, "posix_fadvise");
    for &(at, len) in reads {
        let want = &data[at as usize..(at as usize + len).min(data.len())];
        let mut got = vec![0u8; len];
        let mut n = 0;
        let started = std::time::Instant::now();
        while n < len {
            match f.read_at(&mut got[n..], at + n as u64).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        slowest = slowest.max(started.elapsed());
        assert!(
            &got[..n] == want,
            "{label}: {len} bytes at {at} read wrong ({n} bytes came back)"
        );
    }
    (m, slowest)
}
