//! Crashes and corruption: a FUSE process SIGKILLed mid-write keeps every
//! fsynced file; a flipped byte in a shard on disk is detected and the read
//! is served from the other shards.

use std::{
    fs::{self, File},
    io::Write,
    path::{Path, PathBuf},
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
