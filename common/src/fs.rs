//! The file tree's vocabulary: what the metadata service keeps and answers
//! and what the client and the FUSE adapter hand on to the kernel. One
//! constant per fact; the wire and the disk carry the same numbers.

use serde::{Deserialize, Serialize};

use crate::{Error, Ino};

/// Largest file: 2^50 bytes (1 PiB).
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// Longest symlink target, as Linux's PATH_MAX.
pub const MAX_SYMLINK: usize = 4096;

/// Largest xattr name and value, as Linux's XATTR_NAME_MAX / XATTR_SIZE_MAX.
pub const MAX_XATTR_NAME: usize = 255;
pub const MAX_XATTR_VALUE: usize = 64 << 10;

/// Most inodes an unlink or rename may name as open by its caller.
pub const MAX_OPEN: usize = 1 << 20;

/// Most orphans (files unlinked while open) one renewal of their lease may
/// name (what older clients send in one), and how many a client names in
/// one and the metadata service renews in one transaction.
pub const MAX_RENEW: usize = 1 << 20;
pub const RENEW_BATCH: usize = 1024;

/// rename(2) flags the tree understands (Linux's values).
pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

/// setxattr(2) flags (Linux's values).
pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// Kinds of inode. The numbers are the wire's and the metadata records'.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum FileKind {
    File = 1,
    Dir = 2,
    Symlink = 3,
    Fifo = 4,
    Socket = 5,
    CharDev = 6,
    BlockDev = 7,
}

impl From<FileKind> for u32 {
    fn from(k: FileKind) -> u32 {
        k as u32
    }
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

/// An inode's attributes, as the metadata service answers them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits (`0o7777` at most).
    pub perm: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// A new inode: what a create asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewNode<'a> {
    pub kind: FileKind,
    /// Permission bits (`0o7777` at most are kept).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    /// A symlink's target (empty for anything else).
    pub target: &'a [u8],
}

impl NewNode<'static> {
    /// A node of `kind` with permissions `perm`, owned by root, no device
    /// number, no target.
    pub fn new(kind: FileKind, perm: u32) -> Self {
        NewNode {
            kind,
            perm,
            uid: 0,
            gid: 0,
            rdev: 0,
            target: b"",
        }
    }
}

/// One name in a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

/// Entries of a directory from a name on, in name order, each with its
/// attributes: a lookup that answers for the names after it too (the
/// metadata service's `LookupPage`, a mount's name cache).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NamePage {
    pub entries: Vec<(Vec<u8>, Attr)>,
    /// No entry sorts after the last of `entries`.
    pub complete: bool,
}

/// The fields a setattr changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
    /// The changing mount's session (0: unknown): a size change counts as
    /// a change of the file for mounts taking locks on it.
    pub session: u64,
}

/// Capacity figures of one volume, for statfs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatFs {
    pub size: u64,
    pub used: u64,
    pub inodes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_keep_their_numbers_on_the_wire_and_on_disk() {
        for n in 1..=7u32 {
            let k = FileKind::try_from(n).unwrap();
            assert_eq!(u32::from(k), n);
        }
        assert!(FileKind::try_from(0).is_err());
        assert!(FileKind::try_from(8).is_err());
    }
}
