//! Errors of the plugins. The Docker protocol carries them as the `Err`
//! string, so every variant names the object that failed.

use std::{io, path::PathBuf};

pub type Result<T, E = PluginError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{0}")]
    Invalid(String),
    #[error("volume {0} does not exist")]
    NoSuchVolume(String),
    #[error("volume {name} is in use by {mounts} mount(s) on this host")]
    InUse { name: String, mounts: usize },
    #[error("cannot reach the metadata service at {addr}: {why}")]
    Unreachable { addr: String, why: String },
    #[error("metadata service: {0}")]
    Meta(String),
    #[error("mounting volume {name} on {dir}: {why}")]
    Mount {
        name: String,
        dir: PathBuf,
        why: String,
    },
    #[error("unmounting volume {name} from {dir}: {why}")]
    Unmount {
        name: String,
        dir: PathBuf,
        why: String,
    },
    #[error("plugin state {path}: {why}")]
    State { path: PathBuf, why: String },
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
}

impl PluginError {
    pub(crate) fn io(what: impl Into<String>, err: io::Error) -> Self {
        PluginError::Io {
            what: what.into(),
            err,
        }
    }
}

impl From<tessera_common::Error> for PluginError {
    fn from(e: tessera_common::Error) -> Self {
        PluginError::Invalid(e.to_string())
    }
}
