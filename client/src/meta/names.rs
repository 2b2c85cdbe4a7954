//! Calls on names and attributes, made on the calling thread over lean
//! RPC: one write and one blocking read per call, so the thread that
//! waits for the answer is the one that reads it, with no runtime and no
//! HTTP/2 in between (a lookup went from about 120 to 50 µs). For threads
//! that have nothing else to do while a call runs: FUSE worker threads.
//! Connections are pooled; each call takes one of its own, so concurrent
//! callers never wait for each other.
//!
//! These calls are not idempotent (a create may have been applied when
//! its connection broke): a call that fails after it was sent fails with
//! EIO and is not sent again.

use prost::Message;
use tessera_common::{
    fs::SetAttr,
    locks::{HeldLock, LockAnswer, LockKind, LockRange, LockRequest},
    Attr, DirEntry, Ino, NamePage, NewNode, StatFs, VolumeId,
};
use tessera_proto::{
    lean::meta as paths,
    pb,
    transport::lean_client::{BlockingLeanClient, Retry},
};

use super::failover::{addresses, of_lean, Attempts, Rotation};
use crate::{error::malformed, ClientError, Result};

/// Names and attributes of the metadata service, at one address or
/// several (one process leads: `failover.rs`).
pub struct NamesClient {
    peers: Vec<BlockingLeanClient>,
    rotation: Rotation,
}

/// What a create made: the new inode, and its parent as the change left
/// it (when the service says).
#[derive(Clone, Debug)]
pub struct Made {
    pub node: Attr,
    pub parent: Option<Attr>,
}

/// What an unlink or rename left: the inode kept for this caller's open
/// handles, if any, and how long its lease runs.
#[derive(Clone, Debug)]
pub struct Unlinked {
    pub orphaned: Vec<Ino>,
    pub lease_ms: u64,
}

fn lock_request(lock: &LockRequest) -> pb::LockRequest {
    pb::LockRequest {
        volume: lock.vol,
        ino: lock.ino,
        session: lock.session,
        owner: lock.owner,
        pid: lock.pid,
        start: lock.start,
        end: lock.end,
        r#type: lock_type(lock.kind) as i32,
    }
}

fn lock_type(kind: Option<LockKind>) -> pb::LockType {
    match kind {
        None => pb::LockType::Unlock,
        Some(LockKind::Read) => pb::LockType::Read,
        Some(LockKind::Write) => pb::LockType::Write,
    }
}

fn held(h: Option<pb::HeldLock>) -> Result<Option<HeldLock>> {
    let Some(h) = h else { return Ok(None) };
    let kind = match pb::LockType::try_from(h.r#type) {
        Ok(pb::LockType::Read) => LockKind::Read,
        Ok(pb::LockType::Write) => LockKind::Write,
        _ => {
            return Err(ClientError::Malformed(format!(
                "a held lock of type {}",
                h.r#type
            )))
        }
    };
    let range = LockRange::new(h.start, h.end, kind).map_err(malformed)?;
    Ok(Some(HeldLock { range, pid: h.pid }))
}

fn attr(a: pb::Attr) -> Result<Attr> {
    Attr::try_from(a).map_err(malformed)
}

impl NamesClient {
    /// A client of the metadata service at `addr` (`host:port`, or a
    /// list); it connects on its first call.
    pub fn new(addr: &str) -> NamesClient {
        let peers: Vec<BlockingLeanClient> = addresses(addr)
            .iter()
            .map(|a| BlockingLeanClient::new(a))
            .collect();
        NamesClient {
            rotation: Rotation::new(peers.len()),
            peers,
        }
    }

    fn call<A: Message + Default>(&self, path: &str, request: &impl Message) -> Result<A> {
        self.call_with(path, request, Retry::Once)
    }

    fn call_with<A: Message + Default>(
        &self,
        path: &str,
        request: &impl Message,
        retry: Retry,
    ) -> Result<A> {
        let message = request.encode_to_vec();
        let mut attempts = Attempts::new();
        loop {
            let i = self.rotation.current();
            let lean = &self.peers[i];
            let answered = lean.call(path, &message, retry);
            let (failure, error) = match of_lean(path, lean.addr(), answered) {
                Ok(done) => return done,
                Err(failed) => failed,
            };
            match attempts.after(&self.rotation, i, failure) {
                Some(pause) => std::thread::sleep(pause),
                None => return Err(error),
            }
        }
    }

    pub fn lookup(&self, vol: VolumeId, parent: Ino, name: &[u8]) -> Result<Attr> {
        let req = pb::LookupRequest {
            volume: vol,
            parent,
            name: name.to_vec().into(),
        };
        attr(self.call(paths::LOOKUP, &req)?)
    }

    /// The entries of `parent` from `name` on, with their attributes (see
    /// `name_cache.rs`); `None` from a metadata service that has no such
    /// call.
    pub fn lookup_page(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        limit: u32,
    ) -> Result<Option<NamePage>> {
        let req = pb::LookupPageRequest {
            volume: vol,
            parent,
            name: name.to_vec().into(),
            limit,
        };
        let r: pb::LookupPageResponse =
            match self.call_with(paths::LOOKUP_PAGE, &req, Retry::Idempotent) {
                Err(ClientError::Meta {
                    code: tonic::Code::Unimplemented,
                    ..
                }) => return Ok(None),
                r => r?,
            };
        let entries = r
            .entries
            .into_iter()
            .map(|e| {
                let a = e.attr.ok_or_else(|| {
                    ClientError::Malformed(format!("lookup page: {:?} has no attributes", e.name))
                })?;
                Ok((e.name.to_vec(), attr(a)?))
            })
            .collect::<Result<Vec<_>>>()?;
        let ordered = entries.windows(2).all(|w| w[0].0 < w[1].0)
            && entries.first().is_none_or(|e| e.0.as_slice() >= name);
        if entries.len() > limit as usize || !ordered {
            return Err(ClientError::Malformed(format!(
                "lookup page in directory {parent}: {} entries for a limit of {limit}, or not in order from the name asked",
                entries.len()
            )));
        }
        Ok(Some(NamePage {
            entries,
            complete: r.complete,
        }))
    }

    pub fn get_attr(&self, vol: VolumeId, ino: Ino) -> Result<Attr> {
        let req = pb::GetAttrRequest { volume: vol, ino };
        attr(self.call(paths::GET_ATTR, &req)?)
    }

    pub fn set_attr(&self, vol: VolumeId, ino: Ino, change: &SetAttr) -> Result<Attr> {
        let req = pb::SetAttrRequest {
            volume: vol,
            ino,
            perm: change.perm,
            uid: change.uid,
            gid: change.gid,
            size: change.size,
            atime_ns: change.atime_ns,
            mtime_ns: change.mtime_ns,
            session: change.session,
        };
        attr(self.call(paths::SET_ATTR, &req)?)
    }

    pub fn make_node(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        n: &NewNode<'_>,
    ) -> Result<Made> {
        let req = pb::MakeNodeRequest {
            volume: vol,
            parent,
            name: name.to_vec().into(),
            kind: n.kind.into(),
            perm: n.perm,
            uid: n.uid,
            gid: n.gid,
            rdev: n.rdev,
            symlink_target: n.target.to_vec().into(),
        };
        let mut a: pb::Attr = self.call(paths::MAKE_NODE, &req)?;
        let parent = a.parent.take().map(|p| attr(*p)).transpose()?;
        Ok(Made {
            node: attr(a)?,
            parent,
        })
    }

    pub fn link(&self, vol: VolumeId, ino: Ino, new_parent: Ino, new_name: &[u8]) -> Result<Attr> {
        let req = pb::LinkRequest {
            volume: vol,
            ino,
            new_parent,
            new_name: new_name.to_vec().into(),
        };
        attr(self.call(paths::LINK, &req)?)
    }

    /// unlink (or rmdir with `dir`); `open` names the inodes the caller
    /// has open, kept as orphans of `session` if they lose their last name.
    pub fn unlink(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        dir: bool,
        open: Vec<Ino>,
        session: u64,
    ) -> Result<Unlinked> {
        let req = pb::UnlinkRequest {
            volume: vol,
            parent,
            name: name.to_vec().into(),
            dir,
            open,
            session,
        };
        let r: pb::UnlinkResponse = self.call(paths::UNLINK, &req)?;
        Ok(Unlinked {
            orphaned: r.orphaned,
            lease_ms: r.lease_ms,
        })
    }

    /// rename(2) with its flags; `open` and `session` as for unlink, for a
    /// file the rename replaces.
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        vol: VolumeId,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
        open: Vec<Ino>,
        session: u64,
    ) -> Result<Unlinked> {
        let req = pb::RenameRequest {
            volume: vol,
            parent,
            name: name.to_vec().into(),
            new_parent,
            new_name: new_name.to_vec().into(),
            flags,
            open,
            session,
        };
        let r: pb::UnlinkResponse = self.call(paths::RENAME, &req)?;
        Ok(Unlinked {
            orphaned: r.orphaned,
            lease_ms: r.lease_ms,
        })
    }

    /// Sets (or with `kind` None releases) `start..=end` for lock owner
    /// `owner` of this mount's `session`, unless another owner holds a lock
    /// that conflicts: then nothing changed and that lock is the answer.
    /// Also says how long the session's locks live without a renewal.
    /// Sent again after a lost answer: the same request twice leaves the
    /// same locks.
    pub fn set_lock(&self, lock: &LockRequest) -> Result<(LockAnswer, u64)> {
        let r: pb::LockResponse =
            self.call_with(paths::SET_LOCK, &lock_request(lock), Retry::Idempotent)?;
        let answer = match held(r.conflict)? {
            Some(h) => LockAnswer::Held(h),
            None => LockAnswer::Granted {
                foreign_change: r.foreign_change,
            },
        };
        Ok((answer, r.lease_ms))
    }

    /// A lock of another owner that would keep `lock` from being granted.
    pub fn test_lock(&self, lock: &LockRequest) -> Result<Option<HeldLock>> {
        let r: pb::LockResponse =
            self.call_with(paths::TEST_LOCK, &lock_request(lock), Retry::Idempotent)?;
        held(r.conflict)
    }

    /// Entries of directory `ino` whose names sort after `after`.
    pub fn read_dir(
        &self,
        vol: VolumeId,
        ino: Ino,
        after: &[u8],
        limit: u32,
    ) -> Result<Vec<DirEntry>> {
        let req = pb::ReadDirRequest {
            volume: vol,
            ino,
            after: after.to_vec().into(),
            limit,
        };
        let r: pb::ReadDirResponse = self.call(paths::READ_DIR, &req)?;
        r.entries
            .into_iter()
            .map(|e| DirEntry::try_from(e).map_err(malformed))
            .collect()
    }

    pub fn read_link(&self, vol: VolumeId, ino: Ino) -> Result<Vec<u8>> {
        let req = pb::ReadLinkRequest { volume: vol, ino };
        let r: pb::ReadLinkResponse = self.call(paths::READ_LINK, &req)?;
        Ok(r.target.to_vec())
    }

    pub fn get_xattr(&self, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let req = pb::XattrRequest {
            volume: vol,
            ino,
            name: name.to_vec().into(),
        };
        let r: pb::XattrValue = self.call(paths::GET_XATTR, &req)?;
        Ok(r.value.to_vec())
    }

    pub fn set_xattr(
        &self,
        vol: VolumeId,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: u32,
    ) -> Result<()> {
        let req = pb::SetXattrRequest {
            volume: vol,
            ino,
            name: name.to_vec().into(),
            value: value.to_vec().into(),
            flags,
        };
        self.call::<pb::Empty>(paths::SET_XATTR, &req).map(drop)
    }

    pub fn list_xattr(&self, vol: VolumeId, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let req = pb::GetAttrRequest { volume: vol, ino };
        let r: pb::XattrNames = self.call(paths::LIST_XATTR, &req)?;
        Ok(r.names.into_iter().map(|n| n.to_vec()).collect())
    }

    pub fn remove_xattr(&self, vol: VolumeId, ino: Ino, name: &[u8]) -> Result<()> {
        let req = pb::XattrRequest {
            volume: vol,
            ino,
            name: name.to_vec().into(),
        };
        self.call::<pb::Empty>(paths::REMOVE_XATTR, &req).map(drop)
    }

    pub fn stat_fs(&self, vol: VolumeId) -> Result<StatFs> {
        let r: pb::StatFsResponse =
            self.call(paths::STAT_FS, &pb::StatFsRequest { volume: vol })?;
        Ok(StatFs {
            size: r.size_bytes,
            used: r.used_bytes,
            inodes: r.inodes,
        })
    }

    /// Makes every change of names and attributes acknowledged so far
    /// durable (the service acknowledges them before its fsync).
    pub fn sync(&self, vol: VolumeId) -> Result<()> {
        self.call::<pb::Empty>(paths::SYNC, &pb::SyncRequest { volume: vol })
            .map(drop)
    }
}

#[cfg(test)]
mod tests;
