//! `Volume`: one mounted volume as the FUSE adapter and the tools see it:
//! file-tree calls to the metadata service and the file data path.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures::future::join_all;
use tessera_common::{is_inline, overlay, Codec, Ino, Protection, VolumeId};
use tessera_proto::{pb, FileKind};
use tokio::sync::Semaphore;
use tracing::warn;

mod flush;
mod orphans;
mod xattrs;

use crate::{
    blocks::BlockIds,
    cache::BlockCache,
    dir_attrs::DirAttrs,
    nodes::Nodes,
    stripe::{read_range, BlockRef, WHOLE_BLOCK_AT},
    write::{Extent, FileState},
    ClientError, MetaConn, Result,
};

/// Attributes of an inode as the client reports them (committed attributes
/// with the size grown by this mount's uncommitted writes).
#[derive(Clone, Debug)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
}

#[derive(Clone, Debug)]
pub struct VolumeOptions {
    /// Blocks being stored at once, over all files (memory bound: 4 MiB each).
    pub max_inflight_blocks: usize,
    /// Decoded blocks kept for degraded reads.
    pub cached_blocks: usize,
    /// The metadata service's address, for calls on names and attributes
    /// made through `block_on_names`: each calling thread then gets its
    /// own connection (see `local.rs`). None: they use the shared one.
    pub thread_meta_addr: Option<String>,
    /// Keep blocks of at most `INLINE_MAX` bytes in the metadata service
    /// (if it can) instead of as stripes on the storage nodes.
    pub inline_blocks: bool,
}

impl Default for VolumeOptions {
    fn default() -> Self {
        VolumeOptions {
            max_inflight_blocks: 12,
            cached_blocks: 8,
            thread_meta_addr: None,
            inline_blocks: true,
        }
    }
}

/// An extent's bytes as the block stored from them.
struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Committed slices of one file, as last fetched.
struct Slices {
    size: u64,
    list: Vec<pb::Slice>,
    /// The bytes of the inline blocks the slices point into.
    inline: HashMap<tessera_common::BlockId, Bytes>,
}

/// Bytes a sequential reader fetches ahead of where it reads.
const READ_AHEAD: u64 = 8 << 20;

#[derive(Default)]
struct FileEntry {
    state: Mutex<FileState>,
    /// Where the last read ended: a read starting there is sequential and
    /// reads ahead.
    read_end: std::sync::atomic::AtomicU64,
    /// Committed slices, and a generation bumped by every change, so a fetch
    /// that raced with a commit is not cached.
    slices: Mutex<(u64, Option<Arc<Slices>>)>,
    /// Whether the file is known to have no capabilities (`xattrs.rs`).
    caps: xattrs::CapsMark,
}

struct Inner {
    meta: MetaConn,
    packer: flush::Packer,
    /// The runtime the volume was opened on, for background tasks.
    rt: tokio::runtime::Handle,
    /// This mount's session, which holds its orphans (see `orphans.rs`).
    session: u64,
    orphans: Mutex<std::collections::HashSet<Ino>>,
    renewing: std::sync::atomic::AtomicBool,
    id: VolumeId,
    name: String,
    codec: Codec,
    min_durable: usize,
    nodes: Nodes,
    cache: BlockCache,
    block_ids: BlockIds,
    inflight: Arc<Semaphore>,
    files: Mutex<HashMap<Ino, Arc<FileEntry>>>,
    dir_attrs: DirAttrs,
    thread_meta_addr: Option<String>,
    /// The metadata service keeps inline blocks (`INLINE_MAX`).
    inline_blocks: bool,
}

#[derive(Clone)]
pub struct Volume {
    inner: Arc<Inner>,
}

fn attr_from(a: pb::Attr) -> Result<Attr> {
    Ok(Attr {
        ino: a.ino,
        kind: FileKind::try_from(a.kind)?,
        perm: (a.perm & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        size: a.size,
        atime_ns: a.atime_ns,
        mtime_ns: a.mtime_ns,
        ctime_ns: a.ctime_ns,
    })
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Volume {
    /// Opens volume `name` through the metadata service.
    pub async fn open(meta: MetaConn, name: &str, options: VolumeOptions) -> Result<Volume> {
        let v = meta
            .clone()
            .get_volume(pb::GetVolumeRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner();
        let protection: Protection = v.protection.parse()?;
        let nodes = Nodes::load(meta.clone(), protection).await?;
        Ok(Volume {
            inner: Arc::new(Inner {
                packer: flush::Packer::default(),
                rt: tokio::runtime::Handle::current(),
                session: orphans::new_session(),
                orphans: Mutex::default(),
                renewing: Default::default(),
                block_ids: BlockIds::new(meta.clone()),
                meta,
                id: v.id,
                name: v.name,
                codec: Codec::new(protection),
                min_durable: match v.min_durable {
                    0 => protection.min_durable(),
                    n => n as usize,
                },
                nodes,
                cache: BlockCache::new(options.cached_blocks),
                inflight: Arc::new(Semaphore::new(options.max_inflight_blocks.max(1))),
                files: Mutex::new(HashMap::new()),
                dir_attrs: DirAttrs::default(),
                thread_meta_addr: options.thread_meta_addr,
                inline_blocks: v.inline_blocks && options.inline_blocks,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn id(&self) -> VolumeId {
        self.inner.id
    }

    fn meta(&self) -> MetaConn {
        crate::local::active_conn().unwrap_or_else(|| self.inner.meta.clone())
    }

    /// Runs `f`, a call on names and attributes (lookup, getattr, create,
    /// unlink, rename, readdir, xattrs, statfs, sync: calls that make
    /// metadata calls and start no background work), to completion on
    /// this thread. With `thread_meta_addr` set, it runs on the thread's
    /// own runtime and connection, which saves two thread hand-offs per
    /// call; otherwise on `rt`.
    pub fn block_on_names<T>(
        &self,
        rt: &tokio::runtime::Handle,
        f: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match &self.inner.thread_meta_addr {
            Some(addr) => crate::local::block_on(addr, f),
            None => rt.block_on(f),
        }
    }

    fn entry(&self, ino: Ino) -> Arc<FileEntry> {
        self.inner
            .files
            .lock()
            .expect("files lock")
            .entry(ino)
            .or_default()
            .clone()
    }

    fn existing_entry(&self, ino: Ino) -> Option<Arc<FileEntry>> {
        self.inner
            .files
            .lock()
            .expect("files lock")
            .get(&ino)
            .cloned()
    }

    /// Grows a committed size by this mount's uncommitted writes.
    fn with_pending(&self, mut a: Attr) -> Attr {
        if let Some(e) = self.existing_entry(a.ino) {
            let st = e.state.lock().expect("file state lock");
            a.size = a.size.max(st.pending_end());
        }
        a
    }

    // ---------- names and attributes ----------

    pub async fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr> {
        let req = pb::LookupRequest {
            volume: self.id(),
            parent,
            name: Bytes::copy_from_slice(name),
        };
        let a = attr_from(self.meta().lookup(req).await?.into_inner())?;
        Ok(self.with_pending(a))
    }

    pub async fn getattr(&self, ino: Ino) -> Result<Attr> {
        if let Some(a) = self.inner.dir_attrs.get(ino) {
            return Ok(a);
        }
        let req = pb::GetAttrRequest {
            volume: self.id(),
            ino,
        };
        let a = attr_from(self.meta().get_attr(req).await?.into_inner())?;
        Ok(self.with_pending(a))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn setattr(
        &self,
        ino: Ino,
        perm: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime_ns: Option<i64>,
        mtime_ns: Option<i64>,
    ) -> Result<Attr> {
        self.inner.dir_attrs.forget(ino);
        if size.is_some() {
            // Buffered bytes must land before the cut, or they would
            // reappear on top of it.
            self.flush(ino).await?;
        }
        let req = pb::SetAttrRequest {
            volume: self.id(),
            ino,
            perm,
            uid,
            gid,
            size,
            atime_ns,
            mtime_ns,
        };
        let a = attr_from(self.meta().set_attr(req).await?.into_inner())?;
        if size.is_some() {
            self.invalidate(ino);
        }
        Ok(self.with_pending(a))
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn make_node(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        target: &[u8],
    ) -> Result<Attr> {
        let req = pb::MakeNodeRequest {
            volume: self.id(),
            parent,
            name: Bytes::copy_from_slice(name),
            kind: kind as u32,
            perm,
            uid,
            gid,
            rdev,
            symlink_target: Bytes::copy_from_slice(target),
        };
        let epoch = self.inner.dir_attrs.epoch();
        let mut reply = self.meta().make_node(req).await?.into_inner();
        match reply.parent.take() {
            Some(p) => self.inner.dir_attrs.put(attr_from(*p)?, epoch),
            // From a metadata service that does not send it.
            None => self.inner.dir_attrs.forget(parent),
        }
        attr_from(reply)
    }

    pub async fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        self.inner.dir_attrs.forget(new_parent);
        let req = pb::LinkRequest {
            volume: self.id(),
            ino,
            new_parent,
            new_name: Bytes::copy_from_slice(new_name),
        };
        let a = attr_from(self.meta().link(req).await?.into_inner())?;
        Ok(self.with_pending(a))
    }

    pub async fn unlink(&self, parent: Ino, name: &[u8], dir: bool) -> Result<()> {
        if dir {
            // The removed directory may be kept too; its inode is not known.
            self.inner.dir_attrs.forget_all();
        } else {
            self.inner.dir_attrs.forget(parent);
        }
        let req = pb::UnlinkRequest {
            volume: self.id(),
            parent,
            name: Bytes::copy_from_slice(name),
            dir,
            open: if dir { vec![] } else { self.open_inos() },
            session: self.inner.session,
        };
        let resp = self.meta().unlink(req).await?.into_inner();
        self.adopt_orphans(&resp);
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<()> {
        // The moved entry may be a directory: its ctime and parent change.
        // Its inode is not known here, so nothing is kept across a rename.
        self.inner.dir_attrs.forget_all();
        let req = pb::RenameRequest {
            volume: self.id(),
            parent,
            name: Bytes::copy_from_slice(name),
            new_parent,
            new_name: Bytes::copy_from_slice(new_name),
            flags,
            open: self.open_inos(),
            session: self.inner.session,
        };
        let resp = self.meta().rename(req).await?.into_inner();
        self.adopt_orphans(&resp);
        Ok(())
    }

    /// Directory entries after `after` (by name), at most `limit`.
    pub async fn read_dir(&self, ino: Ino, after: &[u8], limit: u32) -> Result<Vec<DirEntry>> {
        let req = pb::ReadDirRequest {
            volume: self.id(),
            ino,
            after: Bytes::copy_from_slice(after),
            limit,
        };
        self.meta()
            .read_dir(req)
            .await?
            .into_inner()
            .entries
            .into_iter()
            .map(|e| {
                Ok(DirEntry {
                    name: e.name.to_vec(),
                    ino: e.ino,
                    kind: FileKind::try_from(e.kind)?,
                })
            })
            .collect()
    }

    pub async fn read_link(&self, ino: Ino) -> Result<Vec<u8>> {
        let req = pb::ReadLinkRequest {
            volume: self.id(),
            ino,
        };
        Ok(self
            .meta()
            .read_link(req)
            .await?
            .into_inner()
            .target
            .to_vec())
    }

    /// (size, used bytes, inodes) of the volume.
    pub async fn stat_fs(&self) -> Result<(u64, u64, u64)> {
        let s = self
            .meta()
            .stat_fs(pb::StatFsRequest { volume: self.id() })
            .await?
            .into_inner();
        Ok((s.size_bytes, s.used_bytes, s.inodes))
    }

    /// Makes every change of names and attributes acknowledged so far
    /// durable: the metadata service acknowledges them before its fsync,
    /// as a local file system does (fsyncdir).
    pub async fn sync(&self) -> Result<()> {
        self.meta()
            .sync(pb::SyncRequest { volume: self.id() })
            .await?;
        Ok(())
    }

    /// fsync: the file's buffered data is stored and committed, and its
    /// name and attributes are durable.
    pub async fn fsync(&self, ino: Ino) -> Result<()> {
        self.flush(ino).await?;
        self.sync().await
    }

    // ---------- file data ----------

    /// A file is opened: later reads see what other clients committed
    /// before (close-to-open consistency).
    pub fn open_file(&self, ino: Ino) {
        let e = self.entry(ino);
        e.state.lock().expect("file state lock").opens += 1;
        self.invalidate(ino);
    }

    /// A file handle is closed (after `flush`). The last handle of a file
    /// that lost its last name meanwhile takes the file with it.
    pub async fn release_file(&self, ino: Ino) -> Result<()> {
        let orphan_closed = {
            let mut files = self.inner.files.lock().expect("files lock");
            let Some(e) = files.get(&ino) else {
                return Ok(());
            };
            let (idle, orphan_closed) = {
                let mut st = e.state.lock().expect("file state lock");
                st.opens = st.opens.saturating_sub(1);
                (st.idle(), st.orphan && st.opens == 0)
            };
            if idle {
                files.remove(&ino);
            }
            orphan_closed
        };
        if orphan_closed {
            self.release_orphan(ino).await?;
        }
        Ok(())
    }

    fn invalidate(&self, ino: Ino) {
        if let Some(e) = self.existing_entry(ino) {
            let mut s = e.slices.lock().expect("slices lock");
            s.0 += 1;
            s.1 = None;
        }
    }

    async fn slices(&self, ino: Ino, e: &FileEntry) -> Result<Arc<Slices>> {
        let generation = {
            let s = e.slices.lock().expect("slices lock");
            if let Some(cached) = &s.1 {
                return Ok(cached.clone());
            }
            s.0
        };
        let resp = self
            .meta()
            .get_slices(pb::GetSlicesRequest {
                volume: self.id(),
                ino,
            })
            .await?
            .into_inner();
        let size = resp.attr.map(|a| a.size).unwrap_or(0);
        let fetched = Arc::new(Slices {
            size,
            list: resp.slices,
            inline: resp
                .inline_blocks
                .into_iter()
                .map(|b| (b.block, b.data))
                .collect(),
        });
        let mut s = e.slices.lock().expect("slices lock");
        if s.0 == generation {
            s.1 = Some(fetched.clone());
        }
        Ok(fetched)
    }

    /// Starts fetching, in the background, the blocks holding the
    /// [`READ_AHEAD`] bytes after `from`, so a sequential reader finds them
    /// cached (or in flight) instead of waiting for one block at a time.
    fn read_ahead(&self, slices: &Slices, from: u64) {
        let end = from.saturating_add(READ_AHEAD).min(slices.size);
        if from >= end {
            return;
        }
        let extents: Vec<(u64, u64)> = slices
            .list
            .iter()
            .map(|s| (s.offset, u64::from(s.len)))
            .collect();
        for p in overlay::visible(&extents, from, end) {
            let s = &slices.list[p.slice];
            let b = BlockRef {
                block: s.block,
                len: s.block_len as usize,
            };
            if is_inline(b.block) || !self.inner.cache.start_loading(b.block) {
                continue;
            }
            let vol = self.clone();
            tokio::spawn(async move {
                let i = &vol.inner;
                let got = read_range(&i.nodes, &i.codec, &i.cache, b, 0, b.len).await;
                i.cache.finish_loading(b.block, got.ok());
            });
        }
    }

    /// Reads up to `size` bytes at `offset`; short at the end of the file.
    pub async fn read(&self, ino: Ino, offset: u64, size: u32) -> Result<Bytes> {
        let e = self.entry(ino);
        // Uncommitted bytes first, then the committed slices: a block that
        // commits in between is then seen by one or the other.
        let overlay: Vec<Extent> = e.state.lock().expect("file state lock").overlay();
        let slices = self.slices(ino, &e).await?;
        let pending_end = overlay.iter().map(Extent::end).max().unwrap_or(0);
        let file_size = slices.size.max(pending_end);
        let end = offset.saturating_add(u64::from(size)).min(file_size);
        if offset >= end {
            return Ok(Bytes::new());
        }
        let extents: Vec<(u64, u64)> = slices
            .list
            .iter()
            .map(|s| (s.offset, u64::from(s.len)))
            .collect();
        let pieces = overlay::visible(&extents, offset, end.min(slices.size));
        if !pieces.is_empty() {
            // Moved placement groups are found here, not by failing reads.
            if let Err(e) = self.inner.nodes.refresh_if_stale(0).await {
                warn!(volume = self.name(), error = %e, "refreshing the placement table failed");
            }
        }
        let reads = pieces.iter().map(|p| {
            let s = &slices.list[p.slice];
            let b = BlockRef {
                block: s.block,
                len: s.block_len as usize,
            };
            let at = s.block_offset as usize + (p.offset - s.offset) as usize;
            let inline = is_inline(b.block).then(|| slices.inline.get(&b.block));
            async move {
                match inline {
                    Some(Some(data)) if at + p.len as usize <= data.len() => {
                        Ok(data.slice(at..at + p.len as usize))
                    }
                    Some(_) => Err(ClientError::Invalid(format!(
                        "inode {ino}: inline block {:#x} missing or short",
                        b.block
                    ))),
                    None => {
                        read_range(
                            &self.inner.nodes,
                            &self.inner.codec,
                            &self.inner.cache,
                            b,
                            at,
                            p.len as usize,
                        )
                        .await
                    }
                }
            }
        });
        let sequential = e.read_end.swap(end, std::sync::atomic::Ordering::Relaxed) == offset
            && u64::from(size) >= WHOLE_BLOCK_AT as u64;
        if sequential {
            self.read_ahead(&slices, end);
        }
        let datas = join_all(reads).await;
        let buffered = overlay.iter().any(|x| x.offset < end && x.end() > offset);
        if let ([p], [_], false) = (&pieces[..], &datas[..], buffered) {
            if p.offset == offset && p.offset + p.len == end {
                // One piece of one block, nothing buffered over it: its
                // bytes as read (or cached), without a copy.
                return datas.into_iter().next().expect("one piece");
            }
        }
        let mut buf = vec![0u8; (end - offset) as usize];
        for (p, data) in pieces.iter().zip(datas) {
            let data = data?;
            let at = (p.offset - offset) as usize;
            buf[at..at + data.len()].copy_from_slice(&data);
        }
        for x in &overlay {
            let (lo, hi) = (x.offset.max(offset), x.end().min(end));
            if lo < hi {
                let src = &x.data[(lo - x.offset) as usize..(hi - x.offset) as usize];
                buf[(lo - offset) as usize..(hi - offset) as usize].copy_from_slice(src);
            }
        }
        Ok(Bytes::from(buf))
    }
}
