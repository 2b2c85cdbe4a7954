//! The FUSE file system: a thin `fuser::Filesystem` adapter over
//! `tessera_client::Volume`. Each method parses its arguments, calls one
//! client function, and maps the error to an errno. The kernel's questions
//! the mount answers itself (directory attributes after a create, an open
//! file's capabilities and set-ID bits) are kept here, not in the client.
//!
//! Depends on tessera-client only (plus tessera-common for ids).

mod attr;
mod caps;
mod dir_attrs;
mod dirs;
mod fs;
mod locks;
mod set_ids;
mod state;

use std::{io, path::Path};

pub use fuser::BackgroundSession;
use fuser::{Config, MountOption, SessionACL};
use tessera_client::Volume;

pub use crate::state::TesseraFs;

/// How a volume is mounted.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE worker threads serving requests concurrently.
    pub threads: usize,
    /// Let other users (and containers of other uids) use the mount.
    pub allow_other: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            threads: 8,
            allow_other: true,
        }
    }
}

/// Mounts `volume` at `dir`; the mount lives until the returned session is
/// unmounted or dropped, or the mount point is unmounted from outside.
pub fn mount(volume: Volume, dir: &Path, options: &MountOptions) -> io::Result<BackgroundSession> {
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("tessera:{}", volume.name())),
        MountOption::Subtype("tessera".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
    ];
    if options.allow_other {
        config.acl = SessionACL::All;
    }
    config.n_threads = Some(options.threads.max(1));
    config.clone_fd = true;
    let vol = volume.clone();
    let session = fuser::spawn_mount(TesseraFs::new(volume), dir, &config)?;
    let kernel = session.notifier();
    vol.set_page_dropper(Box::new(move |ino| locks::drop_cached_pages(&kernel, ino)));
    Ok(session)
}
