//! Volumes as clients see them: what creating one asks for and what the
//! metadata service reports of one.

use std::collections::BTreeMap;

use crate::{Protection, VolumeId};

/// A volume to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeSpec {
    pub name: String,
    /// Hard quota in bytes.
    pub size: u64,
    pub protection: Protection,
    pub labels: BTreeMap<String, String>,
    /// Shards that must be durable before a write is acknowledged; 0: the
    /// protection's default (K+1 when M >= 1).
    pub min_durable: u8,
}

/// A volume and how much of it is used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    pub protection: Protection,
    pub labels: BTreeMap<String, String>,
    pub created_ms: i64,
    /// The effective minimum of durable shards per write.
    pub min_durable: usize,
    pub used_bytes: u64,
    pub inodes: u64,
    /// The metadata service keeps inline blocks for this volume.
    pub inline_blocks: bool,
    /// The metadata service applies merges (`FileWrite::replaces`).
    pub merges: bool,
    /// The metadata service keeps inline blocks of up to `DEFERRED_MAX`
    /// bytes anywhere in a file (deferred writes), not only `INLINE_MAX`
    /// at its start.
    pub deferred_writes: bool,
}
