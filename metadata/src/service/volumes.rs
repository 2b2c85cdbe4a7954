//! Handlers of the volume calls.

use tessera_common::VolumeSpec;
use tessera_proto::pb;

use crate::{records::VolumeRecord, Meta, MetaError};

type Result<T> = std::result::Result<T, MetaError>;

fn volume(m: &Meta, v: VolumeRecord) -> Result<pb::Volume> {
    Ok(m.volumes().info(v)?.into())
}

pub(super) fn create_volume(m: &Meta, r: pb::CreateVolumeRequest) -> Result<pb::Volume> {
    let spec = VolumeSpec::try_from(r)?;
    volume(m, m.volumes().create(&spec)?)
}

pub(super) fn get_volume(m: &Meta, r: pb::GetVolumeRequest) -> Result<pb::Volume> {
    volume(m, m.volumes().get(&r.name)?)
}

pub(super) fn list_volumes(m: &Meta, _: pb::ListVolumesRequest) -> Result<pb::ListVolumesResponse> {
    let volumes = m
        .volumes()
        .list()?
        .into_iter()
        .map(|v| volume(m, v))
        .collect::<Result<_>>()?;
    Ok(pb::ListVolumesResponse { volumes })
}

pub(super) fn delete_volume(
    m: &Meta,
    r: pb::DeleteVolumeRequest,
) -> Result<pb::DeleteVolumeResponse> {
    m.volumes().delete(&r.name)?;
    Ok(pb::DeleteVolumeResponse {})
}

pub(super) fn stat_fs(m: &Meta, r: pb::StatFsRequest) -> Result<pb::StatFsResponse> {
    let s = m.volumes().stat_fs(r.volume)?;
    Ok(pb::StatFsResponse {
        size_bytes: s.size,
        used_bytes: s.used,
        inodes: s.inodes,
    })
}
