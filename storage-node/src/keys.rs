//! Every key of the shard index (RocksDB under `DATA/index`), in one place.
//! A retired prefix is never reused.
//!
//! | prefix | key                                  | value                          |
//! |--------|--------------------------------------|--------------------------------|
//! | `S`    | `S` block (u64 BE) index (u8)        | [`crate::index::Entry`] v1     |
//! | `M`    | `M` name, for the names below        | see each constant              |
//!
//! Integers in keys are big-endian so that iteration is ordered by
//! (block, index).

use tessera_common::ShardKey;

/// Prefix of shard entries.
pub const SHARD: u8 = b'S';
/// Prefix of the index's own metadata.
pub const META: u8 = b'M';

/// Position (segment u32 BE, offset u64 BE) up to which the index is known to
/// hold every record of the segments. Written in the same batch as entries.
pub const SCAN_MARKER: &[u8] = b"Mscan_marker";

/// Length of a shard key.
pub const SHARD_KEY_LEN: usize = 10;

pub fn shard(key: ShardKey) -> [u8; SHARD_KEY_LEN] {
    let mut k = [0u8; SHARD_KEY_LEN];
    k[0] = SHARD;
    k[1..9].copy_from_slice(&key.block.to_be_bytes());
    k[9] = key.index;
    k
}

/// The shard key of an index key, or `None` if it is not one.
pub fn parse_shard(k: &[u8]) -> Option<ShardKey> {
    if k.len() != SHARD_KEY_LEN || k[0] != SHARD {
        return None;
    }
    let block = u64::from_be_bytes(k[1..9].try_into().ok()?);
    Some(ShardKey { block, index: k[9] })
}

/// First key after every shard entry.
pub fn shard_end() -> [u8; 1] {
    [SHARD + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_and_round_trips() {
        let a = ShardKey {
            block: 1,
            index: 255,
        };
        let b = ShardKey { block: 2, index: 0 };
        assert!(shard(a) < shard(b));
        assert_eq!(parse_shard(&shard(a)), Some(a));
        assert_eq!(parse_shard(SCAN_MARKER), None);
        assert!(
            shard(ShardKey {
                block: u64::MAX,
                index: 255
            })
            .as_slice()
                < shard_end().as_slice()
        );
    }
}
