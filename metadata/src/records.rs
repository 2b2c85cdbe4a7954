//! Values stored in the metadata store. Each is encoded as one format-version
//! byte (currently 1) followed by bincode; a reader refuses versions it does
//! not know instead of guessing.

use std::collections::BTreeMap;

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use tessera_common::{FileKind, Ino, NodeId, Protection, VolumeId};

pub use tessera_common::Slice;

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
    /// Stored as its number (a u32).
    pub kind: FileKind,
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
    /// Stored as its number (a u32).
    pub kind: FileKind,
}

/// A truncation whose cut of the file's slices is not finished (`T`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TrimRecord {
    /// The size the file was cut to.
    pub size: u64,
}

impl Inode {
    /// The inode with its number, as clients see it.
    pub fn attr(&self, ino: Ino) -> tessera_common::Attr {
        tessera_common::Attr {
            ino,
            kind: self.kind,
            perm: self.perm,
            nlink: self.nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: self.rdev,
            size: self.size,
            atime_ns: self.atime_ns,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
        }
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
