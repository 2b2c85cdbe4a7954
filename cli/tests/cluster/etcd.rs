//! The metadata service on etcd: a cluster whose metadata lives in three
//! real etcd members (Debian's `etcd-server`) instead of RocksDB.

use std::{
    fs,
    io::Write,
    time::{Duration, Instant},
};

use tessera_metadata::store::etcd_member::{store_url, EtcdMember, MemberAddr};
use tracing::info;

use crate::{
    data::{check_tree, write_tree},
    harness::{docker::blob, free_port, spawn, test_root, Cluster, Mount, BIN},
};

/// Three etcd members on free ports, with their data in a directory of
/// their own. Members go first when dropped, then the directory.
pub(crate) struct Etcd {
    pub members: Vec<EtcdMember>,
    pub addrs: Vec<MemberAddr>,
    pub dir: tempfile::TempDir,
}

impl Etcd {
    pub fn start() -> Etcd {
        let dir = tempfile::Builder::new()
            .prefix("tessera-etcd")
            .tempdir_in(test_root())
            .unwrap();
        let addrs: Vec<MemberAddr> = (1..=3)
            .map(|i| MemberAddr {
                name: format!("etcd-{i}"),
                client_port: free_port(),
                peer_port: free_port(),
            })
            .collect();
        let members = (0..3)
            .map(|i| Self::member(&addrs, dir.path(), i))
            .collect::<std::io::Result<Vec<_>>>()
            .expect("starting etcd members (scripts/setup.sh installs etcd-server)");
        Etcd {
            members,
            addrs,
            dir,
        }
    }

    fn member(
        addrs: &[MemberAddr],
        dir: &std::path::Path,
        i: usize,
    ) -> std::io::Result<EtcdMember> {
        EtcdMember::start(
            addrs,
            i,
            dir,
            &dir.join(format!("etcd-{}.log", i + 1)),
            true,
        )
    }

    /// Starts member `i` again (after it was killed).
    pub fn restart(&mut self, i: usize) {
        self.members[i] = Self::member(&self.addrs, self.dir.path(), i).unwrap();
    }

    /// `etcd://` of every member, under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        store_url(&self.addrs, prefix)
    }
}

/// Files, a directory, a rename, a hard link, an unlink and an fsynced
/// multi-stripe file, made through a mount over etcd metadata, are there
/// byte for byte after the metadata service is SIGKILLed and restarted.
/// With two of the three members down, a metadata call at the mount
/// fails with EIO within the store's timeout and the CLI names etcd; once
/// a member is back, the same mount carries on without a remount.
#[test]
fn a_volume_on_etcd_survives_its_metadata_service_and_a_lost_quorum() {
    let mut etcd = Etcd::start();
    let url = etcd.url("cluster-a");
    let mut c = Cluster::start_with(6, &["--store", &url]);
    c.cli_ok(&[
        "volume",
        "create",
        "v",
        "--size",
        "1GiB",
        "--protection",
        "ec:4+2",
    ]);
    let m = c.mount("v");
    let d = m.dir.clone();

    info!("--- a tree of files through the mount");
    fs::create_dir(d.join("dir")).unwrap();
    let mut want: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..20u64 {
        let data = blob(i, 100 + i as usize * 700);
        fs::write(d.join(format!("dir/f{i}")), &data).unwrap();
        want.push((format!("dir/f{i}"), data));
    }
    let big = blob(99, 9 << 20);
    let mut f = fs::File::create(d.join("big")).unwrap();
    f.write_all(&big).unwrap();
    f.sync_all().unwrap();
    drop(f);
    want.push(("big".into(), big));
    fs::rename(d.join("dir/f0"), d.join("renamed")).unwrap();
    let (_, f0) = want.remove(0);
    want.push(("renamed".into(), f0.clone()));
    fs::hard_link(d.join("renamed"), d.join("dir/link")).unwrap();
    want.push(("dir/link".into(), f0));
    fs::remove_file(d.join("dir/f1")).unwrap();
    want.retain(|(n, _)| n != "dir/f1");

    info!("--- SIGKILL and restart the metadata service");
    c.kill_meta();
    c.start_meta();
    c.wait_nodes_up(6);
    for (name, data) in &want {
        assert_eq!(&fs::read(d.join(name)).unwrap(), data, "{name}");
    }
    assert!(!d.join("dir/f1").exists());
    assert_eq!(fs::metadata(d.join("renamed")).unwrap().len(), 100);

    // The member calls go to first: they must move.
    info!("--- one of three etcd members down: calls move to the others");
    etcd.members[0].kill();
    for i in 0..5 {
        let mut f = fs::File::create(d.join(format!("one-down-{i}"))).unwrap();
        f.write_all(b"still").unwrap();
        f.sync_all().unwrap();
    }
    for i in 0..5 {
        assert_eq!(fs::read(d.join(format!("one-down-{i}"))).unwrap(), b"still");
    }

    info!("--- two of three etcd members down: EIO, never a wrong answer");
    etcd.members[1].kill();
    let start = Instant::now();
    let r = fs::write(d.join("during"), b"x");
    let took = start.elapsed();
    match r {
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "expected EIO, got {e}"),
        Ok(()) => panic!("a create without an etcd quorum succeeded"),
    }
    assert!(
        took < Duration::from_secs(60),
        "the create took {took:?} to fail"
    );
    let out = c.cli(&["volume", "ls"]);
    assert!(
        !out.status.success(),
        "volume ls without a quorum succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("etcd"),
        "the CLI's error does not name etcd: {err}"
    );

    info!("--- one member back: the same mount carries on");
    etcd.restart(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    // An fsync that returns is the acknowledgement (a close's error is
    // lost by `fs::write`).
    let write_synced = || -> std::io::Result<()> {
        let mut f = fs::File::create(d.join("after"))?;
        f.write_all(b"back")?;
        f.sync_all()
    };
    loop {
        match write_synced() {
            Ok(()) => break,
            Err(e) if Instant::now() < deadline => {
                info!(error = %e, "not yet");
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => panic!("the mount did not carry on after the quorum came back: {e}"),
        }
    }
    assert_eq!(fs::read(d.join("after")).unwrap(), b"back");
    for (name, data) in &want {
        assert_eq!(&fs::read(d.join(name)).unwrap(), data, "{name}");
    }
    c.cli_ok(&["volume", "ls"]);
}

/// A base port with PORT+1..6 (nodes), PORT+101..103 and PORT+201..203
/// (etcd clients and peers) free as well.
/// Below the kernel's ephemeral range (32768 and up), where outgoing
/// connections could take them meanwhile.
fn dev_ports() -> u16 {
    let mut seed = u64::from(std::process::id()) * 7919;
    loop {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let base = 20_000 + (seed >> 40) as u16 % 12_000;
        let all = [0u16, 1, 2, 3, 4, 5, 6, 101, 102, 103, 201, 202, 203];
        if all
            .iter()
            .all(|d| std::net::TcpListener::bind(("127.0.0.1", base + d)).is_ok())
        {
            return base;
        }
    }
}

fn cli(meta: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env("TESSERA_META", meta)
        .output()
        .unwrap()
}

fn wait_dev_up(meta: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = cli(meta, &["node", "ls"]);
        if String::from_utf8_lossy(&out.stdout).matches(" up ").count() >= 6 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "tessera dev --store etcd did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `tessera dev --store etcd` (README) runs a cluster whose metadata is in
/// a local 3-member etcd; stopped and started again on its directory, it
/// has every volume and file back; its etcd members stop with it.
#[test]
fn tessera_dev_with_store_etcd_runs_and_resumes_a_cluster() {
    let dir = tempfile::Builder::new()
        .prefix("tessera-dev-etcd")
        .tempdir_in(test_root())
        .unwrap();
    let port = dev_ports();
    let meta = format!("127.0.0.1:{port}");
    let data = dir.path().join("cluster");
    let args: Vec<String> = [
        "dev",
        "--data",
        &data.display().to_string(),
        "--port",
        &port.to_string(),
        "--store",
        "etcd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut dev = spawn(&args, &dir.path().join("dev.log"));
    wait_dev_up(&meta);
    let out = cli(&meta, &["volume", "create", "v", "--size", "1GiB"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mnt = dir.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = Mount::start_on(&meta, dir.path().join("mount.log"), "v", mnt.clone());
    let data_bytes = blob(5, 5 << 20);
    let mut f = fs::File::create(mnt.join("file")).unwrap();
    f.write_all(&data_bytes).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.unmount();

    info!("--- stop tessera dev: its etcd members stop too");
    unsafe { libc::kill(dev.id() as i32, libc::SIGTERM) };
    let status = dev.wait().unwrap();
    assert!(status.success(), "tessera dev exited with {status}");
    for p in [101u16, 102, 103] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port + p)).is_err(),
            "an etcd member still listens on {}",
            port + p
        );
    }

    info!("--- another --port on the same directory is refused, clearly");
    let mut other = args.clone();
    let at = other.iter().position(|a| a == "--port").unwrap() + 1;
    other[at] = (port + 1000).to_string();
    let out = std::process::Command::new(BIN)
        .args(&other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("--port {port}")), "{err}");

    info!("--- start it again on the same directory");
    let mut dev = spawn(&args, &dir.path().join("dev.log"));
    wait_dev_up(&meta);
    let out = cli(&meta, &["volume", "ls"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains('v'));
    let m = Mount::start_on(&meta, dir.path().join("mount.log"), "v", mnt.clone());
    assert_eq!(fs::read(mnt.join("file")).unwrap(), data_bytes);
    m.unmount();
    unsafe { libc::kill(dev.id() as i32, libc::SIGTERM) };
    assert!(dev.wait().unwrap().success());
}

/// `tessera meta migrate` moves a stopped cluster's metadata from RocksDB
/// onto etcd: 10,000 files and 1 GiB of data written on RocksDB read back
/// identical through a mount of the same cluster on etcd. A second
/// migration into the now full prefix, or from a directory that holds no
/// store, is refused with a clear error. A backup of the cluster on etcd
/// restores whole under another prefix.
#[test]
fn a_cluster_moves_from_rocksdb_onto_etcd_with_every_file_intact() {
    let mut c = Cluster::start(6);
    c.create_volume("v", "4GiB", "ec:4+2");
    let m = c.mount("v");
    info!("--- 10,000 small files and a 1 GiB file on RocksDB");
    write_tree(&m.dir, 10, 1000, 64);
    m.unmount();
    c.stop_meta();

    let etcd = Etcd::start();
    let url = etcd.url("moved");
    let data = c.dir.path().join("meta").display().to_string();
    info!("--- migrate");
    let out = c.cli(&["meta", "migrate", "--from", &data, "--to", &url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("read them back the same"));
    let again = c.cli(&["meta", "migrate", "--from", &data, "--to", &url]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds metadata"));
    let nowhere = c.dir.path().join("nothing-here").display().to_string();
    let none = c.cli(&[
        "meta",
        "migrate",
        "--from",
        &nowhere,
        "--to",
        &etcd.url("other"),
    ]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("holds no metadata store"));

    info!("--- the same cluster on etcd");
    c.set_meta_args(&["--store", &url]);
    c.start_meta();
    c.wait_nodes_up(6);
    let m = c.mount("v");
    let d = m.dir.clone();
    check_tree(&d, 10, 1000, 64, &[]);
    fs::write(d.join("new-on-etcd"), b"yes").unwrap();
    assert_eq!(fs::read(d.join("new-on-etcd")).unwrap(), b"yes");
    m.unmount();

    info!("--- a backup of the cluster on etcd, restored under another prefix");
    let backup = c.dir.path().join("backup").display().to_string();
    let saved = c.cli_ok(&["meta", "backup", "--to", &backup]);
    let keys = |out: &str| -> String {
        let words: Vec<&str> = out.split_whitespace().collect();
        let at = words
            .iter()
            .position(|w| *w == "keys")
            .expect("a key count");
        words[at - 1].to_string()
    };
    let restored_url = etcd.url("restored");
    c.cli_ok(&[
        "meta",
        "restore",
        "--from",
        &backup,
        "--store",
        &restored_url,
    ]);
    // Read back on its own: copied out of etcd into a fresh RocksDB.
    let copy = c.dir.path().join("copy").display().to_string();
    let copied = c.cli_ok(&["meta", "migrate", "--from", &restored_url, "--to", &copy]);
    assert_eq!(keys(&saved), keys(&copied), "{saved}\n{copied}");
    assert!(keys(&saved).parse::<u64>().unwrap() > 10_000);
}
