//! Attributes and truncation; `sync` for fsync and fsyncdir.

use tessera_common::{Attr, Ino, SetAttr, VolumeId, MAX_FILE_SIZE};

use super::{release, FileTree, TreeTxn};
use crate::{
    meta::now_ns,
    store::{transact, transact_buffered},
    MetaError, Result,
};

impl FileTree<'_> {
    pub fn get_attr(&self, vol: VolumeId, ino: Ino) -> Result<Attr> {
        transact(self.meta.store(), |txn| {
            Ok(TreeTxn::new(txn, vol).inode(ino)?.attr(ino))
        })
    }

    /// Changes attributes. A size change of a regular file truncates or
    /// extends it; growth is checked against the volume's quota in the
    /// same transaction that makes it.
    pub fn set_attr(&self, vol: VolumeId, ino: Ino, change: &SetAttr) -> Result<Attr> {
        if let Some(size) = change.size {
            if size > MAX_FILE_SIZE {
                return Err(MetaError::FileTooLarge { size });
            }
        }
        let volume = self.meta.volumes().by_id(vol)?;
        loop {
            let done = transact_buffered(self.meta.store(), |txn| {
                let mut t = TreeTxn::new(txn, vol);
                let mut inode = t.inode(ino)?;
                let now = now_ns();
                let mut reserved = None;
                let mut shrunk = 0;
                let mut trim_left = false;
                if let Some(size) = change.size {
                    t.file(ino)?;
                    release::pending_trim(t.txn(), vol, ino)?;
                    if size > inode.size {
                        reserved = Some(self.meta.usage.reserve(
                            vol,
                            &volume.name,
                            volume.size,
                            size - inode.size,
                        )?);
                    } else if size < inode.size {
                        shrunk = inode.size - size;
                        trim_left = release::cut(&mut t, ino, size)?;
                    }
                    inode.size = size;
                    inode.mtime_ns = now;
                    super::note_change(t.txn(), vol, ino, change.session)?;
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
                let attr = inode.attr(ino);
                t.set(ino, inode);
                t.finish()?;
                Ok((attr, reserved, shrunk, trim_left))
            });
            let (attr, reserved, shrunk, trim_left) = match done {
                // A truncation of this file is still being cut: finish it
                // first, so it cannot cut what this change adds.
                Err(MetaError::TrimPending { .. }) => {
                    release::finish_trim(self.meta.store(), vol, ino)?;
                    continue;
                }
                other => other?,
            };
            if let Some(r) = reserved {
                r.commit();
            }
            self.meta.usage.account(vol, -(shrunk as i64), 0);
            if trim_left {
                release::finish_trim(self.meta.store(), vol, ino)?;
            }
            return Ok(attr);
        }
    }

    /// Makes every change to the volume's tree acknowledged so far durable
    /// (fsync and fsyncdir). The store has one log, so this syncs all
    /// volumes' changes; the volume is named so the call fails for one
    /// that does not exist.
    pub fn sync(&self, vol: VolumeId) -> Result<()> {
        self.meta.volumes().by_id(vol)?;
        Ok(self.meta.store().sync()?)
    }
}
