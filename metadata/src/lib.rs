//! Tessera's metadata service: the `MetaStore` trait with its RocksDB (and
//! in-memory test) backends, and over it the cluster map, volumes, and every
//! volume's file tree, served over gRPC.
//!
//! Depends on tessera-common and tessera-proto only; never on the client or
//! storage-node crates.

pub mod blocks;
mod cluster;
mod error;
pub mod fs;
pub mod gc;
mod ids;
pub mod keys;
pub(crate) mod lean;
mod membership;
mod meta;
mod node_clients;
pub mod rebalance;
pub mod records;
pub mod repair;
mod run;
mod service;
pub mod store;
pub mod volumes;

pub use cluster::{NodeState, NodeView};
pub use error::{MetaError, Result};
pub use membership::Membership;
pub use meta::{Meta, MetaOptions};
pub use run::{run, MetaConfig};
pub use service::MetaService;
