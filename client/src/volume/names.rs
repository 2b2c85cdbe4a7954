//! Names and attributes: each call is one metadata call on the calling
//! thread (see `meta/names.rs`). Attributes of a file this mount writes
//! show the size its uncommitted writes give it.

use std::sync::atomic::Ordering;

use tessera_common::{Attr, DirEntry, Ino, NewNode, SetAttr, StatFs};
use tonic::Code;

use crate::{meta::names::Made, ClientError, Result};

use super::{name_cache::Cached, Volume};

/// ENOENT for a name a page says is absent.
fn no_entry(parent: Ino, name: &[u8]) -> ClientError {
    ClientError::Meta {
        code: Code::NotFound,
        errno: None,
        message: format!(
            "no entry {:?} in directory {parent}",
            String::from_utf8_lossy(name)
        ),
    }
}

impl Volume {
    /// A name in a directory: from a page of the directory's names when
    /// one covers it (`name_cache.rs`), else one is fetched.
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        if self.inner.paged_lookups.load(Ordering::Relaxed) {
            match self.inner.name_cache.get(parent, name) {
                // Not a file open here; and asked again after that check,
                // since a close marks the file before it forgets it.
                Cached::Found(a)
                    if self.existing_entry(a.ino).is_none()
                        && self.inner.name_cache.get(parent, name) == Cached::Found(a.clone()) =>
                {
                    return Ok(a)
                }
                Cached::Miss => {
                    if let Some(found) = self.lookup_paged(parent, name)? {
                        return found.map(|a| self.with_pending(a));
                    }
                }
                // A name a page says is absent is asked for all the same:
                // another mount may have created it since, and an open of
                // a file another mount created and closed must find it.
                Cached::Found(_) | Cached::Stale | Cached::Absent => {}
            }
        }
        let a = self.inner.names.lookup(self.id(), parent, name)?;
        Ok(self.with_pending(a))
    }

    /// Fetches the page of `parent`'s names from `name` on; `None` from a
    /// metadata service without pages.
    fn lookup_paged(&self, parent: Ino, name: &[u8]) -> Result<Option<Result<Attr>>> {
        let cache = &self.inner.name_cache;
        let fetch = cache.begin(parent, name);
        let page = match self
            .inner
            .names
            .lookup_page(self.id(), parent, name, fetch.limit)?
        {
            Some(page) => page,
            None => {
                self.inner.paged_lookups.store(false, Ordering::Relaxed);
                return Ok(None);
            }
        };
        let found = match page.entries.first() {
            Some((n, a)) if n.as_slice() == name => Ok(a.clone()),
            _ => Err(no_entry(parent, name)),
        };
        cache.install(parent, name, fetch, page);
        Ok(Some(found))
    }

    pub fn getattr(&self, ino: Ino) -> Result<Attr> {
        let a = self.inner.names.get_attr(self.id(), ino)?;
        Ok(self.with_pending(a))
    }

    /// Changes attributes; a size change first stores what this mount has
    /// buffered for the file (or it would reappear on top of the cut).
    pub fn setattr(&self, ino: Ino, change: &SetAttr) -> Result<Attr> {
        if change.size.is_some() {
            self.block_on(self.flush(ino, None))?;
        }
        let change = SetAttr {
            session: self.inner.session,
            ..change.clone()
        };
        let a = self.inner.names.set_attr(self.id(), ino, &change);
        self.inner.syncs.changed();
        self.inner.name_cache.changed(ino);
        let a = a?;
        if change.size.is_some() {
            self.invalidate(ino);
            if let Some(e) = self.existing_entry(ino) {
                e.committed_size
                    .store(a.size, std::sync::atomic::Ordering::Release);
            }
        }
        Ok(self.with_pending(a))
    }

    /// Creates a file, directory, symlink or special file.
    pub fn make_node(&self, parent: Ino, name: &[u8], new: &NewNode<'_>) -> Result<Made> {
        let made = self.inner.names.make_node(self.id(), parent, name, new);
        self.inner.syncs.changed();
        match &made {
            Ok(m) => self.inner.name_cache.created(parent, name, &m.node),
            Err(_) => self.inner.name_cache.forget_dir(parent),
        }
        made
    }

    pub fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        let a = self.inner.names.link(self.id(), ino, new_parent, new_name);
        self.inner.syncs.changed();
        let cache = &self.inner.name_cache;
        cache.changed(ino);
        match &a {
            Ok(a) => cache.created(new_parent, new_name, a),
            Err(_) => cache.forget_dir(new_parent),
        }
        Ok(self.with_pending(a?))
    }

    /// unlink, or rmdir with `dir`. A file this mount has open lives on
    /// for its handles (see `orphans.rs`).
    pub fn unlink(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        let _removal = self.inner.removals.begin();
        let open = if dir { Vec::new() } else { self.open_inos() };
        let done = self
            .inner
            .names
            .unlink(self.id(), parent, name, dir, open, self.inner.session);
        self.inner.syncs.changed();
        match &done {
            Ok(_) => self.inner.name_cache.removed(parent, name),
            Err(_) => self.inner.name_cache.forget_dir(parent),
        }
        self.adopt_orphans(&done?);
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
        let _removal = self.inner.removals.begin();
        let done = self.inner.names.rename(
            self.id(),
            parent,
            name,
            new_parent,
            new_name,
            flags,
            self.open_inos(),
            self.inner.session,
        );
        self.inner.syncs.changed();
        // The moved inode, a replaced one and both directories change:
        // both directories' pages go.
        self.inner.name_cache.forget_dir(parent);
        self.inner.name_cache.forget_dir(new_parent);
        self.adopt_orphans(&done?);
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
        let before = self.inner.syncs.begin();
        self.inner.names.sync(self.id())?;
        self.inner.syncs.durable(before);
        Ok(())
    }

    /// fsync: the file's buffered data is stored and committed, and its
    /// name and attributes are durable. The commit of the data is durable
    /// and makes every change acknowledged before it durable too (this
    /// mount's and others'): after one, only a change of names by this
    /// mount since it began leaves a sync to ask for (one round trip less
    /// per fsync of a database).
    pub fn fsync(&self, ino: Ino, fh: u64) -> Result<()> {
        let committing = self.has_buffered(ino);
        self.block_on(self.flush(ino, Some(fh)))?;
        if committing && self.inner.syncs.all_durable() {
            return Ok(());
        }
        self.sync()
    }
}
