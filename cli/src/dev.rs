//! `tessera dev`: a whole cluster on one machine, for trying Tessera and for
//! tests. Metadata service and N storage nodes run as separate processes on
//! loopback, each node in its own failure domain (`host=node-N`), each with
//! its own data directory and log file. Running it again on the same
//! directory resumes the same cluster.

use std::{
    fs::{self, File},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context};
use clap::Args;
use nix::{
    sys::signal::{kill, Signal},
    unistd::Pid,
};
use tessera_metadata::store::etcd_member::{store_url, EtcdMember, MemberAddr};
use tracing::{info, warn};

use crate::{runtime, signalled};

#[derive(Args)]
pub struct DevArgs {
    /// Directory holding the cluster's data and logs.
    #[arg(long)]
    data: PathBuf,
    /// Storage nodes to run.
    #[arg(long, default_value_t = 6)]
    nodes: u16,
    /// Port of the metadata service; node N listens on PORT+N.
    #[arg(long, default_value_t = 7400)]
    port: u16,
    /// Where the metadata lives: `rocksdb` (embedded, one machine) or
    /// `etcd` (a local 3-member etcd cluster, started beside the service,
    /// clients on PORT+101..103 and peers on PORT+201..203).
    #[arg(long, value_enum, default_value_t = DevStore::Rocksdb)]
    store: DevStore,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DevStore {
    Rocksdb,
    Etcd,
}

/// Starts the local etcd cluster of `tessera dev --store etcd`; returns
/// its members and the metadata service's `--store`.
fn start_etcd(data: &Path, logs: &Path, port: u16) -> anyhow::Result<(Vec<EtcdMember>, String)> {
    let addrs = (1..=3u16)
        .map(|i| {
            let at = |base: u16| port.checked_add(base + i).context("port out of range");
            Ok(MemberAddr {
                name: format!("etcd-{i}"),
                client_port: at(100)?,
                peer_port: at(200)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Members keep their peers' addresses in their data: a cluster made
    // with one --port only comes up again with it.
    let dir = data.join("etcd");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let recorded = dir.join("port");
    let made = addrs.iter().any(|a| dir.join(&a.name).exists());
    match fs::read_to_string(&recorded) {
        Ok(p) if made && !p.trim().is_empty() && p.trim() != port.to_string() => bail!(
            "the etcd members in {} were made with --port {}; run with that port",
            dir.display(),
            p.trim()
        ),
        _ => {}
    }
    let mut members = Vec::new();
    for i in 0..addrs.len() {
        let log = logs.join(format!("{}.log", addrs[i].name));
        let m = EtcdMember::start(&addrs, i, &dir, &log, true)
            .with_context(|| format!("starting {} (log: {})", addrs[i].name, log.display()))?;
        members.push(m);
    }
    let tmp = dir.join("port.tmp");
    fs::write(&tmp, port.to_string())
        .and_then(|()| fs::rename(&tmp, &recorded))
        .with_context(|| format!("writing {}", recorded.display()))?;
    Ok((members, store_url(&addrs, "tessera")))
}

struct Proc {
    name: String,
    child: Child,
}

fn spawn(name: &str, args: &[String], log: &Path) -> anyhow::Result<Proc> {
    let exe = std::env::current_exe().context("locating the tessera binary")?;
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Proc {
        name: name.to_string(),
        child,
    })
}

pub fn dev(a: DevArgs) -> anyhow::Result<()> {
    if a.nodes == 0 || a.nodes > 64 {
        bail!("--nodes must be 1..=64");
    }
    let logs = a.data.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let meta_addr = format!("127.0.0.1:{}", a.port);
    let (mut etcd, store) = match a.store {
        DevStore::Rocksdb => (
            Vec::new(),
            vec!["--data".into(), a.data.join("meta").display().to_string()],
        ),
        DevStore::Etcd => {
            let (members, url) = start_etcd(&a.data, &logs, a.port)?;
            println!("etcd:             {url}");
            (members, vec!["--store".into(), url])
        }
    };
    let mut procs = vec![spawn(
        "meta",
        &[
            vec!["meta".into(), "--listen".into(), meta_addr.clone()],
            store,
        ]
        .concat(),
        &logs.join("meta.log"),
    )?];
    for n in 1..=a.nodes {
        let port = a.port.checked_add(n).context("port out of range")?;
        procs.push(spawn(
            &format!("node-{n}"),
            &[
                "node".into(),
                "--data".into(),
                a.data.join(format!("node-{n}")).display().to_string(),
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--meta".into(),
                meta_addr.clone(),
                "--label".into(),
                format!("host=node-{n}"),
            ],
            &logs.join(format!("node-{n}.log")),
        )?);
    }
    println!("metadata service: {meta_addr}");
    println!(
        "storage nodes:    {} (127.0.0.1:{}..{})",
        a.nodes,
        a.port + 1,
        a.port + a.nodes
    );
    println!("logs:             {}", logs.display());
    println!("try: tessera volume create demo --size 10GiB --meta {meta_addr}");
    info!(meta = %meta_addr, nodes = a.nodes, "dev cluster running; Ctrl-C stops it");
    let rt = runtime()?;
    let died = rt.block_on(async {
        let watch = async {
            loop {
                for p in procs.iter_mut() {
                    if let Ok(Some(status)) = p.child.try_wait() {
                        return format!("{} exited: {status}", p.name);
                    }
                }
                for m in etcd.iter_mut() {
                    if let Some(status) = m.exited() {
                        return format!("{} exited: {status}", m.addr.name);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            _ = signalled() => None,
            why = watch => Some(why),
        }
    });
    stop(&mut procs);
    for m in etcd.iter_mut() {
        m.stop();
    }
    match died {
        Some(why) => bail!("{why}; stopped the cluster (see {})", logs.display()),
        None => Ok(()),
    }
}

/// SIGTERM everything, nodes first; SIGKILL what is still running after 10 s.
fn stop(procs: &mut [Proc]) {
    for p in procs.iter().rev() {
        let _ = kill(Pid::from_raw(p.child.id() as i32), Signal::SIGTERM);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for p in procs.iter_mut().rev() {
        loop {
            match p.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if std::time::Instant::now() > deadline => {
                    warn!(process = %p.name, "did not stop in time; killing");
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
