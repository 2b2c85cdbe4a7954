//! Domain views of wire values, validated once on the receiving side.

use tessera_common::{Error, ShardKey};

use crate::pb;

/// Largest gRPC message either side accepts: a 4 MiB replica shard plus
/// framing, or a large slice list.
pub const MAX_MESSAGE: usize = 64 << 20;

/// HTTP/2 flow-control windows of shard traffic: large enough that a
/// stream of 1 MiB shards never waits for a window update.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// Largest HTTP/2 frame a storage node accepts, instead of h2's 16 KiB:
/// a 1 MiB shard then crosses in one frame rather than 64, each decoded,
/// flow-controlled and woken for on its own (sequential writes through a
/// mount +19% on 2 cores).
pub const MAX_FRAME: u32 = 1 << 20;

/// Kinds of inode, with their wire numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl TryFrom<u32> for FileKind {
    type Error = Error;

    fn try_from(v: u32) -> Result<Self, Error> {
        Ok(match v {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDev,
            7 => FileKind::BlockDev,
            _ => return Err(Error::invalid("file kind", v.to_string(), "unknown")),
        })
    }
}

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
