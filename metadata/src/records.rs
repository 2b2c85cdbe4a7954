//! Values stored in the metadata store. Each is encoded as one format-version
//! byte (currently 1) followed by bincode; a reader refuses versions it does
//! not know instead of guessing.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tessera_common::{BlockId, Ino, NodeId, Protection, VolumeId};

use crate::{store::Txn, MetaError, Result};

pub const RECORD_VERSION: u8 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: NodeId,
    pub addr: String,
    pub labels: BTreeMap<String, String>,
    pub registered_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlacementRecord {
    pub epoch: u64,
    /// For each PG, the node of each shard index.
    pub pgs: Vec<Vec<NodeId>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: VolumeId,
    pub name: String,
    pub size: u64,
    pub protection: Protection,
    pub labels: BTreeMap<String, String>,
    pub created_ms: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Inode {
    /// Wire numbering of `tessera_proto::FileKind`.
    pub kind: u32,
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// Parent directory (directories only; for rename loop checks).
    pub parent: Ino,
    /// Symlink target (symlinks only).
    pub target: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dentry {
    pub ino: Ino,
    pub kind: u32,
}

/// A run of a file's bytes stored at `[block_offset, block_offset+len)` of a
/// block of `block_len` bytes.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Slice {
    pub offset: u64,
    pub len: u32,
    pub block: BlockId,
    pub block_offset: u32,
    pub block_len: u32,
}

impl Slice {
    pub fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    bincode::serialize_into(&mut out, value).expect("records serialise into a Vec");
    out
}

pub fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    let corrupt = |why: String| MetaError::Corrupt {
        key: key.to_vec(),
        why,
    };
    match bytes.split_first() {
        Some((&RECORD_VERSION, body)) => {
            bincode::deserialize(body).map_err(|e| corrupt(e.to_string()))
        }
        Some((v, _)) => Err(corrupt(format!("unknown record version {v}"))),
        None => Err(corrupt("empty record".into())),
    }
}

/// Reads and decodes one record in a transaction.
pub fn load<T: DeserializeOwned>(txn: &mut dyn Txn, key: &[u8]) -> Result<Option<T>> {
    match txn.get(key)? {
        Some(bytes) => decode(key, &bytes).map(Some),
        None => Ok(None),
    }
}

pub fn store<T: Serialize>(txn: &mut dyn Txn, key: &[u8], value: &T) -> Result<()> {
    Ok(txn.put(key, &encode(value))?)
}
