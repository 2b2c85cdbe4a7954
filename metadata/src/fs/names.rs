//! Names: lookup, create, link, unlink, rename, readdir, readlink.

use tessera_common::{
    fs::{MAX_SYMLINK, RENAME_EXCHANGE, RENAME_NOREPLACE},
    Attr, DirEntry, FileKind, Ino, NamePage, NewNode, VolumeId, ROOT_INO,
};

use super::{
    check_name, entry_name,
    orphans::{self, Holder},
    release, FileTree, TreeTxn,
};
use crate::{
    keys,
    meta::now_ns,
    records::{decode, Dentry, Inode},
    store::{transact, transact_buffered},
    MetaError, Result,
};

/// Entries one readdir returns at most.
const MAX_READ_DIR: usize = 10_000;

/// Entries one lookup page returns at most.
const MAX_LOOKUP_PAGE: usize = 1024;

/// A new inode and the name it gets.
#[derive(Clone, Copy, Debug)]
pub struct MakeNode<'a> {
    pub vol: VolumeId,
    pub parent: Ino,
    pub name: &'a [u8],
    pub node: NewNode<'a>,
}

/// What a create made: the new inode, and its parent directory as the
/// change left it (a client need not ask for it again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Made {
    pub node: Attr,
    pub parent: Attr,
}

/// An unlink (`dir == false`) or rmdir (`dir == true`).
#[derive(Clone, Copy, Debug)]
pub struct Unlink<'a> {
    pub vol: VolumeId,
    pub parent: Ino,
    pub name: &'a [u8],
    pub dir: bool,
    /// The caller and what it has open (see `orphans.rs`).
    pub holder: Holder<'a>,
}

/// A rename, with rename(2)'s flags.
#[derive(Clone, Copy, Debug)]
pub struct Rename<'a> {
    pub vol: VolumeId,
    pub parent: Ino,
    pub name: &'a [u8],
    pub new_parent: Ino,
    pub new_name: &'a [u8],
    pub flags: u32,
    /// The caller and what it has open, for a file the rename replaces.
    pub holder: Holder<'a>,
}

/// What dropping a link did to the inode.
enum Dropped {
    /// Still linked elsewhere.
    Linked,
    /// Gone; its size in bytes was freed, and whether its rows are still
    /// to be released (`release.rs`).
    Freed { bytes: u64, pending: bool },
    /// Kept as an orphan for the holder.
    Orphaned,
}

impl FileTree<'_> {
    pub fn lookup(&self, vol: VolumeId, parent: Ino, name: &[u8]) -> Result<Attr> {
        check_name(name)?;
        transact(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            let d = t
                .dentry(parent, name)?
                .ok_or_else(|| MetaError::not_found(entry_name(name, parent)))?;
            Ok(t.inode(d.ino)?.attr(d.ino))
        })
    }

    /// A lookup that answers for the names after `name` too: the entries
    /// of `parent` from `name` on (inclusive, in name order), at most
    /// `limit` (and at most `MAX_LOOKUP_PAGE`), each with its attributes,
    /// and whether they are all the directory has from `name` on. A name
    /// in that range that is not among them does not exist.
    pub fn lookup_page(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        limit: usize,
    ) -> Result<NamePage> {
        check_name(name)?;
        let limit = limit.clamp(1, MAX_LOOKUP_PAGE);
        transact(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            t.dir(parent)?;
            let prefix = keys::under(keys::DENTRY, vol, parent);
            let (_, end) = keys::prefix_range(&prefix);
            let start = keys::dentry(vol, parent, name);
            let rows = t.txn().scan(&start, &end, limit)?;
            let complete = rows.len() < limit;
            let mut entries = Vec::with_capacity(rows.len());
            for (k, v) in rows {
                let d: Dentry = decode(&k, &v)?;
                let attr = t.inode(d.ino)?.attr(d.ino);
                entries.push((keys::suffix(&k, &prefix).to_vec(), attr));
            }
            Ok(NamePage { entries, complete })
        })
    }

    pub fn make_node(&self, m: &MakeNode<'_>) -> Result<Made> {
        check_name(m.name)?;
        let n = &m.node;
        if n.kind == FileKind::Symlink && (n.target.is_empty() || n.target.len() > MAX_SYMLINK) {
            return Err(MetaError::Invalid(format!(
                "symlink target must be 1..={MAX_SYMLINK} bytes"
            )));
        }
        let ino = self.meta.ids.inode.alloc(self.meta.store(), 1)?;
        let made = transact_buffered(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, m.vol);
            let mut dir = t.dir(m.parent)?;
            if t.dentry(m.parent, m.name)?.is_some() {
                return Err(MetaError::Exists {
                    what: entry_name(m.name, m.parent),
                });
            }
            let now = now_ns();
            let is_dir = n.kind == FileKind::Dir;
            let inode = Inode {
                kind: n.kind,
                perm: n.perm & 0o7777,
                nlink: if is_dir { 2 } else { 1 },
                uid: n.uid,
                gid: n.gid,
                rdev: n.rdev,
                size: if n.kind == FileKind::Symlink {
                    n.target.len() as u64
                } else {
                    0
                },
                atime_ns: now,
                mtime_ns: now,
                ctime_ns: now,
                parent: if is_dir { m.parent } else { 0 },
                target: n.target.to_vec(),
            };
            t.set_dentry(m.parent, m.name, Dentry { ino, kind: n.kind })?;
            if is_dir {
                dir.nlink += 1;
            }
            dir.mtime_ns = now;
            dir.ctime_ns = now;
            let made = Made {
                node: inode.attr(ino),
                parent: dir.attr(m.parent),
            };
            t.set(m.parent, dir);
            t.set(ino, inode);
            t.finish()?;
            Ok(made)
        })?;
        self.meta.usage.account(m.vol, 0, 1);
        Ok(made)
    }

    pub fn link(&self, vol: VolumeId, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        check_name(new_name)?;
        transact_buffered(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            let mut inode = t.inode(ino)?;
            if inode.kind == FileKind::Dir {
                return Err(MetaError::NotPermitted(format!(
                    "hard link to directory {ino}"
                )));
            }
            let mut dir = t.dir(new_parent)?;
            if t.dentry(new_parent, new_name)?.is_some() {
                return Err(MetaError::Exists {
                    what: entry_name(new_name, new_parent),
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
            let attr = inode.attr(ino);
            t.set(ino, inode);
            t.finish()?;
            Ok(attr)
        })
    }

    /// Removes a name; returns the inode kept as an orphan for the caller,
    /// if it had the file open.
    pub fn unlink(&self, u: &Unlink<'_>) -> Result<Option<Ino>> {
        check_name(u.name)?;
        u.holder.check()?;
        let expires_ns = self.lease_end();
        let dropped = transact_buffered(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, u.vol);
            let mut p = t.dir(u.parent)?;
            let d = t
                .dentry(u.parent, u.name)?
                .ok_or_else(|| MetaError::not_found(entry_name(u.name, u.parent)))?;
            let inode = t.inode(d.ino)?;
            match (u.dir, inode.kind == FileKind::Dir) {
                (true, false) => return Err(MetaError::NotDir { ino: d.ino }),
                (false, true) => return Err(MetaError::IsDir { ino: d.ino }),
                _ => {}
            }
            let now = now_ns();
            t.delete_dentry(u.parent, u.name)?;
            let dropped = drop_link(&mut t, d.ino, inode, now, u.holder, expires_ns)?;
            if u.dir {
                p.nlink -= 1;
            }
            p.mtime_ns = now;
            p.ctime_ns = now;
            t.set(u.parent, p);
            t.finish()?;
            Ok((d.ino, dropped))
        })?;
        self.dropped(u.vol, dropped)
    }

    /// Finishes what dropping a link started; returns the orphan kept.
    fn dropped(&self, vol: VolumeId, (ino, d): (Ino, Dropped)) -> Result<Option<Ino>> {
        match d {
            Dropped::Linked => Ok(None),
            Dropped::Freed { bytes, pending } => {
                self.meta.usage.account(vol, -(bytes as i64), -1);
                if pending {
                    self.meta.gc_wanted.notify_one();
                }
                Ok(None)
            }
            Dropped::Orphaned => Ok(Some(ino)),
        }
    }

    /// Renames; returns the replaced inode if it was kept as an orphan for
    /// the caller.
    pub fn rename(&self, r: &Rename<'_>) -> Result<Option<Ino>> {
        let Rename {
            vol,
            parent,
            name,
            new_parent,
            new_name,
            flags,
            holder,
        } = *r;
        check_name(name)?;
        check_name(new_name)?;
        holder.check()?;
        if flags & !(RENAME_NOREPLACE | RENAME_EXCHANGE) != 0
            || flags == RENAME_NOREPLACE | RENAME_EXCHANGE
        {
            return Err(MetaError::Invalid(format!("rename flags {flags:#x}")));
        }
        let expires_ns = self.lease_end();
        let dropped = transact_buffered(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            t.dir(parent)?;
            t.dir(new_parent)?;
            let src = t
                .dentry(parent, name)?
                .ok_or_else(|| MetaError::not_found(entry_name(name, parent)))?;
            if parent == new_parent && name == new_name {
                return Ok((src.ino, Dropped::Linked));
            }
            let dst = t.dentry(new_parent, new_name)?;
            let src_inode = t.inode(src.ino)?;
            let src_is_dir = src_inode.kind == FileKind::Dir;
            if src_is_dir && parent != new_parent && is_ancestor(&mut t, src.ino, new_parent)? {
                return Err(MetaError::Invalid(format!(
                    "cannot move directory {} into itself",
                    src.ino
                )));
            }
            let now = now_ns();
            let mut dropped = (src.ino, Dropped::Linked);
            if flags & RENAME_EXCHANGE != 0 {
                let dst =
                    dst.ok_or_else(|| MetaError::not_found(entry_name(new_name, new_parent)))?;
                let dst_inode = t.inode(dst.ino)?;
                if dst_inode.kind == FileKind::Dir
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
                            what: entry_name(new_name, new_parent),
                        });
                    }
                    if dst.ino == src.ino {
                        // Two hard links of one file: POSIX says do nothing.
                        return Ok((src.ino, Dropped::Linked));
                    }
                    let dst_inode = t.inode(dst.ino)?;
                    let dst_is_dir = dst_inode.kind == FileKind::Dir;
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
        self.dropped(vol, dropped)
    }

    /// Entries of a directory whose names sort after `after`, at most
    /// `limit` (and at most 10,000).
    pub fn read_dir(
        &self,
        vol: VolumeId,
        ino: Ino,
        after: &[u8],
        limit: usize,
    ) -> Result<Vec<DirEntry>> {
        transact(self.meta.store(), |txn| {
            let mut t = TreeTxn::new(txn, vol);
            t.dir(ino)?;
            let prefix = keys::under(keys::DENTRY, vol, ino);
            let (mut start, end) = keys::prefix_range(&prefix);
            if !after.is_empty() {
                start = keys::dentry(vol, ino, after);
                start.push(0);
            }
            let rows = t.txn().scan(&start, &end, limit.clamp(1, MAX_READ_DIR))?;
            rows.into_iter()
                .map(|(k, v)| {
                    let d: Dentry = decode(&k, &v)?;
                    Ok(DirEntry {
                        name: keys::suffix(&k, &prefix).to_vec(),
                        ino: d.ino,
                        kind: d.kind,
                    })
                })
                .collect()
        })
    }

    pub fn read_link(&self, vol: VolumeId, ino: Ino) -> Result<Vec<u8>> {
        transact(self.meta.store(), |txn| {
            let inode = TreeTxn::new(txn, vol).inode(ino)?;
            if inode.kind != FileKind::Symlink {
                return Err(MetaError::Invalid(format!("inode {ino} is not a symlink")));
            }
            Ok(inode.target)
        })
    }
}

/// Drops one link to `ino`; frees the inode when it was the last, unless
/// `holder` has it open (then it is kept as an orphan until `expires_ns`).
fn drop_link(
    t: &mut TreeTxn<'_>,
    ino: Ino,
    mut inode: Inode,
    now: i64,
    holder: Holder<'_>,
    expires_ns: i64,
) -> Result<Dropped> {
    if inode.kind == FileKind::Dir {
        if !t.is_empty_dir(ino)? {
            return Err(MetaError::NotEmpty {
                volume: t.vol(),
                ino,
            });
        }
        let pending = release::remove_inode(t, ino)?;
        return Ok(Dropped::Freed { bytes: 0, pending });
    }
    inode.nlink = inode.nlink.saturating_sub(1);
    inode.ctime_ns = now;
    if inode.nlink == 0 {
        if orphans::keep_if_open(t, ino, inode.kind, holder, expires_ns)? {
            t.set(ino, inode);
            return Ok(Dropped::Orphaned);
        }
        let bytes = if inode.kind == FileKind::File {
            inode.size
        } else {
            0
        };
        let pending = release::remove_inode(t, ino)?;
        return Ok(Dropped::Freed { bytes, pending });
    }
    t.set(ino, inode);
    Ok(Dropped::Linked)
}

/// Moves inode `ino` from directory `from` to `to`: fixes a directory's
/// parent pointer and both parents' link counts.
fn reparent(t: &mut TreeTxn<'_>, ino: Ino, from: Ino, to: Ino, now: i64) -> Result<()> {
    let mut inode = t.inode(ino)?;
    inode.ctime_ns = now;
    if inode.kind == FileKind::Dir && from != to {
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
fn is_ancestor(t: &mut TreeTxn<'_>, ancestor: Ino, mut ino: Ino) -> Result<bool> {
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
