//! `tessera meta backup` and `tessera meta restore`: the metadata of a
//! cluster whose metadata disk was lost comes back from a backup taken
//! while it was being written.

use std::{
    fs,
    io::Write,
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
};

use tracing::info;

use crate::{
    data::{check_tree, write_tree},
    harness::{docker::blob, Cluster},
};

/// Longer than the test: blocks freed after the backup keep their shards.
const GC_DELAY: &str = "3600";

/// What the writer puts in its `n`th file.
fn during(n: u64) -> Vec<u8> {
    blob(1000 + n, 40_000 + (n as usize % 7) * 1000)
}

fn check_before(d: &Path) {
    // d2/f9 was renamed to d3/moved.
    check_tree(d, 4, 500, 16, &[(2, 9)]);
    assert_eq!(fs::read(d.join("link")).unwrap(), b"0-7");
    assert_eq!(fs::read_link(d.join("sym")).unwrap(), Path::new("d1/f3"));
    assert!(!d.join("d2/f9").exists());
    assert!(
        fs::read(d.join("mid")).unwrap() == blob(77, 8 << 20),
        "mid differs"
    );
    assert_eq!(fs::read(d.join("d3/moved")).unwrap(), b"2-9");
}

/// A backup taken while files are being created and written with fsync;
/// then a file removed and another rewritten; the metadata directory then
/// "lost" and restored from the backup into a fresh one: every file
/// written before the backup is identical through a new mount (the
/// shards its blocks freed after the backup were kept for the GC delay), every file written during it is there whole or not at
/// all (or empty: created, not yet written), and new writes work and
/// leave the old files alone. A copy of the backup with one byte changed
/// is refused and creates no store.
#[test]
fn a_backup_taken_while_writing_restores_a_lost_metadata_disk() {
    let mut c = Cluster::start_with(6, &["--gc-delay-secs", GC_DELAY]);
    c.create_volume("v", "4GiB", "ec:4+2");
    let m = c.mount("v");
    let d = m.dir.clone();
    info!("--- 2,000 small files, a 256 MiB file, a link, a rename, a symlink");
    write_tree(&d, 4, 500, 16);
    fs::hard_link(d.join("d0/f7"), d.join("link")).unwrap();
    fs::rename(d.join("d2/f9"), d.join("d3/moved")).unwrap();
    std::os::unix::fs::symlink("d1/f3", d.join("sym")).unwrap();
    fs::write(d.join("mid"), blob(77, 8 << 20)).unwrap();
    fs::create_dir(d.join("during")).unwrap();

    let backup = c.dir.path().join("backup");
    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) || n < 20 {
                let mut f = fs::File::create(d.join(format!("during/{n}"))).unwrap();
                f.write_all(&during(n)).unwrap();
                f.sync_all().unwrap();
                n += 1;
            }
            n
        });
        while !d.join("during/10").exists() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        info!("--- backup while the writer runs");
        let out = c.cli_ok(&["meta", "backup", "--to", &backup.display().to_string()]);
        assert!(out.contains("backed up"), "{out}");
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap()
    });
    info!(written, "--- the writer stopped");
    let again = c.cli(&["meta", "backup", "--to", &backup.display().to_string()]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("not empty"));
    info!("--- after the backup: a file removed, another rewritten, GC rounds pass");
    fs::remove_file(d.join("mid")).unwrap();
    let mut f = fs::OpenOptions::new()
        .write(true)
        .open(d.join("big"))
        .unwrap();
    f.write_all(&blob(999, 16 << 20)).unwrap();
    f.sync_all().unwrap();
    drop(f);
    std::thread::sleep(std::time::Duration::from_secs(2));
    m.unmount();
    c.stop_meta();

    info!("--- the metadata disk is lost; a damaged copy of the backup is refused");
    let meta = c.dir.path().join("meta");
    fs::rename(&meta, c.dir.path().join("meta-lost")).unwrap();
    let bad = c.dir.path().join("bad-backup");
    fs::create_dir(&bad).unwrap();
    for name in ["records", "manifest"] {
        fs::copy(backup.join(name), bad.join(name)).unwrap();
    }
    let mut bytes = fs::read(bad.join("records")).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    fs::write(bad.join("records"), bytes).unwrap();
    let restore = |from: &Path| {
        let (from, to) = (from.display().to_string(), meta.display().to_string());
        c.cli(&["meta", "restore", "--from", &from, "--data", &to])
    };
    let refused = restore(&bad);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("fails its CRC32"), "{why}");
    assert!(
        !meta.join("meta.db").exists(),
        "a refused restore made a store"
    );

    info!("--- restore into a fresh directory");
    let out = restore(&backup);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("restored"), "{said}");
    c.start_meta();
    c.wait_nodes_up(6);
    let m = c.mount("v");
    let d = m.dir.clone();
    check_before(&d);
    let mut whole = 0;
    for n in 0..written {
        match fs::read(d.join(format!("during/{n}"))) {
            Ok(got) if got == during(n) => whole += 1,
            Ok(got) => assert!(got.is_empty(), "during/{n} is {} bytes", got.len()),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "during/{n}"),
        }
    }
    info!(
        whole,
        written, "--- files written during the backup, whole in it"
    );
    assert!(
        whole >= 10,
        "the backup missed files fsynced before it began"
    );

    info!("--- new writes after the restore");
    let mut f = fs::File::create(d.join("after")).unwrap();
    for i in 0..4u64 {
        f.write_all(&blob(100 + i, 16 << 20)).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    for n in 0..written {
        fs::write(d.join(format!("during/{n}")), b"over").unwrap();
    }
    m.unmount();
    let m = c.mount("v");
    let d = m.dir.clone();
    check_before(&d);
    let got = fs::read(d.join("after")).unwrap();
    for i in 0..4u64 {
        let part = &got[(i as usize) << 24..((i as usize) + 1) << 24];
        assert!(
            part == blob(100 + i, 16 << 20),
            "block {i} of after differs"
        );
    }
    m.unmount();
}
