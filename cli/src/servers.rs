//! `tessera meta` and `tessera node`.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use tessera_metadata::{
    store::{EtcdTarget, StoreSpec},
    MetaConfig, MetaOptions,
};
use tessera_storage_node::NodeConfig;

use crate::{admin, runtime, signalled, MetaAddr};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct MetaCommand {
    #[command(subcommand)]
    sub: Option<MetaSub>,
    #[command(flatten)]
    run: MetaArgs,
}

#[derive(Subcommand)]
enum MetaSub {
    /// Copy a stopped cluster's whole metadata into an empty store of
    /// either kind (RocksDB onto etcd, or back), then check the copy.
    Migrate {
        /// Where it is now: the metadata service's `--data` directory, or
        /// etcd://HOST:PORT[,...]/PREFIX.
        #[arg(long)]
        from: String,
        /// Where it goes (must hold nothing): a directory, or
        /// etcd://HOST:PORT[,...]/PREFIX.
        #[arg(long)]
        to: String,
    },
    /// Copy the running metadata service's whole store, as of one moment,
    /// into a new directory (with a manifest: cluster id, time, key
    /// count, checksum). Writers carry on meanwhile.
    Backup {
        /// A directory that does not exist yet, or is empty.
        #[arg(long)]
        to: PathBuf,
        #[command(flatten)]
        meta: MetaAddr,
    },
    /// Load a backup into an empty store; start the metadata service on
    /// it afterwards. A damaged or foreign backup is refused before
    /// anything is written.
    Restore {
        /// The backup's directory.
        #[arg(long)]
        from: PathBuf,
        /// The new store: an embedded one in this directory ...
        #[arg(long, conflicts_with = "store")]
        data: Option<PathBuf>,
        /// ... or etcd://HOST:PORT[,...]/PREFIX.
        #[arg(long)]
        store: Option<String>,
    },
}

#[derive(Args)]
pub struct MetaArgs {
    /// Directory of the embedded metadata store (RocksDB, in `meta.db`).
    #[arg(long, env = "TESSERA_META_DATA")]
    data: Option<PathBuf>,
    /// Keep the metadata in etcd instead (`--data` is then unused):
    /// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX` (every key under PREFIX).
    #[arg(long, env = "TESSERA_META_STORE")]
    store: Option<String>,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:7400")]
    listen: SocketAddr,
    /// Seconds without a heartbeat before a node is reported down.
    #[arg(long, default_value_t = 10)]
    down_after_secs: u64,
    /// Milliseconds between garbage collection rounds (freeing the shards of
    /// removed volumes).
    #[arg(long, default_value_t = 5000)]
    gc_interval_ms: u64,
    /// Seconds a freed block's shards are kept before garbage collection
    /// deletes them. Set it longer than the time between metadata backups:
    /// a restore then finds every block its files name, even of files
    /// deleted or rewritten after the backup.
    #[arg(long, default_value_t = 0)]
    gc_delay_secs: u64,
    /// Milliseconds between repair rounds (rebuilding shards that writes
    /// could not store, once their node is up).
    #[arg(long, default_value_t = 2000)]
    repair_interval_ms: u64,
    /// Blocks repair rebuilds at the same time.
    #[arg(long, default_value_t = 16)]
    repair_concurrency: usize,
    /// Most bytes per second repair writes, e.g. 100MiB; 0: unlimited.
    #[arg(long, default_value = "0")]
    repair_bandwidth: String,
    /// Seconds without a heartbeat before a node is `out`: its placement
    /// groups move to other nodes and its shards are rebuilt there.
    #[arg(long, default_value_t = 600)]
    out_after_secs: u64,
    /// Seconds a file that lost its last name while a mount had it open
    /// lives after that mount stops renewing it (it died or lost us).
    #[arg(long, default_value_t = 600)]
    orphan_lease_secs: u64,
    /// Seconds a mount's advisory locks (fcntl, flock) last after it stops
    /// renewing them (it died or lost us); then other mounts may take them.
    #[arg(long, default_value_t = 30)]
    lock_lease_secs: u64,
}

pub fn meta(c: MetaCommand) -> anyhow::Result<()> {
    match c.sub {
        Some(MetaSub::Migrate { from, to }) => migrate(&from, &to),
        Some(MetaSub::Backup { to, meta }) => crate::backup::backup(&to, &meta),
        Some(MetaSub::Restore { from, data, store }) => {
            crate::backup::restore(&from, &store_spec(store, data)?)
        }
        None => serve_meta(c.run),
    }
}

fn migrate(from: &str, to: &str) -> anyhow::Result<()> {
    let parse = |s: &str| StoreSpec::parse(s).map_err(|e| anyhow::anyhow!(e));
    let (from, to) = (parse(from)?, parse(to)?);
    // Opening a RocksDB directory creates a store there: the source must
    // be one already.
    if let StoreSpec::Rocks(dir) = &from {
        if !dir.join("CURRENT").exists() {
            bail!("{} holds no metadata store", dir.display());
        }
    }
    let source = from
        .open()
        .with_context(|| format!("opening {from} (is a metadata service running on it?)"))?;
    let dest = to.open().with_context(|| format!("opening {to}"))?;
    let copied = tessera_metadata::store::copy::copy_all(source.as_ref(), dest.as_ref())
        .with_context(|| format!("copying {from} into {to}"))?;
    println!(
        "copied {} keys ({} bytes, CRC32 {:08x}) from {from} into {to}, and read them back the same",
        copied.keys, copied.bytes, copied.crc
    );
    Ok(())
}

/// The store `--store` or `--data` names.
fn store_spec(store: Option<String>, data: Option<PathBuf>) -> anyhow::Result<StoreSpec> {
    Ok(match (store, data) {
        (Some(url), _) => {
            StoreSpec::Etcd(EtcdTarget::parse(&url).map_err(|e| anyhow::anyhow!("--store: {e}"))?)
        }
        (None, Some(dir)) => StoreSpec::Rocks(dir.join("meta.db")),
        (None, None) => bail!("give --data DIR or --store etcd://..."),
    })
}

fn serve_meta(a: MetaArgs) -> anyhow::Result<()> {
    let config = MetaConfig {
        store: store_spec(a.store, a.data)?,
        listen: a.listen,
        options: MetaOptions {
            down_after: std::time::Duration::from_secs(a.down_after_secs),
            gc_interval: std::time::Duration::from_millis(a.gc_interval_ms),
            gc_delay: std::time::Duration::from_secs(a.gc_delay_secs),
            repair: tessera_metadata::repair::RepairOptions {
                interval: std::time::Duration::from_millis(a.repair_interval_ms),
                concurrency: a.repair_concurrency,
                bandwidth: tessera_common::validate::parse_size(&a.repair_bandwidth)
                    .context("--repair-bandwidth")?,
            },
            out_after: std::time::Duration::from_secs(a.out_after_secs),
            orphan_lease: std::time::Duration::from_secs(a.orphan_lease_secs),
            lock_lease: std::time::Duration::from_secs(a.lock_lease_secs.max(1)),
        },
    };
    runtime()?.block_on(tessera_metadata::run(config, signalled()))?;
    Ok(())
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct NodeCommand {
    #[command(subcommand)]
    ls: Option<NodeSub>,
    #[command(flatten)]
    run: NodeArgs,
}

#[derive(Subcommand)]
enum NodeSub {
    /// List storage nodes with their state, capacity and use.
    Ls(MetaAddr),
    /// Move every shard off a node (its placement groups go elsewhere).
    Drain {
        /// Node id, as `node ls` shows it.
        id: u64,
        #[command(flatten)]
        meta: MetaAddr,
    },
    /// Forget a drained node; refused while it holds anything still needed.
    Rm {
        /// Node id, as `node ls` shows it.
        id: u64,
        #[command(flatten)]
        meta: MetaAddr,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// Directory for this node's shards (required to run a node).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address to serve gRPC on, also what clients dial (required to run a node).
    #[arg(long)]
    listen: Option<SocketAddr>,
    #[command(flatten)]
    meta: MetaAddr,
    /// Failure-domain labels, e.g. `--label zone=a --label host=h1`.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Most bytes per second the scrubber reads to verify shards; 0 turns
    /// scrubbing off.
    #[arg(long, default_value = "32MiB")]
    scrub_bandwidth: String,
    /// Seconds between the end of one scrub pass and the next.
    #[arg(long, default_value_t = 86400)]
    scrub_interval_secs: u64,
    /// Seconds between checks for segment files that are mostly garbage
    /// (rewritten to give the space back); 0 turns compaction off.
    #[arg(long, default_value_t = 60)]
    compact_interval_secs: u64,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    if k.is_empty()
        || !k
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b))
    {
        return Err(format!(
            "label key {k:?} must be letters, digits, '_', '.', '-', '/'"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

pub fn node(c: NodeCommand) -> anyhow::Result<()> {
    let a = c.run;
    match (c.ls, a.data, a.listen) {
        (Some(NodeSub::Ls(m)), _, _) => admin::node_ls(&m),
        (Some(NodeSub::Drain { id, meta }), _, _) => admin::node_drain(id, &meta),
        (Some(NodeSub::Rm { id, meta }), _, _) => admin::node_rm(id, &meta),
        (None, Some(data_dir), Some(listen)) => {
            let config = NodeConfig {
                data_dir,
                listen,
                meta: a.meta.meta,
                labels: a.labels.into_iter().collect::<BTreeMap<_, _>>(),
                scrub: tessera_storage_node::ScrubConfig {
                    bandwidth: tessera_common::validate::parse_size(&a.scrub_bandwidth)
                        .context("--scrub-bandwidth")?,
                    interval: std::time::Duration::from_secs(a.scrub_interval_secs),
                },
                compact: tessera_storage_node::CompactConfig {
                    interval: std::time::Duration::from_secs(a.compact_interval_secs),
                    ..Default::default()
                },
            };
            runtime()?
                .block_on(tessera_storage_node::run(config, signalled()))
                .context("storage node")?;
            Ok(())
        }
        _ => {
            bail!("usage: tessera node --data DIR --listen ADDR [--meta ADDR] | tessera node ls")
        }
    }
}
