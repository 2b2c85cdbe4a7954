//! Attributes, truncation, extended attributes, statfs.

use tessera_common::{Ino, VolumeId};

use super::{data::truncate_slices, Attr, Tree, KIND_DIR, KIND_FILE};
use crate::{
    keys,
    meta::{now_ns, Meta},
    store::{transact, transact_buffered},
    MetaError, Result,
};

/// Largest xattr name and value, as Linux's XATTR_NAME_MAX / XATTR_SIZE_MAX.
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 64 << 10;

pub const XATTR_CREATE: u32 = 1;
pub const XATTR_REPLACE: u32 = 2;

/// Fields of a setattr; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct SetAttr {
    pub perm: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

/// Capacity figures of one volume.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub size: u64,
    pub used: u64,
    pub inodes: u64,
}

impl Meta {
    pub fn get_attr(&self, vol: VolumeId, ino: Ino) -> Result<Attr> {
        transact(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            Ok(Attr {
                ino,
                inode: t.inode(ino)?,
            })
        })
    }

    pub fn set_attr(&self, vol: VolumeId, ino: Ino, change: SetAttr) -> Result<Attr> {
        if let Some(size) = change.size {
            if size > super::MAX_FILE_SIZE {
                return Err(MetaError::Invalid(format!("file size {size} too large")));
            }
            let volume = self.volume_by_id(vol)?;
            let used = self.usage_of(vol).bytes;
            let current = self.get_attr(vol, ino)?.inode.size;
            if size > current && used.saturating_add(size - current) > volume.size {
                return Err(MetaError::Quota {
                    volume: volume.name,
                    used,
                    size: volume.size,
                });
            }
        }
        let (attr, delta) = transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let mut inode = t.inode(ino)?;
            let now = now_ns();
            let mut delta = 0i64;
            if let Some(size) = change.size {
                match inode.kind {
                    KIND_FILE => {}
                    KIND_DIR => return Err(MetaError::IsDir { ino }),
                    _ => {
                        return Err(MetaError::Invalid(format!(
                            "truncate of special file {ino}"
                        )))
                    }
                }
                if size < inode.size {
                    truncate_slices(t.txn(), vol, ino, size)?;
                }
                delta = size as i64 - inode.size as i64;
                inode.size = size;
                inode.mtime_ns = now;
            }
            if let Some(p) = change.perm {
                inode.perm = p & 0o7777;
            }
            if let Some(u) = change.uid {
                inode.uid = u;
            }
            if let Some(g) = change.gid {
                inode.gid = g;
            }
            if let Some(a) = change.atime_ns {
                inode.atime_ns = a;
            }
            if let Some(m) = change.mtime_ns {
                inode.mtime_ns = m;
            }
            inode.ctime_ns = now;
            t.set(ino, inode.clone());
            t.finish()?;
            Ok((Attr { ino, inode }, delta))
        })?;
        self.account(vol, delta, 0);
        Ok(attr)
    }

    pub fn get_xattr(&self, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        check_xattr_name(name)?;
        transact(self.store.as_ref(), |txn| {
            Tree::new(txn, vol).inode(ino)?;
            txn.get(&keys::xattr(vol, ino, name))?
                .ok_or_else(|| MetaError::NoXattr {
                    ino,
                    name: String::from_utf8_lossy(name).into_owned(),
                })
        })
    }

    pub fn set_xattr(
        &self,
        vol: VolumeId,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        check_xattr_name(name)?;
        if value.len() > MAX_XATTR_VALUE {
            return Err(MetaError::Invalid(format!(
                "xattr value of {} bytes (at most {MAX_XATTR_VALUE})",
                value.len()
            )));
        }
        transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let mut inode = t.inode(ino)?;
            let key = keys::xattr(vol, ino, name);
            let exists = t.txn().get(&key)?.is_some();
            if exists && flags & XATTR_CREATE != 0 {
                return Err(MetaError::Exists {
                    what: format!("xattr {}", String::from_utf8_lossy(name)),
                });
            }
            if !exists && flags & XATTR_REPLACE != 0 {
                return Err(MetaError::NoXattr {
                    ino,
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
            t.txn().put(&key, value)?;
            inode.ctime_ns = now_ns();
            t.set(ino, inode);
            t.finish()
        })
    }

    pub fn list_xattr(&self, vol: VolumeId, ino: Ino) -> Result<Vec<Vec<u8>>> {
        transact(self.store.as_ref(), |txn| {
            Tree::new(txn, vol).inode(ino)?;
            let prefix = keys::under(keys::XATTR, vol, ino);
            let (start, end) = keys::prefix_range(&prefix);
            Ok(txn
                .scan(&start, &end, usize::MAX)?
                .into_iter()
                .map(|(k, _)| keys::suffix(&k, &prefix).to_vec())
                .collect())
        })
    }

    pub fn remove_xattr(&self, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<()> {
        check_xattr_name(name)?;
        transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let mut inode = t.inode(ino)?;
            let key = keys::xattr(vol, ino, name);
            if t.txn().get(&key)?.is_none() {
                return Err(MetaError::NoXattr {
                    ino,
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
            t.txn().delete(&key)?;
            inode.ctime_ns = now_ns();
            t.set(ino, inode);
            t.finish()
        })
    }

    pub fn stat_fs(&self, vol: VolumeId) -> Result<StatFs> {
        let volume = self.volume_by_id(vol)?;
        let usage = self.usage_of(vol);
        Ok(StatFs {
            size: volume.size,
            used: usage.bytes,
            inodes: usage.inodes,
        })
    }

    /// Makes every change to the volume's tree acknowledged so far durable
    /// (fsync and fsyncdir). The store has one log, so this syncs all
    /// volumes' changes; the volume is named so the call fails for one
    /// that does not exist.
    pub fn sync(&self, vol: VolumeId) -> Result<()> {
        self.volume_by_id(vol)?;
        Ok(self.store.sync()?)
    }
}

fn check_xattr_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name.len() > MAX_XATTR_NAME || name.contains(&0) {
        return Err(MetaError::Invalid(format!(
            "xattr name must be 1..={MAX_XATTR_NAME} bytes without NUL"
        )));
    }
    Ok(())
}
