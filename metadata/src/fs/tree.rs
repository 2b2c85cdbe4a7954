//! Names: lookup, create, link, unlink, rename, readdir, readlink.

use tessera_common::{Ino, VolumeId, ROOT_INO};

use super::{
    check_name,
    orphans::{self, Dropped, Holder},
    Attr, Tree, KIND_DIR, KIND_FILE, KIND_SYMLINK,
};
use crate::{
    meta::{now_ns, Meta},
    records::{Dentry, Inode},
    store::{transact, transact_buffered},
    MetaError, Result,
};

/// Longest symlink target, as Linux's PATH_MAX.
const MAX_SYMLINK: usize = 4096;

/// What a new inode looks like; the service fills it from the request.
#[derive(Clone, Debug)]
pub struct NewNode {
    pub kind: u32,
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub target: Vec<u8>,
}

pub const RENAME_NOREPLACE: u32 = 1;
pub const RENAME_EXCHANGE: u32 = 2;

impl Meta {
    pub fn lookup(&self, vol: VolumeId, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        transact(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let d = t.dentry(parent, name)?.ok_or_else(|| {
                MetaError::not_found(format!(
                    "{:?} in directory {parent}",
                    String::from_utf8_lossy(name)
                ))
            })?;
            Ok(Attr {
                ino: d.ino,
                inode: t.inode(d.ino)?,
            })
        })
    }

    pub fn make_node(&self, vol: VolumeId, parent: Ino, name: &[u8], new: NewNode) -> Result<Attr> {
        Ok(self.make_node_in(vol, parent, name, new)?.0)
    }

    /// `make_node`, also returning the parent directory as the change left
    /// it, so a client need not ask for it again.
    pub fn make_node_in(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        new: NewNode,
    ) -> Result<(Attr, Attr)> {
        check_name(name)?;
        if !(1..=7).contains(&new.kind) {
            return Err(MetaError::Invalid(format!(
                "unknown file kind {}",
                new.kind
            )));
        }
        if new.kind == KIND_SYMLINK && (new.target.is_empty() || new.target.len() > MAX_SYMLINK) {
            return Err(MetaError::Invalid(format!(
                "symlink target must be 1..={MAX_SYMLINK} bytes"
            )));
        }
        let ino = self.inode_ids.alloc(self.store.as_ref(), 1)?;
        let attr = transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let mut dir = t.dir(parent)?;
            if t.dentry(parent, name)?.is_some() {
                return Err(MetaError::Exists {
                    what: format!("{:?} in directory {parent}", String::from_utf8_lossy(name)),
                });
            }
            let now = now_ns();
            let is_dir = new.kind == KIND_DIR;
            let inode = Inode {
                kind: new.kind,
                perm: new.perm & 0o7777,
                nlink: if is_dir { 2 } else { 1 },
                uid: new.uid,
                gid: new.gid,
                rdev: new.rdev,
                size: if new.kind == KIND_SYMLINK {
                    new.target.len() as u64
                } else {
                    0
                },
                atime_ns: now,
                mtime_ns: now,
                ctime_ns: now,
                parent: if is_dir { parent } else { 0 },
                target: new.target.clone(),
            };
            t.set_dentry(
                parent,
                name,
                Dentry {
                    ino,
                    kind: new.kind,
                },
            )?;
            if is_dir {
                dir.nlink += 1;
            }
            dir.mtime_ns = now;
            dir.ctime_ns = now;
            t.set(parent, dir.clone());
            t.set(ino, inode.clone());
            t.finish()?;
            Ok((
                Attr { ino, inode },
                Attr {
                    ino: parent,
                    inode: dir,
                },
            ))
        })?;
        self.account(vol, 0, 1);
        Ok(attr)
    }

    pub fn link(&self, vol: VolumeId, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        check_name(new_name)?;
        transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let mut inode = t.inode(ino)?;
            if inode.kind == KIND_DIR {
                return Err(MetaError::NotPermitted(format!(
                    "hard link to directory {ino}"
                )));
            }
            let mut dir = t.dir(new_parent)?;
            if t.dentry(new_parent, new_name)?.is_some() {
                return Err(MetaError::Exists {
                    what: format!(
                        "{:?} in directory {new_parent}",
                        String::from_utf8_lossy(new_name)
                    ),
                });
            }
            let now = now_ns();
            inode.nlink += 1;
            inode.ctime_ns = now;
            dir.mtime_ns = now;
            dir.ctime_ns = now;
            t.set_dentry(
                new_parent,
                new_name,
                Dentry {
                    ino,
                    kind: inode.kind,
                },
            )?;
            t.set(new_parent, dir);
            t.set(ino, inode.clone());
            t.finish()?;
            Ok(Attr { ino, inode })
        })
    }

    /// unlink (`dir == false`) or rmdir (`dir == true`).
    pub fn unlink(&self, vol: VolumeId, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        self.unlink_held(vol, parent, name, dir, Holder::NONE)
            .map(|_| ())
    }

    /// [`Meta::unlink`] for a caller with files open (see `orphans.rs`);
    /// returns the inode kept as an orphan, if any.
    pub fn unlink_held(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        dir: bool,
        holder: Holder<'_>,
    ) -> Result<Option<Ino>> {
        check_name(name)?;
        let expires_ns = now_ns().saturating_add(self.orphan_lease.as_nanos() as i64);
        let dropped = transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let mut p = t.dir(parent)?;
            let d = t.dentry(parent, name)?.ok_or_else(|| {
                MetaError::not_found(format!(
                    "{:?} in directory {parent}",
                    String::from_utf8_lossy(name)
                ))
            })?;
            let inode = t.inode(d.ino)?;
            match (dir, inode.kind == KIND_DIR) {
                (true, false) => return Err(MetaError::NotDir { ino: d.ino }),
                (false, true) => return Err(MetaError::IsDir { ino: d.ino }),
                _ => {}
            }
            let now = now_ns();
            t.delete_dentry(parent, name)?;
            let dropped = drop_link(&mut t, d.ino, inode, now, holder, expires_ns)?;
            if dir {
                p.nlink -= 1;
            }
            p.mtime_ns = now;
            p.ctime_ns = now;
            t.set(parent, p);
            t.finish()?;
            Ok((d.ino, dropped))
        })?;
        Ok(self.dropped(vol, dropped))
    }

    /// Accounts for what dropping a link did; returns the orphan kept.
    fn dropped(&self, vol: VolumeId, (ino, d): (Ino, Dropped)) -> Option<Ino> {
        match d {
            Dropped::Linked => None,
            Dropped::Freed(bytes) => {
                self.account(vol, -(bytes as i64), -1);
                None
            }
            Dropped::Orphaned => Some(ino),
        }
    }

    pub fn rename(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        self.rename_held(vol, parent, name, new_parent, new_name, flags, Holder::NONE)
            .map(|_| ())
    }

    /// [`Meta::rename`] for a caller with files open (see `orphans.rs`);
    /// returns the replaced inode if it was kept as an orphan.
    #[allow(clippy::too_many_arguments)]
    pub fn rename_held(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        holder: Holder<'_>,
    ) -> Result<Option<Ino>> {
        check_name(name)?;
        check_name(new_name)?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(MetaError::Invalid(format!("rename flags {flags:#x}")));
        }
        let expires_ns = now_ns().saturating_add(self.orphan_lease.as_nanos() as i64);
        let dropped = transact_buffered(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            t.dir(parent)?;
            t.dir(new_parent)?;
            let src = t.dentry(parent, name)?.ok_or_else(|| {
                MetaError::not_found(format!(
                    "{:?} in directory {parent}",
                    String::from_utf8_lossy(name)
                ))
            })?;
            if parent == new_parent && name == new_name {
                return Ok((src.ino, Dropped::Linked));
            }
            let dst = t.dentry(new_parent, new_name)?;
            let src_inode = t.inode(src.ino)?;
            let src_is_dir = src_inode.kind == KIND_DIR;
            if src_is_dir && parent != new_parent && is_ancestor(&mut t, src.ino, new_parent)? {
                return Err(MetaError::Invalid(format!(
                    "cannot move directory {} into itself",
                    src.ino
                )));
            }
            let now = now_ns();
            let mut dropped = (src.ino, Dropped::Linked);
            if flags & RENAME_EXCHANGE != 0 {
                let dst = dst.ok_or_else(|| {
                    MetaError::not_found(format!(
                        "{:?} in directory {new_parent}",
                        String::from_utf8_lossy(new_name)
                    ))
                })?;
                let dst_inode = t.inode(dst.ino)?;
                if dst_inode.kind == KIND_DIR
                    && parent != new_parent
                    && is_ancestor(&mut t, dst.ino, parent)?
                {
                    return Err(MetaError::Invalid("exchange would create a loop".into()));
                }
                t.set_dentry(parent, name, dst)?;
                t.set_dentry(new_parent, new_name, src)?;
                reparent(&mut t, src.ino, parent, new_parent, now)?;
                reparent(&mut t, dst.ino, new_parent, parent, now)?;
            } else {
                if let Some(dst) = dst {
                    if flags & RENAME_NOREPLACE != 0 {
                        return Err(MetaError::Exists {
                            what: format!(
                                "{:?} in directory {new_parent}",
                                String::from_utf8_lossy(new_name)
                            ),
                        });
                    }
                    if dst.ino == src.ino {
                        // Two hard links of one file: POSIX says do nothing.
                        return Ok((src.ino, Dropped::Linked));
                    }
                    let dst_inode = t.inode(dst.ino)?;
                    let dst_is_dir = dst_inode.kind == KIND_DIR;
                    match (src_is_dir, dst_is_dir) {
                        (true, false) => return Err(MetaError::NotDir { ino: dst.ino }),
                        (false, true) => return Err(MetaError::IsDir { ino: dst.ino }),
                        (true, true) if !t.is_empty_dir(dst.ino)? => {
                            return Err(MetaError::NotEmpty {
                                volume: vol,
                                ino: dst.ino,
                            })
                        }
                        _ => {}
                    }
                    dropped = (
                        dst.ino,
                        drop_link(&mut t, dst.ino, dst_inode, now, holder, expires_ns)?,
                    );
                    if dst_is_dir {
                        let mut np = t.inode(new_parent)?;
                        np.nlink -= 1;
                        t.set(new_parent, np);
                    }
                }
                t.delete_dentry(parent, name)?;
                t.set_dentry(new_parent, new_name, src)?;
                reparent(&mut t, src.ino, parent, new_parent, now)?;
            }
            for p in [parent, new_parent] {
                let mut d = t.inode(p)?;
                d.mtime_ns = now;
                d.ctime_ns = now;
                t.set(p, d);
            }
            t.finish()?;
            Ok(dropped)
        })?;
        Ok(self.dropped(vol, dropped))
    }

    /// Entries of a directory whose names sort after `after`.
    pub fn read_dir(
        &self,
        vol: VolumeId,
        ino: Ino,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Dentry)>> {
        transact(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            t.dir(ino)?;
            let prefix = crate::keys::under(crate::keys::DENTRY, vol, ino);
            let (mut start, end) = crate::keys::prefix_range(&prefix);
            if !after.is_empty() {
                start = crate::keys::dentry(vol, ino, after);
                start.push(0);
            }
            let rows = t.txn().scan(&start, &end, limit.clamp(1, 10_000))?;
            rows.into_iter()
                .map(|(k, v)| {
                    let d: Dentry = crate::records::decode(&k, &v)?;
                    Ok((crate::keys::suffix(&k, &prefix).to_vec(), d))
                })
                .collect()
        })
    }

    pub fn read_link(&self, vol: VolumeId, ino: Ino) -> Result<Vec<u8>> {
        let attr = self.get_attr(vol, ino)?;
        if attr.inode.kind != KIND_SYMLINK {
            return Err(MetaError::Invalid(format!("inode {ino} is not a symlink")));
        }
        Ok(attr.inode.target)
    }
}

/// Drops one link to `ino`; frees the inode when it was the last, unless
/// `holder` has it open (then it is kept as an orphan until `expires_ns`).
fn drop_link(
    t: &mut Tree<'_>,
    ino: Ino,
    mut inode: Inode,
    now: i64,
    holder: Holder<'_>,
    expires_ns: i64,
) -> Result<Dropped> {
    if inode.kind == KIND_DIR {
        if !t.is_empty_dir(ino)? {
            return Err(MetaError::NotEmpty {
                volume: t.vol(),
                ino,
            });
        }
        t.remove(ino)?;
        return Ok(Dropped::Freed(0));
    }
    inode.nlink = inode.nlink.saturating_sub(1);
    inode.ctime_ns = now;
    if inode.nlink == 0 {
        if orphans::keep_if_open(t, ino, inode.kind, holder, expires_ns)? {
            t.set(ino, inode);
            return Ok(Dropped::Orphaned);
        }
        let size = if inode.kind == KIND_FILE {
            inode.size
        } else {
            0
        };
        t.remove(ino)?;
        return Ok(Dropped::Freed(size));
    }
    t.set(ino, inode);
    Ok(Dropped::Linked)
}

/// Moves inode `ino` from directory `from` to `to`: fixes a directory's
/// parent pointer and both parents' link counts.
fn reparent(t: &mut Tree<'_>, ino: Ino, from: Ino, to: Ino, now: i64) -> Result<()> {
    let mut inode = t.inode(ino)?;
    inode.ctime_ns = now;
    if inode.kind == KIND_DIR && from != to {
        inode.parent = to;
        let mut f = t.inode(from)?;
        f.nlink -= 1;
        t.set(from, f);
        let mut d = t.inode(to)?;
        d.nlink += 1;
        t.set(to, d);
    }
    t.set(ino, inode);
    Ok(())
}

/// Whether directory `ancestor` is `ino` or one of its ancestors.
fn is_ancestor(t: &mut Tree<'_>, ancestor: Ino, mut ino: Ino) -> Result<bool> {
    for _ in 0..4096 {
        if ino == ancestor {
            return Ok(true);
        }
        if ino == ROOT_INO {
            return Ok(false);
        }
        ino = t.inode(ino)?.parent;
    }
    Err(MetaError::Invalid("directory tree too deep".into()))
}
