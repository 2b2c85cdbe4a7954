//! `tessera plugin docker`: Docker's volume plugin on a unix socket.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context;
use clap::{Args, Subcommand};
use tessera_common::{validate, Protection};
use tessera_volume_plugin::{
    docker::{self, DockerConfig, Driver},
    MountConfig, MountTable,
};

use crate::{runtime, signalled, MetaAddr};

#[derive(Args)]
pub struct PluginCommand {
    #[command(subcommand)]
    sub: PluginSub,
}

#[derive(Subcommand)]
enum PluginSub {
    /// Serve Docker's volume plugin protocol (`docker volume create -d tessera`).
    Docker(DockerArgs),
}

#[derive(Args)]
struct DockerArgs {
    /// Unix socket Docker finds the plugin at; its file name is the driver name.
    #[arg(long, env = "TESSERA_DOCKER_SOCKET", default_value = docker::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Mount points, mount logs and the mount reference counts.
    #[arg(
        long,
        env = "TESSERA_DOCKER_STATE",
        default_value = "/var/lib/tessera/docker"
    )]
    state_dir: PathBuf,
    /// Size of volumes created without `-o size=`.
    #[arg(long, default_value = "10GiB")]
    default_size: String,
    /// Protection of volumes created without `-o protection=`.
    #[arg(long, default_value = "ec:4+2")]
    default_protection: String,
    #[command(flatten)]
    meta: MetaAddr,
}

pub fn plugin(c: PluginCommand) -> anyhow::Result<()> {
    match c.sub {
        PluginSub::Docker(a) => docker_plugin(a),
    }
}

fn docker_plugin(a: DockerArgs) -> anyhow::Result<()> {
    let cfg = DockerConfig {
        meta: a.meta.meta.clone(),
        default_size: validate::volume_size(&a.default_size)?,
        default_protection: a.default_protection.parse::<Protection>()?,
    };
    let exe = std::env::current_exe().context("finding the tessera binary")?;
    let mounts = MountTable::open(MountConfig::new(a.state_dir.clone(), exe, a.meta.meta))
        .with_context(|| format!("opening plugin state in {}", a.state_dir.display()))?;
    runtime()?.block_on(async {
        // The driver's channel to the metadata service lives on this runtime.
        let driver = Arc::new(Driver::new(cfg, mounts)?);
        docker::serve(&a.socket, driver, signalled()).await
    })?;
    // Mounts stay: containers keep using them, and the next plugin process
    // adopts them from the state file.
    Ok(())
}
