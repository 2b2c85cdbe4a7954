//! The file tree of a volume: inodes, directory entries, symlinks, xattrs
//! and each file's slices, all in the metadata store.
//!
//! Every operation is one transaction. Creating or removing an entry always
//! rewrites the parent directory's inode (its times, and nlink for
//! subdirectories), which is also what makes "is this directory empty?"
//! safe under optimistic concurrency: rmdir reads that inode too.

mod attrs;
mod data;
mod orphans;
mod tree;

use std::collections::{BTreeMap, BTreeSet};

use tessera_common::{validate, Ino, VolumeId};

use crate::{
    keys,
    records::{decode, load, store, Dentry, Inode, Slice},
    store::Txn,
    MetaError, Result,
};

pub use attrs::{SetAttr, StatFs, XATTR_CREATE, XATTR_REPLACE};
pub use data::{FileData, FileWrite, InlineBlock, MAX_FILE_SIZE};
pub use orphans::{Holder, OrphanRecord};
pub use tree::{NewNode, RENAME_EXCHANGE, RENAME_NOREPLACE};

pub const KIND_FILE: u32 = 1;
pub const KIND_DIR: u32 = 2;
pub const KIND_SYMLINK: u32 = 3;

/// An inode number with its attributes, as returned to clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub inode: Inode,
}

/// A transaction's view of one volume's tree: inodes are read once, changed
/// in memory and written back by `finish`.
pub(crate) struct Tree<'t> {
    txn: &'t mut dyn Txn,
    vol: VolumeId,
    inodes: BTreeMap<Ino, Option<Inode>>,
    dirty: BTreeSet<Ino>,
}

impl<'t> Tree<'t> {
    pub fn new(txn: &'t mut dyn Txn, vol: VolumeId) -> Self {
        Tree {
            txn,
            vol,
            inodes: BTreeMap::new(),
            dirty: BTreeSet::new(),
        }
    }

    pub fn inode(&mut self, ino: Ino) -> Result<Inode> {
        if !self.inodes.contains_key(&ino) {
            let found = load::<Inode>(self.txn, &keys::inode(self.vol, ino))?;
            self.inodes.insert(ino, found);
        }
        self.inodes[&ino]
            .clone()
            .ok_or_else(|| MetaError::not_found(format!("inode {ino} of volume {}", self.vol)))
    }

    pub fn dir(&mut self, ino: Ino) -> Result<Inode> {
        let inode = self.inode(ino)?;
        if inode.kind != KIND_DIR {
            return Err(MetaError::NotDir { ino });
        }
        Ok(inode)
    }

    pub fn set(&mut self, ino: Ino, inode: Inode) {
        self.inodes.insert(ino, Some(inode));
        self.dirty.insert(ino);
    }

    /// Removes an inode and everything stored under it.
    pub fn remove(&mut self, ino: Ino) -> Result<()> {
        self.inodes.insert(ino, None);
        self.dirty.insert(ino);
        for prefix in [keys::CHUNK, keys::XATTR] {
            let (start, end) = keys::prefix_range(&keys::under(prefix, self.vol, ino));
            for (k, v) in self.txn.scan(&start, &end, usize::MAX)? {
                if prefix == keys::CHUNK {
                    crate::blocks::drop_refs(self.txn, &decode::<Vec<Slice>>(&k, &v)?)?;
                }
                self.txn.delete(&k)?;
            }
        }
        Ok(())
    }

    pub fn dentry(&mut self, parent: Ino, name: &[u8]) -> Result<Option<Dentry>> {
        load(self.txn, &keys::dentry(self.vol, parent, name))
    }

    pub fn set_dentry(&mut self, parent: Ino, name: &[u8], d: Dentry) -> Result<()> {
        store(self.txn, &keys::dentry(self.vol, parent, name), &d)
    }

    pub fn delete_dentry(&mut self, parent: Ino, name: &[u8]) -> Result<()> {
        Ok(self.txn.delete(&keys::dentry(self.vol, parent, name))?)
    }

    pub fn is_empty_dir(&mut self, ino: Ino) -> Result<bool> {
        let (start, end) = keys::prefix_range(&keys::under(keys::DENTRY, self.vol, ino));
        Ok(self.txn.scan(&start, &end, 1)?.is_empty())
    }

    pub fn txn(&mut self) -> &mut dyn Txn {
        self.txn
    }

    pub fn vol(&self) -> VolumeId {
        self.vol
    }

    /// Writes every changed inode back.
    pub fn finish(self) -> Result<()> {
        for ino in &self.dirty {
            let key = keys::inode(self.vol, *ino);
            match &self.inodes[ino] {
                Some(inode) => store(self.txn, &key, inode)?,
                None => self.txn.delete(&key)?,
            }
        }
        Ok(())
    }
}

pub(crate) fn check_name(name: &[u8]) -> Result<()> {
    if name.len() > validate::MAX_FILE_NAME {
        return Err(MetaError::NameTooLong(format!(
            "{} bytes (at most {})",
            name.len(),
            validate::MAX_FILE_NAME
        )));
    }
    Ok(validate::file_name(name)?)
}

#[cfg(test)]
mod tests;
