//! `TesseraFs`: the fuser::Filesystem implementation. Each method parses
//! its arguments, calls one `Volume` function and maps the error to an
//! errno. Calls on names and attributes run on the FUSE worker thread
//! itself (one metadata call each); calls of the data path run on the
//! volume's runtime, the worker thread waiting for them.
//!
//! The kernel's own questions that the mount answers without a round
//! trip live here too: a directory's attributes after this mount's
//! create (`dir_attrs.rs`) and an open file's capabilities (`caps.rs`).

use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path, time::SystemTime};

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyLock, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use tessera_common::{FileKind, SetAttr};
use tracing::warn;

use crate::{
    attr::{file_attr, file_type, kind_of_mode, ns_of, IO_SIZE},
    caps::CAPS,
    dir_attrs::TTL,
    locks::LockArgs,
    set_ids::may_keep_set_ids,
    state::{node, TesseraFs},
};

/// Statfs's block size.
const BSIZE: u64 = 4096;

impl Filesystem for TesseraFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(IO_SIZE);
        let _ = config.set_max_readahead(IO_SIZE);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        // Locks go to the volume, so they hold across every mount.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_POSIX_LOCKS);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_FLOCK_LOCKS);
        // The mount drops set-ID bits on a write, a truncate and a chown
        // itself (`set_ids.rs`). In return the kernel marks a file it found
        // without them and without capabilities, and stops asking for its
        // `security.capability` before every write until its attributes
        // are next refreshed: one FUSE round trip less per write.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        Ok(())
    }

    fn destroy(&mut self) {
        self.vol.end_lock_waits();
        if let Err(e) = self.vol.flush_for_unmount() {
            warn!(volume = self.vol.name(), error = %e, "flush at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.result("lookup", self.vol.lookup(parent.0, name.as_bytes()));
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = match self.dir_attrs.get(ino.0) {
            Some(a) => Ok(a),
            None => self.result("getattr", self.vol.getattr(ino.0)),
        };
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        self.dir_attrs.forget(ino.0);
        self.caps.forget(ino.0);
        let change = SetAttr {
            perm: mode.map(|m| m & 0o7777),
            uid,
            gid,
            size,
            atime_ns: atime.map(ns_of),
            mtime_ns: mtime.map(ns_of),
            session: 0,
        };
        let mut r = self.result("setattr", self.vol.setattr(ino.0, &change));
        if let Ok(a) = &r {
            // A truncate by a caller without CAP_FSETID and a change of
            // owner drop set-ID bits (the kernel leaves that to us,
            // `set_ids.rs`).
            let drops = (size.is_some() && !may_keep_set_ids(req.pid(), req.uid()))
                || ((uid.is_some() || gid.is_some()) && a.kind != FileKind::Dir);
            if drops && mode.is_none() {
                r = self.drop_set_ids(a);
            }
        }
        self.caps.forget(ino.0);
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.result("readlink", self.vol.read_link(ino.0)) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let Some(kind) = kind_of_mode(mode) else {
            return reply.error(Errno::EINVAL);
        };
        let perm = mode & !umask & 0o7777;
        let r = self.make("mknod", req, parent.0, name, node(kind, perm, rdev, b""));
        self.entry(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let perm = mode & !umask & 0o7777;
        let r = self.make(
            "mkdir",
            req,
            parent.0,
            name,
            node(FileKind::Dir, perm, 0, b""),
        );
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.dir_attrs.forget(parent.0);
        let r = self.result("unlink", self.vol.unlink(parent.0, name.as_bytes(), false));
        self.empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        // The removed directory may be kept too; its inode is not known.
        self.dir_attrs.forget_all();
        let r = self.result("rmdir", self.vol.unlink(parent.0, name.as_bytes(), true));
        self.empty(reply, r);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let target = target.as_os_str().as_bytes();
        let new = node(FileKind::Symlink, 0o777, 0, target);
        let r = self.make("symlink", req, parent.0, link_name, new);
        self.entry(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // The moved entry may be a directory: its ctime and parent change.
        // Its inode is not known here, so nothing is kept across a rename.
        self.dir_attrs.forget_all();
        let r = self.result(
            "rename",
            self.vol.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
        );
        self.empty(reply, r);
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        self.dir_attrs.forget(newparent.0);
        let r = self.result(
            "link",
            self.vol.link(ino.0, newparent.0, newname.as_bytes()),
        );
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.handles.open();
        if let Err(e) = self.result("open", self.vol.open_file(ino.0, fh.0, None)) {
            return reply.error(e);
        }
        self.caps.opened(ino.0, None);
        reply.opened(fh, FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.result("read", self.vol.read_on_thread(ino.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let kill_set_ids = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        if let Err(e) = self.drop_privileges_for_write(ino.0, kill_set_ids) {
            return reply.error(e);
        }
        match self.data("write", self.vol.write(ino.0, fh.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // A close: the closing process's record locks on the file go
        // (the kernel leaves that to the file system), after its writes.
        let r = self.data("flush", self.vol.flush(ino.0, Some(fh.0)));
        self.handles.flushed(fh.0, lock_owner.0);
        self.vol.release_locks(ino.0, lock_owner.0);
        self.empty(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.caps.released(ino.0);
        // The last close of an open file: its flock and its open file
        // description locks go, after what it wrote since its last flush
        // (a shared mapping's pages) is stored, or owed until it is.
        let flushed = self.data("release", self.vol.flush(ino.0, Some(fh.0)));
        let owners = self.handles.released(fh.0);
        for owner in lock_owner.map(|o| o.0).into_iter().chain(owners) {
            self.vol.release_locks(ino.0, owner);
        }
        let released = self.data("release", self.vol.release_file(ino.0, fh.0));
        self.empty(reply, flushed.and(released));
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.result("fsync", self.vol.fsync(ino.0, fh.0));
        self.empty(reply, r);
    }

    fn getlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let ask = LockArgs {
            fh: fh.0,
            ino: ino.0,
            owner: lock_owner.0,
            pid,
            thread: req.pid(),
            start,
            end,
            typ,
        };
        TesseraFs::getlk(self, ask, reply);
    }

    fn setlk(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let ask = LockArgs {
            fh: fh.0,
            ino: ino.0,
            owner: lock_owner.0,
            pid,
            thread: req.pid(),
            start,
            end,
            typ,
        };
        TesseraFs::setlk(self, ask, sleep, reply);
    }

    /// SEEK_DATA and SEEK_HOLE (the kernel answers the other whences).
    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let data = match whence {
            libc::SEEK_DATA => true,
            libc::SEEK_HOLE => false,
            _ => return reply.error(Errno::EINVAL),
        };
        let Ok(offset) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        match self.data("lseek", self.vol.seek_data_or_hole(ino.0, offset, data)) {
            Ok(at) => reply.offset(at as i64),
            Err(e) => reply.error(e),
        }
    }

    /// Tessera reserves no space ahead of writes, so it cannot promise
    /// what fallocate promises: a clear EOPNOTSUPP (glibc's
    /// posix_fallocate then writes the range itself).
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.result("opendir", self.list(ino.0)) {
            Ok(entries) => reply.opened(FileHandle(self.dirs.insert(entries)), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.dirs.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // Offsets: 1 is ".", 2 is "..", 2+i+1 follows entry i.
        let mut next = offset;
        if next == 0 {
            if reply.add(ino, 1, fuser::FileType::Directory, ".") {
                return reply.ok();
            }
            next = 1;
        }
        if next == 1 {
            // The kernel answers ".." lookups itself; any inode will do here.
            if reply.add(ino, 2, fuser::FileType::Directory, "..") {
                return reply.ok();
            }
            next = 2;
        }
        for (i, e) in entries.iter().enumerate().skip((next - 2) as usize) {
            let cookie = 2 + i as u64 + 1;
            if reply.add(
                INodeNo(e.ino),
                cookie,
                file_type(e.kind),
                OsStr::from_bytes(&e.name),
            ) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.dirs.remove(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.result("fsyncdir", self.vol.sync());
        self.empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.result("statfs", self.vol.stat_fs()) {
            Ok(s) => {
                let blocks = s.size / BSIZE;
                let free = s.size.saturating_sub(s.used) / BSIZE;
                let free_inodes = u64::from(u32::MAX);
                reply.statfs(
                    blocks,
                    free,
                    free,
                    s.inodes + free_inodes,
                    free_inodes,
                    BSIZE as u32,
                    255,
                    BSIZE as u32,
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        self.dir_attrs.forget(ino.0);
        self.caps.forget(ino.0);
        let set = self
            .vol
            .set_xattr(ino.0, name.as_bytes(), value, flags as u32);
        self.caps.forget(ino.0);
        let r = self.result("setxattr", set);
        self.empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = name.as_bytes();
        let got = match name == CAPS {
            true => self.capabilities(ino.0),
            false => self.vol.get_xattr(ino.0, name).map(Some),
        };
        match self.result("getxattr", got) {
            Ok(Some(v)) => Self::xattr_reply(reply, size, &v),
            Ok(None) => reply.error(Errno::from_i32(libc::ENODATA)),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.result("listxattr", self.vol.list_xattr(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                Self::xattr_reply(reply, size, &buf);
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        self.dir_attrs.forget(ino.0);
        let r = self.result("removexattr", self.remove_xattr_of(ino.0, name.as_bytes()));
        self.empty(reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = mode & !umask & 0o7777;
        let since = self.vol.removals_finished();
        let mut r = self.make(
            "create",
            req,
            parent.0,
            name,
            node(FileKind::File, perm, 0, b""),
        );
        let mut created = true;
        if r == Err(Errno::EEXIST) && flags & libc::O_EXCL == 0 {
            // Another mount created it since the kernel looked: open(2)
            // without O_EXCL opens what is there.
            created = false;
            r = self.existing_for_create(req, parent.0, name, flags);
            if r == Err(Errno::ENOENT) {
                // And removed again since: create it after all.
                created = true;
                r = self.make(
                    "create",
                    req,
                    parent.0,
                    name,
                    node(FileKind::File, perm, 0, b""),
                );
            }
        }
        let r = r.and_then(|a| {
            let fh = self.handles.open();
            let opened = self.vol.open_file(a.ino, fh.0, Some(since));
            self.result("create", opened).map(|()| (a, fh))
        });
        match r {
            Ok((a, fh)) => {
                // A new file has no xattrs: the question before its first
                // write is answered here as well.
                self.caps.opened(a.ino, created.then_some(a.perm));
                reply.created(&TTL, &file_attr(&a), Generation(0), fh, FopenFlags::empty());
            }
            Err(e) => reply.error(e),
        }
    }
}
