//! Slices, inline blocks, degraded blocks and file writes.

use tessera_common::{
    Attr, Commit, Committed, DegradedBlock, Error, FileSlices, FileWrite, InlineBlock, Slice,
};

use super::small;
use crate::pb;

impl From<Slice> for pb::Slice {
    fn from(s: Slice) -> Self {
        pb::Slice {
            offset: s.offset,
            len: s.len,
            block: s.block,
            block_offset: s.block_offset,
            block_len: s.block_len,
        }
    }
}

impl TryFrom<pb::Slice> for Slice {
    type Error = Error;

    fn try_from(s: pb::Slice) -> Result<Self, Error> {
        let s = Slice {
            offset: s.offset,
            len: s.len,
            block: s.block,
            block_offset: s.block_offset,
            block_len: s.block_len,
        };
        s.check()?;
        Ok(s)
    }
}

impl From<InlineBlock> for pb::InlineBlock {
    fn from(b: InlineBlock) -> Self {
        pb::InlineBlock {
            block: b.block,
            data: b.data,
        }
    }
}

impl TryFrom<pb::InlineBlock> for InlineBlock {
    type Error = Error;

    fn try_from(b: pb::InlineBlock) -> Result<Self, Error> {
        let b = InlineBlock {
            block: b.block,
            data: b.data,
        };
        b.check()?;
        Ok(b)
    }
}

impl From<DegradedBlock> for pb::DegradedBlock {
    fn from(d: DegradedBlock) -> Self {
        pb::DegradedBlock {
            block: d.block,
            block_len: d.block_len,
            missing: d.missing.into_iter().map(u32::from).collect(),
        }
    }
}

/// Checked against the volume's protection where it is known (the
/// metadata service's commit), not here.
impl TryFrom<pb::DegradedBlock> for DegradedBlock {
    type Error = Error;

    fn try_from(d: pb::DegradedBlock) -> Result<Self, Error> {
        Ok(DegradedBlock {
            block: d.block,
            block_len: d.block_len,
            missing: d
                .missing
                .into_iter()
                .map(|i| small(i, "shard index"))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl From<FileWrite> for pb::FileWrite {
    fn from(f: FileWrite) -> Self {
        pb::FileWrite {
            ino: f.ino,
            slices: f.slices.into_iter().map(Into::into).collect(),
            mtime_ns: f.mtime_ns,
            replaces: f.replaces.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::FileWrite> for FileWrite {
    type Error = Error;

    fn try_from(f: pb::FileWrite) -> Result<Self, Error> {
        Ok(FileWrite {
            ino: f.ino,
            slices: all(f.slices)?,
            mtime_ns: f.mtime_ns,
            replaces: all(f.replaces)?,
        })
    }
}

/// Converts every element, failing on the first that does not.
fn all<A, B: TryFrom<A, Error = Error>>(v: Vec<A>) -> Result<Vec<B>, Error> {
    v.into_iter().map(B::try_from).collect()
}

impl From<Commit> for pb::CommitWritesRequest {
    fn from(c: Commit) -> Self {
        pb::CommitWritesRequest {
            volume: c.vol,
            files: c.files.into_iter().map(Into::into).collect(),
            degraded: c.degraded.into_iter().map(Into::into).collect(),
            placement_epoch: c.placement_epoch,
            inline_blocks: c.inline.into_iter().map(Into::into).collect(),
            session: c.session,
        }
    }
}

impl TryFrom<pb::CommitWritesRequest> for Commit {
    type Error = Error;

    fn try_from(r: pb::CommitWritesRequest) -> Result<Self, Error> {
        Ok(Commit {
            vol: r.volume,
            files: all(r.files)?,
            degraded: all(r.degraded)?,
            inline: all(r.inline_blocks)?,
            placement_epoch: r.placement_epoch,
            session: r.session,
        })
    }
}

impl From<Committed> for pb::CommitWritesResponse {
    fn from(c: Committed) -> Self {
        pb::CommitWritesResponse {
            attrs: c.attrs.into_iter().map(Into::into).collect(),
            placement_epoch: c.placement_epoch,
        }
    }
}

impl TryFrom<pb::CommitWritesResponse> for Committed {
    type Error = Error;

    fn try_from(r: pb::CommitWritesResponse) -> Result<Self, Error> {
        Ok(Committed {
            attrs: all(r.attrs)?,
            placement_epoch: r.placement_epoch,
        })
    }
}

impl From<FileSlices> for pb::GetSlicesResponse {
    fn from(f: FileSlices) -> Self {
        pb::GetSlicesResponse {
            attr: Some(f.attr.into()),
            slices: f.slices.into_iter().map(Into::into).collect(),
            inline_blocks: f.inline.into_iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<pb::GetSlicesResponse> for FileSlices {
    type Error = Error;

    fn try_from(r: pb::GetSlicesResponse) -> Result<Self, Error> {
        let attr = r
            .attr
            .ok_or_else(|| Error::invalid("slices answer", "", "no attributes"))?;
        Ok(FileSlices {
            attr: Attr::try_from(attr)?,
            slices: all(r.slices)?,
            inline: all(r.inline_blocks)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_values_from_the_wire_are_refused() {
        let s = pb::Slice {
            offset: 0,
            len: 10,
            block: 3,
            block_offset: 0,
            block_len: 10,
        };
        assert!(Slice::try_from(s).is_ok());
        assert!(Slice::try_from(pb::Slice { len: 11, ..s }).is_err());
        let d = pb::DegradedBlock {
            block: 3,
            block_len: 10,
            missing: vec![300],
        };
        assert!(DegradedBlock::try_from(d).is_err());
        let b = pb::InlineBlock {
            block: 3,
            data: vec![1u8; 3].into(),
        };
        assert!(InlineBlock::try_from(b).is_err(), "no inline bit");
        let f = pb::FileWrite {
            ino: 2,
            slices: vec![s, pb::Slice { block: 0, ..s }],
            mtime_ns: 0,
            replaces: vec![],
        };
        assert!(FileWrite::try_from(f).is_err());
    }
}
