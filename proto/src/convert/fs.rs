//! Attributes and directory entries.

use tessera_common::{Attr, DirEntry, Error, FileKind};

use crate::pb;

impl From<Attr> for pb::Attr {
    fn from(a: Attr) -> Self {
        pb::Attr {
            ino: a.ino,
            kind: a.kind.into(),
            perm: a.perm,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            size: a.size,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
            parent: None,
        }
    }
}

impl TryFrom<pb::Attr> for Attr {
    type Error = Error;

    fn try_from(a: pb::Attr) -> Result<Self, Error> {
        Ok(Attr {
            ino: a.ino,
            kind: FileKind::try_from(a.kind)?,
            perm: a.perm & 0o7777,
            nlink: a.nlink,
            uid: a.uid,
            gid: a.gid,
            rdev: a.rdev,
            size: a.size,
            atime_ns: a.atime_ns,
            mtime_ns: a.mtime_ns,
            ctime_ns: a.ctime_ns,
        })
    }
}

impl From<DirEntry> for pb::DirEntry {
    fn from(e: DirEntry) -> Self {
        pb::DirEntry {
            name: e.name.into(),
            ino: e.ino,
            kind: e.kind.into(),
        }
    }
}

impl TryFrom<pb::DirEntry> for DirEntry {
    type Error = Error;

    fn try_from(e: pb::DirEntry) -> Result<Self, Error> {
        Ok(DirEntry {
            name: e.name.to_vec(),
            ino: e.ino,
            kind: FileKind::try_from(e.kind)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attrs_round_trip_and_unknown_kinds_are_refused() {
        let a = Attr {
            ino: 9,
            kind: FileKind::Symlink,
            perm: 0o644,
            nlink: 1,
            uid: 1000,
            gid: 100,
            rdev: 0,
            size: 12,
            atime_ns: -5,
            mtime_ns: 6,
            ctime_ns: 7,
        };
        assert_eq!(Attr::try_from(pb::Attr::from(a.clone())).unwrap(), a);
        let bad = pb::Attr {
            kind: 99,
            ..pb::Attr::from(a)
        };
        assert!(Attr::try_from(bad).is_err());
    }
}
