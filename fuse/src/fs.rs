//! `TesseraFs`: the fuser::Filesystem implementation.

use std::{
    ffi::OsStr,
    future::Future,
    os::unix::ffi::OsStrExt,
    path::Path,
    time::{Duration, SystemTime},
};

use fuser::{
    BsdFileFlags, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use tessera_client::{ClientError, DirEntry, FileKind, Volume};
use tracing::{debug, warn};

use crate::{
    attr::{errno, file_attr, file_type, kind_of_mode, ns_of, IO_SIZE},
    dirs::DirHandles,
};

/// How long the kernel may cache attributes and names.
const TTL: Duration = tessera_client::ATTR_TTL;
/// Entries fetched per metadata call when listing a directory.
const DIR_PAGE: u32 = 1000;

pub struct TesseraFs {
    vol: Volume,
    rt: tokio::runtime::Handle,
    dirs: DirHandles,
}

impl TesseraFs {
    pub fn new(vol: Volume, rt: tokio::runtime::Handle) -> Self {
        TesseraFs {
            vol,
            rt,
            dirs: DirHandles::default(),
        }
    }

    /// Runs a call of the data path (it may start background work) on the
    /// shared runtime.
    fn run<T>(
        &self,
        op: &str,
        f: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Errno> {
        self.result(op, self.rt.block_on(f))
    }

    /// Runs a call on names and attributes on this thread
    /// (`Volume::block_on_names`).
    fn run_names<T>(
        &self,
        op: &str,
        f: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, Errno> {
        self.result(op, self.vol.block_on_names(&self.rt, f))
    }

    fn result<T>(&self, op: &str, r: Result<T, ClientError>) -> Result<T, Errno> {
        r.map_err(|e| {
            let code = e.errno();
            if code == libc::EIO {
                warn!(volume = self.vol.name(), op, error = %e, "I/O error");
            } else {
                debug!(volume = self.vol.name(), op, error = %e, "request failed");
            }
            errno(&e)
        })
    }

    fn entry(&self, reply: ReplyEntry, r: Result<tessera_client::Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn empty(&self, reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    async fn list(vol: &Volume, ino: u64) -> Result<Vec<DirEntry>, ClientError> {
        let mut all = Vec::new();
        let mut after = Vec::new();
        loop {
            let page = vol.read_dir(ino, &after, DIR_PAGE).await?;
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
}

impl Filesystem for TesseraFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(IO_SIZE);
        let _ = config.set_max_readahead(IO_SIZE);
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.rt.block_on(self.vol.flush_all()) {
            warn!(volume = self.vol.name(), error = %e, "flush at unmount failed");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.run_names("lookup", self.vol.lookup(parent.0, name.as_bytes()));
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.run_names("getattr", self.vol.getattr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
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
        let r = self.run(
            "setattr",
            self.vol.setattr(
                ino.0,
                mode.map(|m| m & 0o7777),
                uid,
                gid,
                size,
                atime.map(ns_of),
                mtime.map(ns_of),
            ),
        );
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.run_names("readlink", self.vol.read_link(ino.0)) {
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
        let r = self.run_names(
            "mknod",
            self.vol.make_node(
                parent.0,
                name.as_bytes(),
                kind,
                perm,
                req.uid(),
                req.gid(),
                rdev,
                b"",
            ),
        );
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
        let r = self.run_names(
            "mkdir",
            self.vol.make_node(
                parent.0,
                name.as_bytes(),
                FileKind::Dir,
                perm,
                req.uid(),
                req.gid(),
                0,
                b"",
            ),
        );
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run_names("unlink", self.vol.unlink(parent.0, name.as_bytes(), false));
        self.empty(reply, r);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run_names("rmdir", self.vol.unlink(parent.0, name.as_bytes(), true));
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
        let r = self.run_names(
            "symlink",
            self.vol.make_node(
                parent.0,
                link_name.as_bytes(),
                FileKind::Symlink,
                0o777,
                req.uid(),
                req.gid(),
                0,
                target.as_os_str().as_bytes(),
            ),
        );
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
        let r = self.run_names(
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
        let r = self.run_names(
            "link",
            self.vol.link(ino.0, newparent.0, newname.as_bytes()),
        );
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.vol.open_file(ino.0);
        reply.opened(FileHandle(0), FopenFlags::empty());
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
        match self.run("read", self.vol.read(ino.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.run("write", self.vol.write(ino.0, offset, data)) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let r = self.run("flush", self.vol.flush(ino.0));
        self.empty(reply, r);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run("release", async {
            let flushed = self.vol.flush(ino.0).await;
            let released = self.vol.release_file(ino.0).await;
            flushed.and(released)
        });
        self.empty(reply, r);
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.run("fsync", self.vol.fsync(ino.0));
        self.empty(reply, r);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.run_names("opendir", Self::list(&self.vol, ino.0)) {
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
        let r = self.run_names("fsyncdir", self.vol.sync());
        self.empty(reply, r);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        const BSIZE: u64 = 4096;
        match self.run_names("statfs", self.vol.stat_fs()) {
            Ok((size, used, inodes)) => {
                let blocks = size / BSIZE;
                let free = size.saturating_sub(used) / BSIZE;
                let free_inodes = u64::from(u32::MAX);
                reply.statfs(
                    blocks,
                    free,
                    free,
                    inodes + free_inodes,
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
        let r = self.run_names(
            "setxattr",
            self.vol
                .set_xattr(ino.0, name.as_bytes(), value, flags as u32),
        );
        self.empty(reply, r);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.run_names("getxattr", self.vol.get_xattr(ino.0, name.as_bytes())) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(Errno::ERANGE),
            Err(e) => reply.error(e),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.run_names("listxattr", self.vol.list_xattr(ino.0)) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32);
                } else if buf.len() <= size as usize {
                    reply.data(&buf);
                } else {
                    reply.error(Errno::ERANGE);
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.run_names("removexattr", self.vol.remove_xattr(ino.0, name.as_bytes()));
        self.empty(reply, r);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = mode & !umask & 0o7777;
        let r = self.run_names(
            "create",
            self.vol.make_node(
                parent.0,
                name.as_bytes(),
                FileKind::File,
                perm,
                req.uid(),
                req.gid(),
                0,
                b"",
            ),
        );
        match r {
            Ok(a) => {
                self.vol.open_created_file(a.ino);
                reply.created(
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                    FileHandle(0),
                    FopenFlags::empty(),
                );
            }
            Err(e) => reply.error(e),
        }
    }
}
