//! Admin commands: `tessera volume ...` and `tessera node ls`.

use anyhow::Context;
use clap::{Args, Subcommand};
use tessera_client::connect_meta;
use tessera_common::validate;
use tessera_proto::pb;

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

use tessera_common::units::human_bytes as human;

fn print_volume(v: &pb::Volume) {
    println!("name:        {}", v.name);
    println!("id:          {}", v.id);
    println!(
        "size:        {} ({} bytes)",
        human(v.size_bytes),
        v.size_bytes
    );
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

pub fn volume(c: VolumeCommand) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
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
                let size_bytes = validate::volume_size(&size)?;
                let p = protection.parse::<tessera_common::Protection>()?;
                if let Some(n) = min_durable {
                    p.check_min_durable(n.into())?;
                }
                let mut m = connect_meta(&meta.meta).await?;
                let v = m
                    .create_volume(pb::CreateVolumeRequest {
                        name: name.clone(),
                        size_bytes,
                        protection,
                        labels: Default::default(),
                        min_durable: min_durable.unwrap_or(0).into(),
                    })
                    .await
                    .map_err(|s| anyhow::anyhow!("creating volume {name}: {}", s.message()))?
                    .into_inner();
                println!(
                    "created volume {} ({}, {})",
                    v.name,
                    human(v.size_bytes),
                    v.protection
                );
            }
            VolumeSub::Ls { meta } => {
                let mut m = connect_meta(&meta.meta).await?;
                let list = m
                    .list_volumes(pb::ListVolumesRequest {})
                    .await?
                    .into_inner();
                println!(
                    "{:<24} {:>10} {:>10} {:>9} {:<12}",
                    "NAME", "SIZE", "USED", "INODES", "PROTECTION"
                );
                for v in list.volumes {
                    println!(
                        "{:<24} {:>10} {:>10} {:>9} {:<12}",
                        v.name,
                        human(v.size_bytes),
                        human(v.used_bytes),
                        v.inodes,
                        v.protection
                    );
                }
            }
            VolumeSub::Inspect { name, meta } => {
                let mut m = connect_meta(&meta.meta).await?;
                let v = m
                    .get_volume(pb::GetVolumeRequest { name: name.clone() })
                    .await
                    .map_err(|s| anyhow::anyhow!("volume {name}: {}", s.message()))?
                    .into_inner();
                print_volume(&v);
            }
            VolumeSub::Rm { name, meta } => {
                let mut m = connect_meta(&meta.meta).await?;
                m.delete_volume(pb::DeleteVolumeRequest { name: name.clone() })
                    .await
                    .map_err(|s| anyhow::anyhow!("removing volume {name}: {}", s.message()))?;
                println!("removed volume {name}");
            }
        }
        Ok(())
    })
}

async fn list_nodes(m: &mut tessera_client::MetaConn) -> anyhow::Result<Vec<pb::NodeInfo>> {
    Ok(m.list_nodes(pb::ListNodesRequest {})
        .await
        .context("listing nodes")?
        .into_inner()
        .nodes)
}

pub fn node_ls(meta: &MetaAddr) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut m = connect_meta(&meta.meta).await?;
        let nodes = list_nodes(&mut m).await?;
        println!(
            "{:<4} {:<22} {:<6} {:>10} {:>10} {:>8} {:<}",
            "ID", "ADDRESS", "STATE", "CAPACITY", "USED", "SHARDS", "LABELS"
        );
        for n in nodes {
            let mut labels: Vec<String> =
                n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            println!(
                "{:<4} {:<22} {:<6} {:>10} {:>10} {:>8} {}",
                n.id,
                n.addr,
                n.state,
                human(n.capacity_bytes),
                human(n.used_bytes),
                n.shard_count,
                labels.join(",")
            );
        }
        Ok(())
    })
}

pub fn node_drain(id: u64, meta: &MetaAddr) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut m = connect_meta(&meta.meta).await?;
        let r = m
            .drain_node(pb::NodeIdRequest { id })
            .await
            .map_err(|s| anyhow::anyhow!("draining node {id}: {}", s.message()))?
            .into_inner();
        println!(
            "draining node {id}: {} placement slots moved; `tessera cluster status` shows the copy",
            r.moved_slots
        );
        Ok(())
    })
}

pub fn node_rm(id: u64, meta: &MetaAddr) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut m = connect_meta(&meta.meta).await?;
        m.remove_node(pb::NodeIdRequest { id })
            .await
            .map_err(|s| anyhow::anyhow!("removing node {id}: {}", s.message()))?;
        println!("removed node {id}");
        Ok(())
    })
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
    runtime()?.block_on(async {
        let mut m = connect_meta(&meta.meta).await?;
        let nodes = list_nodes(&mut m).await?;
        let s = m
            .cluster_status(pb::ClusterStatusRequest {})
            .await
            .context("reading the cluster status")?
            .into_inner();
        let up = nodes.iter().filter(|n| n.state == "up").count();
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
        println!("gc:          {} blocks waiting", s.gc_blocks);
        Ok(())
    })
}
