//! Tessera's storage node: the shard store on disk (append-only segment
//! files with per-record CRCs, a RocksDB index rebuilt from them, group
//! commit), its `Node` gRPC service, and registration plus heartbeats to the
//! metadata service. The disk format is described in FORMAT.md.
//!
//! Depends on tessera-common and tessera-proto only; never on the client or
//! metadata crates.

mod aligned;
pub mod compactor;
pub mod error;
pub mod format;
pub mod heartbeat;
pub mod index;
pub mod keys;
mod lean;
mod locks;
mod node_id;
mod recover;
pub mod run;
pub mod scrub;
pub mod segment;
pub mod service;
pub mod store;

pub use compactor::CompactConfig;
pub use error::{Error, Result};
pub use run::{run, NodeConfig};
pub use scrub::ScrubConfig;
pub use service::NodeService;
pub use store::{PutOutcome, ShardData, ShardInfo, ShardStore, StoreOptions, StoreStat};
