//! Tessera's data path, shared by the FUSE mount, the plugins and the CLI:
//! the metadata service's calls in domain types (`meta/`), placement and
//! links to storage nodes, stripe writes from a per-file write buffer
//! (`write/`), systematic and degraded reads (`read/`).
//!
//! Depends on tessera-common and tessera-proto; never on server crates.

mod blocks;
mod error;
mod meta;
mod node_link;
mod nodes;
mod read;
mod stripe;
mod volume;
mod write;

pub use error::{ClientError, Result};
pub use meta::{names::Made, BackupEnd, BackupPage, MetaClient};
pub use volume::{LockAsk, Locked, PageDropper, Volume, VolumeOptions};
