//! Extended attributes.

use tessera_common::{
    fs::{MAX_XATTR_NAME, MAX_XATTR_VALUE, XATTR_CREATE, XATTR_REPLACE},
    Ino, VolumeId,
};

use super::{FileTree, TreeTxn};
use crate::{
    keys,
    meta::now_ns,
    store::{transact, transact_buffered},
    MetaError, Result,
};

/// Names one listxattr returns at most.
const MAX_LIST: usize = 65_536;

fn no_xattr(ino: Ino, name: &[u8]) -> MetaError {
    MetaError::NoXattr {
        ino,
        name: String::from_utf8_lossy(name).into_owned(),
    }
}

impl FileTree<'_> {
    pub fn get_xattr(&self, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        check_xattr_name(name)?;
        transact(self.meta.store(), |txn| {
            TreeTxn::new(txn, vol).inode(ino)?;
            txn.get(&keys::xattr(vol, ino, name))?
                .ok_or_else(|| no_xattr(ino, name))
        })
    }

    /// Sets an xattr; `flags` as setxattr(2)'s.
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
        if flags & !(XATTR_CREATE | XATTR_REPLACE) != 0 {
            return Err(MetaError::Invalid(format!("xattr flags {flags:#x}")));
        }
        transact_buffered(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            let mut inode = t.inode(ino)?;
            let key = keys::xattr(vol, ino, name);
            let exists = t.txn().get(&key)?.is_some();
            if exists && flags & XATTR_CREATE != 0 {
                return Err(MetaError::Exists {
                    what: format!("xattr {}", String::from_utf8_lossy(name)),
                });
            }
            if !exists && flags & XATTR_REPLACE != 0 {
                return Err(no_xattr(ino, name));
            }
            t.txn().put(&key, value)?;
            inode.ctime_ns = now_ns();
            t.set(ino, inode);
            t.finish()
        })
    }

    pub fn list_xattr(&self, vol: VolumeId, ino: Ino) -> Result<Vec<Vec<u8>>> {
        transact(self.meta.store(), |txn| {
            TreeTxn::new(txn, vol).inode(ino)?;
            let prefix = keys::under(keys::XATTR, vol, ino);
            let (start, end) = keys::prefix_range(&prefix);
            Ok(txn
                .scan(&start, &end, MAX_LIST)?
                .into_iter()
                .map(|(k, _)| keys::suffix(&k, &prefix).to_vec())
                .collect())
        })
    }

    pub fn remove_xattr(&self, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<()> {
        check_xattr_name(name)?;
        transact_buffered(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            let mut inode = t.inode(ino)?;
            let key = keys::xattr(vol, ino, name);
            if t.txn().get(&key)?.is_none() {
                return Err(no_xattr(ino, name));
            }
            t.txn().delete(&key)?;
            inode.ctime_ns = now_ns();
            t.set(ino, inode);
            t.finish()
        })
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
