//! Volumes.

use tessera_common::{Error, Protection, VolumeInfo, VolumeSpec};

use super::small;
use crate::pb;

impl From<VolumeInfo> for pb::Volume {
    fn from(v: VolumeInfo) -> Self {
        pb::Volume {
            id: v.id,
            name: v.name,
            size_bytes: v.size,
            protection: v.protection.to_string(),
            used_bytes: v.used_bytes,
            inodes: v.inodes,
            created_ms: v.created_ms,
            labels: v.labels.into_iter().collect(),
            min_durable: v.min_durable as u32,
            inline_blocks: v.inline_blocks,
            merges: v.merges,
            deferred_writes: v.deferred_writes,
        }
    }
}

impl TryFrom<pb::Volume> for VolumeInfo {
    type Error = Error;

    fn try_from(v: pb::Volume) -> Result<Self, Error> {
        let protection: Protection = v.protection.parse()?;
        Ok(VolumeInfo {
            id: v.id,
            name: v.name,
            size: v.size_bytes,
            protection,
            labels: v.labels.into_iter().collect(),
            created_ms: v.created_ms,
            min_durable: match v.min_durable {
                0 => protection.min_durable(),
                n => n as usize,
            },
            used_bytes: v.used_bytes,
            inodes: v.inodes,
            inline_blocks: v.inline_blocks,
            merges: v.merges,
            deferred_writes: v.deferred_writes,
        })
    }
}

impl From<VolumeSpec> for pb::CreateVolumeRequest {
    fn from(s: VolumeSpec) -> Self {
        pb::CreateVolumeRequest {
            name: s.name,
            size_bytes: s.size,
            protection: s.protection.to_string(),
            labels: s.labels.into_iter().collect(),
            min_durable: s.min_durable.into(),
        }
    }
}

impl TryFrom<pb::CreateVolumeRequest> for VolumeSpec {
    type Error = Error;

    fn try_from(r: pb::CreateVolumeRequest) -> Result<Self, Error> {
        Ok(VolumeSpec {
            name: r.name,
            size: r.size_bytes,
            protection: r.protection.parse()?,
            labels: r.labels.into_iter().collect(),
            min_durable: small(r.min_durable, "min_durable")?,
        })
    }
}
