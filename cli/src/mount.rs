//! `tessera mount NAME DIR`: serve a volume with FUSE in the foreground
//! until the mount point is unmounted or the process is signalled; on a
//! signal, buffered writes are flushed before unmounting.

use std::{path::PathBuf, time::Duration};

use anyhow::Context;
use clap::Args;
use tessera_client::{Volume, VolumeOptions};
use tessera_common::validate;
use tracing::info;

use crate::{runtime, signalled, MetaAddr};

#[derive(Args)]
pub struct MountArgs {
    /// Volume to mount.
    name: String,
    /// Empty directory to mount it on.
    dir: PathBuf,
    #[command(flatten)]
    meta: MetaAddr,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 8)]
    threads: usize,
}

pub fn mount(a: MountArgs) -> anyhow::Result<()> {
    validate::volume_name(&a.name)?;
    let rt = runtime()?;
    let vol = rt
        .block_on(Volume::open(
            &a.meta.meta,
            &a.name,
            VolumeOptions::default(),
        ))
        .with_context(|| format!("opening volume {}", a.name))?;
    let options = tessera_fuse::MountOptions {
        threads: a.threads,
        ..Default::default()
    };
    let session = tessera_fuse::mount(vol.clone(), &a.dir, &options)
        .with_context(|| format!("mounting {} on {}", a.name, a.dir.display()))?;
    info!(volume = %a.name, dir = %a.dir.display(), "mounted");
    println!("mounted {} on {}", a.name, a.dir.display());
    let unmounted_outside = rt.block_on(async {
        let watch = async {
            while !session.guard.is_finished() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::select! {
            _ = signalled() => false,
            _ = watch => true,
        }
    });
    if unmounted_outside {
        info!(volume = %a.name, "unmounted");
        session.join().context("FUSE session")?;
    } else {
        info!(volume = %a.name, "signalled: flushing and unmounting");
        // Unmount even if the flush failed: the process ends either way,
        // and a mount left behind would only answer "transport endpoint
        // is not connected".
        let flushed = vol.flush_for_unmount();
        session.umount_and_join().context("unmounting")?;
        flushed.context("flushing buffered writes")?;
    }
    Ok(())
}
