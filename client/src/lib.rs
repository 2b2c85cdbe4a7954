//! Tessera's data path, shared by the FUSE mount, the plugins and the CLI:
//! metadata calls, placement, stripe writes with a per-file write buffer,
//! systematic and degraded reads.
//!
//! Depends on tessera-common and tessera-proto; never on server crates.

mod blocks;
mod cache;
mod dir_attrs;
mod error;
mod lean;
mod local;
mod meta;
mod node_link;
mod nodes;
mod stripe;
mod volume;
mod write;

pub use dir_attrs::TTL as ATTR_TTL;
pub use error::{ClientError, Result};
pub use meta::{connect_meta, MetaConn};
pub use tessera_proto::FileKind;
pub use volume::{Attr, DirEntry, Volume, VolumeOptions};
