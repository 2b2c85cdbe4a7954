//! Admin commands: `tessera volume ...`, `tessera node ls/drain/rm` and
//! `tessera cluster status`.

use anyhow::Context;
use clap::{Args, Subcommand};
use tessera_client::MetaClient;
use tessera_common::{units::human_bytes as human, validate, NodeInfo, VolumeInfo, VolumeSpec};

use crate::{runtime, MetaAddr};

#[derive(Args)]
pub struct VolumeCommand {
    #[command(subcommand)]
    sub: VolumeSub,
}

#[derive(Subcommand)]
enum VolumeSub {
    /// Create a volume.
    Create {
        /// Volume name: [a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}.
        name: String,
        /// Size (hard quota), with binary units: 512MiB, 10GiB.
        #[arg(long)]
        size: String,
        /// `ec:K+M` (Reed–Solomon) or `replica:N`.
        #[arg(long, default_value = "ec:4+2")]
        protection: String,
        /// Shards that must be durable before a write is acknowledged
        /// (default K+1; never below K+1 when M >= 2).
        #[arg(long)]
        min_durable: Option<u8>,
        #[command(flatten)]
        meta: MetaAddr,
    },
    /// List volumes.
    Ls {
        #[command(flatten)]
        meta: MetaAddr,
    },
    /// Show one volume.
    Inspect {
        name: String,
        #[command(flatten)]
        meta: MetaAddr,
    },
    /// Delete a volume and all its data.
    Rm {
        name: String,
        #[command(flatten)]
        meta: MetaAddr,
    },
}

fn print_volume(v: &VolumeInfo) {
    println!("name:        {}", v.name);
    println!("id:          {}", v.id);
    println!("size:        {} ({} bytes)", human(v.size), v.size);
    println!(
        "used:        {} ({} bytes)",
        human(v.used_bytes),
        v.used_bytes
    );
    println!("inodes:      {}", v.inodes);
    println!("protection:  {}", v.protection);
    println!("min_durable: {}", v.min_durable);
    println!("created_ms:  {}", v.created_ms);
}

/// Runs `f` with a connection to the metadata service.
fn with_meta<T>(
    meta: &MetaAddr,
    f: impl AsyncFnOnce(MetaClient) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    runtime()?.block_on(async {
        let m = MetaClient::connect(&meta.meta).await?;
        f(m).await
    })
}

pub fn volume(c: VolumeCommand) -> anyhow::Result<()> {
    match c.sub {
        VolumeSub::Create {
            name,
            size,
            protection,
            min_durable,
            meta,
        } => {
            // Validate locally first for a clear message; the service
            // validates again.
            validate::volume_name(&name)?;
            let size = validate::volume_size(&size)?;
            let protection = protection.parse::<tessera_common::Protection>()?;
            if let Some(n) = min_durable {
                protection.check_min_durable(n.into())?;
            }
            let spec = VolumeSpec {
                name: name.clone(),
                size,
                protection,
                labels: Default::default(),
                min_durable: min_durable.unwrap_or(0),
            };
            let v = with_meta(&meta, async |m| {
                m.create_volume(spec)
                    .await
                    .with_context(|| format!("creating volume {name}"))
            })?;
            println!(
                "created volume {} ({}, {})",
                v.name,
                human(v.size),
                v.protection
            );
        }
        VolumeSub::Ls { meta } => {
            let list = with_meta(&meta, async |m| Ok(m.volumes().await?))?;
            println!(
                "{:<24} {:>10} {:>10} {:>9} {:<12}",
                "NAME", "SIZE", "USED", "INODES", "PROTECTION"
            );
            for v in list {
                println!(
                    "{:<24} {:>10} {:>10} {:>9} {:<12}",
                    v.name,
                    human(v.size),
                    human(v.used_bytes),
                    v.inodes,
                    v.protection.to_string()
                );
            }
        }
        VolumeSub::Inspect { name, meta } => {
            let v = with_meta(&meta, async |m| {
                m.volume(&name)
                    .await
                    .with_context(|| format!("volume {name}"))
            })?;
            print_volume(&v);
        }
        VolumeSub::Rm { name, meta } => {
            with_meta(&meta, async |m| {
                m.delete_volume(&name)
                    .await
                    .with_context(|| format!("removing volume {name}"))
            })?;
            println!("removed volume {name}");
        }
    }
    Ok(())
}

async fn list_nodes(m: &MetaClient) -> anyhow::Result<Vec<NodeInfo>> {
    m.nodes().await.context("listing nodes")
}

pub fn node_ls(meta: &MetaAddr) -> anyhow::Result<()> {
    let nodes = with_meta(meta, async |m| list_nodes(&m).await)?;
    println!(
        "{:<4} {:<22} {:<6} {:>10} {:>10} {:>8} {:<}",
        "ID", "ADDRESS", "STATE", "CAPACITY", "USED", "SHARDS", "LABELS"
    );
    for n in nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<4} {:<22} {:<6} {:>10} {:>10} {:>8} {}",
            n.id,
            n.addr,
            n.state(),
            human(n.capacity_bytes),
            human(n.used_bytes),
            n.shards,
            labels.join(",")
        );
    }
    Ok(())
}

pub fn node_drain(id: u64, meta: &MetaAddr) -> anyhow::Result<()> {
    let moved = with_meta(meta, async |m| {
        m.drain_node(id)
            .await
            .with_context(|| format!("draining node {id}"))
    })?;
    println!(
        "draining node {id}: {moved} placement slots moved; `tessera cluster status` shows the copy"
    );
    Ok(())
}

pub fn node_rm(id: u64, meta: &MetaAddr) -> anyhow::Result<()> {
    with_meta(meta, async |m| {
        m.remove_node(id)
            .await
            .with_context(|| format!("removing node {id}"))
    })?;
    println!("removed node {id}");
    Ok(())
}

#[derive(Args)]
pub struct ClusterCommand {
    #[command(subcommand)]
    sub: ClusterSub,
}

#[derive(Subcommand)]
enum ClusterSub {
    /// Nodes up and down, the repair queue and the garbage collection queue.
    Status {
        #[command(flatten)]
        meta: MetaAddr,
    },
}

pub fn cluster(c: ClusterCommand) -> anyhow::Result<()> {
    let ClusterSub::Status { meta } = c.sub;
    let (nodes, s) = with_meta(&meta, async |m| {
        let nodes = list_nodes(&m).await?;
        let s = m
            .cluster_status()
            .await
            .context("reading the cluster status")?;
        Ok((nodes, s))
    })?;
    let up = nodes.iter().filter(|n| n.state() == "up").count();
    println!("nodes:       {up} up, {} down", nodes.len() - up);
    println!(
        "repair:      {} shards waiting, {} ({} bytes), in {} blocks",
        s.repair_shards,
        human(s.repair_bytes),
        s.repair_bytes,
        s.repair_blocks
    );
    if s.repair_bytes > 0 {
        let eta = match s.repair_rate {
            0 => "unknown".to_string(),
            r => format!("{}s", s.repair_bytes.div_ceil(r)),
        };
        println!("rate:        {}/s, done in {eta}", human(s.repair_rate));
    }
    println!(
        "repaired:    {} shards, {} ({} bytes), since the metadata service started",
        s.repaired_shards,
        human(s.repaired_bytes),
        s.repaired_bytes
    );
    println!(
        "corrupt:     {} shards reported since the metadata service started",
        s.corrupt_reported
    );
    println!(
        "gc:          {} blocks waiting, {} removed files being released",
        s.gc_blocks, s.releasing_files
    );
    Ok(())
}
