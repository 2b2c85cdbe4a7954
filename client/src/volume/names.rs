//! Names and attributes: each call is one metadata call on the calling
//! thread (see `meta/names.rs`). Attributes of a file this mount writes
//! show the size its uncommitted writes give it.

use tessera_common::{Attr, DirEntry, Ino, NewNode, SetAttr, StatFs};

use crate::{meta::names::Made, Result};

use super::Volume;

impl Volume {
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let a = self.inner.names.lookup(self.id(), parent, name)?;
        Ok(self.with_pending(a))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let a = self.inner.names.get_attr(self.id(), ino)?;
        Ok(self.with_pending(a))
    }

    /// Changes attributes; a size change first stores what this mount has
    /// buffered for the file (or it would reappear on top of the cut).
    pub fn setattr(&self, ino: Ino, change: &SetAttr) -> Result<Attr> {
        if change.size.is_some() {
            self.block_on(self.flush(ino))?;
        }
        let change = SetAttr {
            session: self.inner.session,
            ..change.clone()
        };
        let a = self.inner.names.set_attr(self.id(), ino, &change)?;
        if change.size.is_some() {
            self.invalidate(ino);
        }
        Ok(self.with_pending(a))
    }

    /// Creates a file, directory, symlink or special file.
    pub fn make_node(&self, parent: Ino, name: &[u8], new: &NewNode<'_>) -> Result<Made> {
        self.inner.names.make_node(self.id(), parent, name, new)
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        let a = self
            .inner
            .names
            .link(self.id(), ino, new_parent, new_name)?;
        Ok(self.with_pending(a))
    }

    /// unlink, or rmdir with `dir`. A file this mount has open lives on
    /// for its handles (see `orphans.rs`).
    pub fn unlink(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        let open = if dir { Vec::new() } else { self.open_inos() };
        let done =
            self.inner
                .names
                .unlink(self.id(), parent, name, dir, open, self.inner.session)?;
        self.adopt_orphans(&done);
        Ok(())
    }

    /// rename(2), with its flags.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        let done = self.inner.names.rename(
            self.id(),
            parent,
            name,
            new_parent,
            new_name,
            flags,
            self.open_inos(),
            self.inner.session,
        )?;
        self.adopt_orphans(&done);
        Ok(())
    }

    /// Directory entries after `after` (by name), at most `limit`.
    pub fn read_dir(&self, ino: Ino, after: &[u8], limit: u32) -> Result<Vec<DirEntry>> {
        self.inner.names.read_dir(self.id(), ino, after, limit)
    }

    pub fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        self.inner.names.read_link(self.id(), ino)
    }

    pub fn stat_fs(&self) -> Result<StatFs> {
        self.inner.names.stat_fs(self.id())
    }

    /// Makes every change of names and attributes acknowledged so far
    /// durable: the metadata service acknowledges them before its fsync,
    /// as a local file system does (fsyncdir).
    pub fn sync(&self) -> Result<()> {
        self.inner.names.sync(self.id())
    }

    /// fsync: the file's buffered data is stored and committed, and its
    /// name and attributes are durable.
    pub fn fsync(&self, ino: Ino) -> Result<()> {
        self.block_on(self.flush(ino))?;
        self.sync()
    }
}
