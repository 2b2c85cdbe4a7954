//! `TesseraFs`: the state behind the FUSE methods (`fs.rs`), and what they
//! share: running a call and mapping its error, creating a node, listing
//! a directory.

use std::{ffi::OsStr, os::unix::ffi::OsStrExt};

use fuser::{Errno, Generation, ReplyEmpty, ReplyEntry, ReplyXattr, Request};
use tessera_client::{ClientError, Made, Volume};
use tessera_common::{Attr, DirEntry, FileKind, Ino, NewNode};
use tracing::{debug, warn};

use crate::{
    attr::{errno, file_attr},
    caps::Caps,
    dir_attrs::{DirAttrs, TTL},
    dirs::DirHandles,
    locks::Handles,
};

/// Entries fetched per metadata call when listing a directory.
const DIR_PAGE: u32 = 1000;

pub struct TesseraFs {
    pub(crate) vol: Volume,
    /// Open file handles and the lock owners seen on them.
    pub(crate) handles: Handles,
    pub(crate) dirs: DirHandles,
    pub(crate) dir_attrs: DirAttrs,
    pub(crate) caps: Caps,
}

impl TesseraFs {
    pub fn new(vol: Volume) -> Self {
        TesseraFs {
            vol,
            handles: Handles::default(),
            dirs: DirHandles::default(),
            dir_attrs: DirAttrs::default(),
            caps: Caps::default(),
        }
    }

    /// The errno of a failed call, logged: EIO as a warning (something is
    /// wrong), the others at debug (an application's ENOENT is normal).
    pub(crate) fn result<T>(&self, op: &str, r: Result<T, ClientError>) -> Result<T, Errno> {
        r.map_err(|e| {
            if e.errno() == libc::EIO {
                warn!(volume = self.vol.name(), op, error = %e, "I/O error");
            } else {
                debug!(volume = self.vol.name(), op, error = %e, "request failed");
            }
            errno(&e)
        })
    }

    /// Runs a call of the data path on the volume's runtime.
    pub(crate) fn data<T>(
        &self,
        op: &str,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Errno> {
        self.result(op, self.vol.block_on(f))
    }

    pub(crate) fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn empty(&self, reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    /// Creates a node; keeps its parent's attributes as the change left
    /// them, for the getattr the kernel sends next.
    pub(crate) fn make(
        &self,
        op: &str,
        req: &Request,
        parent: Ino,
        name: &OsStr,
        new: NewNode<'_>,
    ) -> Result<Attr, Errno> {
        let new = NewNode {
            uid: req.uid(),
            gid: req.gid(),
            ..new
        };
        let epoch = self.dir_attrs.epoch();
        let Made { node, parent: dir } =
            self.result(op, self.vol.make_node(parent, name.as_bytes(), &new))?;
        match dir {
            Some(d) => self.dir_attrs.put(d, epoch),
            // From a metadata service that does not send it.
            None => self.dir_attrs.forget(parent),
        }
        Ok(node)
    }

    /// The file `name` in `parent` that another mount created while this
    /// one was creating it, checked for what open(2) with `flags` needs
    /// (the kernel checked the directory only): a regular file the caller
    /// may open that way, truncated when asked.
    pub(crate) fn existing_for_create(
        &self,
        req: &Request,
        parent: Ino,
        name: &OsStr,
        flags: i32,
    ) -> Result<Attr, Errno> {
        let a = self.result("create", self.vol.lookup(parent, name.as_bytes()))?;
        if a.kind != FileKind::File {
            return Err(if a.kind == FileKind::Dir {
                Errno::EISDIR
            } else {
                Errno::EEXIST
            });
        }
        let mut want = match flags & libc::O_ACCMODE {
            libc::O_RDONLY => 4,
            libc::O_WRONLY => 2,
            _ => 6,
        };
        if flags & libc::O_TRUNC != 0 {
            want |= 2;
        }
        let bits = if req.uid() == 0 {
            7
        } else if req.uid() == a.uid {
            a.perm >> 6
        } else if req.gid() == a.gid {
            a.perm >> 3
        } else {
            a.perm
        };
        if bits & want != want {
            return Err(Errno::EACCES);
        }
        if flags & libc::O_TRUNC != 0 && a.size > 0 {
            let cut = tessera_common::SetAttr {
                size: Some(0),
                ..Default::default()
            };
            self.caps.forget(a.ino);
            let a = self.result("create", self.vol.setattr(a.ino, &cut))?;
            self.caps.forget(a.ino);
            if !crate::set_ids::may_keep_set_ids(req.pid(), req.uid()) {
                return self.drop_set_ids(&a);
            }
            return Ok(a);
        }
        Ok(a)
    }

    pub(crate) fn list(&self, ino: Ino) -> Result<Vec<DirEntry>, ClientError> {
        let mut all = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = self.vol.read_dir(ino, &after, DIR_PAGE)?;
            let done = page.len() < DIR_PAGE as usize;
            if let Some(last) = page.last() {
                after = last.name.clone();
            }
            all.extend(page);
            if done {
                return Ok(all);
            }
        }
    }

    /// Answers an xattr question of the size `size` allows (0: the size).
    pub(crate) fn xattr_reply(reply: ReplyXattr, size: u32, value: &[u8]) {
        if size == 0 {
            reply.size(value.len() as u32);
        } else if value.len() <= size as usize {
            reply.data(value);
        } else {
            reply.error(Errno::ERANGE);
        }
    }
}

pub(crate) fn node(kind: FileKind, perm: u32, rdev: u32, target: &[u8]) -> NewNode<'_> {
    NewNode {
        rdev,
        target,
        ..NewNode::new(kind, perm)
    }
}
