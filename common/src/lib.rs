//! Shared vocabulary of every Tessera crate: ids, the protection class, the
//! erasure codec, CRC helpers, placement, input validation, and the domain
//! types every crate speaks (file tree, slices, volumes, cluster), which
//! `tessera-proto` converts to and from the wire.
//!
//! This crate depends on no other Tessera crate and does no I/O.

pub mod cluster;
pub mod codec;
pub mod data;
pub mod error;
pub mod extents;
pub mod fs;
pub mod ids;
pub mod locks;
pub mod pace;
pub mod placement;
pub mod protection;
pub mod units;
pub mod validate;
pub mod volume;

pub use cluster::{ClusterStatus, Membership, NodeInfo, PlacementTable};
pub use codec::Codec;
pub use data::{Commit, Committed, DegradedBlock, FileSlices, FileWrite, InlineBlock, Slice};
pub use error::{Error, Result};
pub use fs::{Attr, DirEntry, FileKind, NamePage, NewNode, SetAttr, StatFs, MAX_FILE_SIZE};
pub use ids::{is_inline, BlockId, Ino, NodeId, ShardKey, VolumeId, INLINE_BIT, ROOT_INO};
pub use protection::Protection;
pub use volume::{VolumeInfo, VolumeSpec};

/// Largest block (one stripe before encoding).
pub const MAX_BLOCK: usize = 4 << 20;

/// What a flush leaves in a file's first `INLINE_MAX` bytes (all of a
/// tiny file) is kept in the metadata service as an inline block, with the
/// slices that point at it, instead of as a stripe on storage nodes
/// (ARCHITECTURE.md, "Write path"; docs/BENCHMARKS.md).
pub const INLINE_MAX: usize = 4 << 10;

/// Largest inline block. A flush of at most this many bytes anywhere in a
/// file (a database's commit) is a deferred write: an inline block, made
/// durable by the commit alone, later moved to the storage nodes
/// (ARCHITECTURE.md, "Deferred writes").
pub const DEFERRED_MAX: usize = 64 << 10;

/// Bytes of a file covered by one chunk (the unit slices are listed by).
pub const CHUNK_SIZE: u64 = 64 << 20;

/// Number of placement groups per protection class.
pub const PG_COUNT: u32 = 128;

/// CRC32 (IEEE) of `data`.
pub fn crc32(data: &[u8]) -> u32 {
    crc32fast::hash(data)
}
