//! `tessera`: one binary for every Tessera process. Each subcommand only
//! parses flags and wires the library crates together.

mod admin;
mod backup;
mod dev;
mod mount;
mod plugin;
mod servers;

use clap::{Parser, Subcommand};

/// Distributed, erasure-coded storage for containers.
#[derive(Parser)]
#[command(name = "tessera", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the metadata service, or back up, restore or move its store.
    Meta(servers::MetaCommand),
    /// Run a storage node, or list the cluster's nodes (`node ls`).
    Node(servers::NodeCommand),
    /// Create, list, inspect and remove volumes.
    Volume(admin::VolumeCommand),
    /// Mount a volume with FUSE (foreground, until unmounted or signalled).
    Mount(mount::MountArgs),
    /// Run a whole cluster on this machine: metadata + N storage nodes.
    Dev(dev::DevArgs),
    /// Serve a container runtime's volume plugin protocol.
    Plugin(plugin::PluginCommand),
    /// Cluster-wide state: nodes, repair and garbage collection queues.
    Cluster(admin::ClusterCommand),
}

fn main() -> std::process::ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TESSERA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Meta(a) => servers::meta(a),
        Command::Node(c) => servers::node(c),
        Command::Volume(c) => admin::volume(c),
        Command::Mount(a) => mount::mount(a),
        Command::Dev(a) => dev::dev(a),
        Command::Plugin(c) => plugin::plugin(c),
        Command::Cluster(c) => admin::cluster(c),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tessera: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// glibc gives threads that allocate at the same time arenas of their own
/// (up to 8 per core) and keeps what is freed in an arena for that arena.
/// A mount allocates 4 MiB blocks on one thread and frees them on another,
/// so every arena kept its own stock: 310 MiB resident after a 2 GiB
/// write, against 155 MiB with two arenas, at the same speed.
fn limit_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: sets one allocator parameter, before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// A tokio runtime for one command.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Resolves on SIGINT or SIGTERM.
pub(crate) async fn signalled() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// `--meta ADDR`, shared by every command that talks to the metadata service.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct MetaAddr {
    /// Address of the metadata service.
    #[arg(long = "meta", env = "TESSERA_META", default_value = "127.0.0.1:7400")]
    pub meta: String,
}
