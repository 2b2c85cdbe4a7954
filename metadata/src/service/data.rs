//! Handlers of the file data calls: block ids, slices, commits.

use tessera_common::Commit;
use tessera_proto::pb;

use crate::{Meta, MetaError};

type Result<T> = std::result::Result<T, MetaError>;

pub(super) fn alloc_blocks(m: &Meta, r: pb::AllocBlocksRequest) -> Result<pb::AllocBlocksResponse> {
    Ok(pb::AllocBlocksResponse {
        first: m.files().alloc_blocks(r.count)?,
        count: r.count,
    })
}

pub(super) fn get_slices(m: &Meta, r: pb::GetSlicesRequest) -> Result<pb::GetSlicesResponse> {
    Ok(m.files().read(r.volume, r.ino)?.into())
}

pub(super) fn commit_writes(
    m: &Meta,
    r: pb::CommitWritesRequest,
) -> Result<pb::CommitWritesResponse> {
    Ok(m.files().commit(&Commit::try_from(r)?)?.into())
}
