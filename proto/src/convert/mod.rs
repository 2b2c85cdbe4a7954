//! Conversions between the wire (`pb`) and the domain types of
//! `tessera-common`, in both directions. A value from the wire is
//! validated once, here, by `TryFrom`; a domain value always converts.

mod cluster;
mod data;
mod fs;
mod volume;

use tessera_common::{Error, ShardKey};

use crate::pb;

/// Validates a shard key from the wire: present, index below 256.
pub fn shard_key(k: Option<pb::ShardKey>) -> Result<ShardKey, Error> {
    let k = k.ok_or_else(|| Error::invalid("shard key", "", "missing"))?;
    let index = u8::try_from(k.index)
        .map_err(|_| Error::invalid("shard index", k.index.to_string(), "above 255"))?;
    Ok(ShardKey {
        block: k.block,
        index,
    })
}

impl From<ShardKey> for pb::ShardKey {
    fn from(k: ShardKey) -> Self {
        pb::ShardKey {
            block: k.block,
            index: k.index.into(),
        }
    }
}

/// A count or index that must fit in a byte (shard indices, min_durable).
pub(crate) fn small(v: u32, what: &'static str) -> Result<u8, Error> {
    u8::try_from(v).map_err(|_| Error::invalid(what, v.to_string(), "out of range"))
}
