//! Hands Tessera volumes to container runtimes.
//!
//! - [`mounts`]: the host's FUSE mounts of volumes, one per volume, shared by
//!   every container that uses it and reference-counted by caller id. Mount
//!   processes are separate `tessera mount` processes in their own session,
//!   and the reference counts live in a versioned state file, so killing or
//!   upgrading the plugin never breaks a running container's volume.
//! - [`docker`]: Docker's volume plugin protocol (JSON over HTTP on a unix
//!   socket) on top of those mounts and the metadata service.
//!
//! Depends on tessera-client and tessera-common; never on server crates
//! or on the wire (`tessera-proto`).

pub mod docker;
mod error;
pub mod mounts;
mod state;

pub use error::{PluginError, Result};
pub use mounts::{MountConfig, MountTable};
