//! The file tree of every volume: inodes, directory entries, symlinks,
//! xattrs and orphans, all in the metadata store. A file's slices are the
//! file data domain's (`data/`).
//!
//! Every operation is one transaction (a large file's release and trim
//! take steps, see `release.rs`). Creating or removing an entry always
//! rewrites the parent directory's inode (its times, and nlink for
//! subdirectories), which is also what makes "is this directory empty?"
//! safe under optimistic concurrency: rmdir reads that inode too.
//!
//! Changes of names and attributes are buffered commits
//! (`transact_buffered`): durable against a killed process at once, and
//! against power loss at the next `sync` or within milliseconds.

mod attrs;
pub(crate) mod locks;
mod names;
pub(crate) mod orphans;
pub(crate) mod release;
mod xattrs;

use std::collections::{BTreeMap, BTreeSet};

use tessera_common::{validate, FileKind, Ino, VolumeId};

use crate::{
    keys,
    meta::Meta,
    records::{load, store, Dentry, Inode},
    store::Txn,
    MetaError, Result,
};

pub(crate) use locks::note_change;
pub use locks::{LockOwner, LockTable, SessionRecord};
pub use names::{Made, MakeNode, Rename, Unlink};
pub use orphans::{Holder, OrphanRecord, MAX_OPEN, MAX_RENEW};

/// The file tree domain of a [`Meta`].
#[derive(Clone, Copy)]
pub struct FileTree<'m> {
    pub(crate) meta: &'m Meta,
}

/// A transaction's view of one volume's tree: inodes are read once,
/// changed in memory and written back by `finish`.
pub(crate) struct TreeTxn<'t> {
    txn: &'t mut dyn Txn,
    vol: VolumeId,
    inodes: BTreeMap<Ino, Option<Inode>>,
    dirty: BTreeSet<Ino>,
}

impl<'t> TreeTxn<'t> {
    pub fn new(txn: &'t mut dyn Txn, vol: VolumeId) -> Self {
        TreeTxn {
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
        if inode.kind != FileKind::Dir {
            return Err(MetaError::NotDir { ino });
        }
        Ok(inode)
    }

    /// A regular file's inode.
    pub fn file(&mut self, ino: Ino) -> Result<Inode> {
        let inode = self.inode(ino)?;
        match inode.kind {
            FileKind::File => Ok(inode),
            FileKind::Dir => Err(MetaError::IsDir { ino }),
            _ => Err(MetaError::Invalid(format!(
                "inode {ino} is not a regular file"
            ))),
        }
    }

    pub fn set(&mut self, ino: Ino, inode: Inode) {
        self.inodes.insert(ino, Some(inode));
        self.dirty.insert(ino);
    }

    /// Deletes the inode record itself (`release.rs` deletes what it holds).
    pub fn forget_inode(&mut self, ino: Ino) {
        self.inodes.insert(ino, None);
        self.dirty.insert(ino);
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

/// "name" in directory `parent`, for errors.
pub(crate) fn entry_name(name: &[u8], parent: Ino) -> String {
    format!("{:?} in directory {parent}", String::from_utf8_lossy(name))
}

#[cfg(test)]
mod tests;
