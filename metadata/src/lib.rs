//! Tessera's metadata service: the `MetaStore` trait with its RocksDB (and
//! in-memory test) backends, and over it the cluster map, volumes, and every
//! volume's file tree, served over gRPC and lean RPC.
//!
//! [`Meta`] is the way in: one handle per domain (`meta.tree()`,
//! `meta.files()`, `meta.volumes()`, `meta.cluster()`, `meta.repair()`,
//! `meta.gc()`), one entry point per operation. `service/` is the only
//! place that speaks the wire.
//!
//! Depends on tessera-common and tessera-proto only; never on the client or
//! storage-node crates.

mod background;
pub mod backup;
pub mod blocks;
pub mod cluster;
pub mod data;
mod error;
pub mod fs;
pub mod gc;
mod ids;
pub mod keys;
mod meta;
mod node_clients;
pub mod records;
pub mod repair;
mod run;
mod service;
pub mod store;
#[cfg(test)]
mod testing;
pub mod volumes;

pub use error::{MetaError, Result};
pub use meta::{Meta, MetaOptions};
pub use run::{run, MetaConfig};
pub use service::{MetaService, Serving};
