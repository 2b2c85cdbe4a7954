//! fcntl record locks and flock (the kernel sends flock as a lock of the
//! whole file) through the volume's locks, which hold across every mount
//! (`tessera_client`'s `volume/locks.rs`). A blocking lock waits on a
//! thread of its own, so that no FUSE worker is held by it.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use fuser::{Errno, FileHandle, INodeNo, Notifier, ReplyEmpty, ReplyLock};
use tessera_client::{LockAsk, Locked};
use tessera_common::locks::{HeldLock, LockKind};
use tracing::debug;

use crate::{attr::errno, state::TesseraFs};

/// Open file handles and the lock owners seen on each. A close's FLUSH
/// names the closing process's owner, which releases its record locks;
/// locks of another owner taken through a handle (open file description
/// locks, F_OFD_SETLK, which the kernel sends as record locks owned by
/// the open file) go when the handle is released.
#[derive(Default)]
pub(crate) struct Handles {
    next: AtomicU64,
    owners: Mutex<HashMap<u64, HashSet<u64>>>,
}

impl Handles {
    /// A handle for a file just opened.
    pub fn open(&self) -> FileHandle {
        FileHandle(self.next.fetch_add(1, Ordering::Relaxed) + 1)
    }

    fn saw(&self, fh: u64, owner: u64) {
        let mut owners = self.owners.lock().expect("handle owners");
        owners.entry(fh).or_default().insert(owner);
    }

    /// `owner` closed a descriptor of `fh`: its record locks go now.
    pub fn flushed(&self, fh: u64, owner: u64) {
        if let Some(set) = self.owners.lock().expect("handle owners").get_mut(&fh) {
            set.remove(&owner);
        }
    }

    /// `fh` is released: the owners whose locks go with it.
    pub fn released(&self, fh: u64) -> HashSet<u64> {
        let mut owners = self.owners.lock().expect("handle owners");
        owners.remove(&fh).unwrap_or_default()
    }
}

/// One lock request as the kernel sends it.
pub(crate) struct LockArgs {
    pub fh: u64,
    pub ino: u64,
    pub owner: u64,
    pub pid: u32,
    pub thread: u32,
    pub start: u64,
    pub end: u64,
    pub typ: i32,
}

impl LockArgs {
    fn lock(&self) -> Result<LockAsk, Errno> {
        let kind = match self.typ {
            libc::F_RDLCK => Some(LockKind::Read),
            libc::F_WRLCK => Some(LockKind::Write),
            libc::F_UNLCK => None,
            _ => return Err(Errno::EINVAL),
        };
        if self.start > self.end {
            return Err(Errno::EINVAL);
        }
        Ok(LockAsk {
            ino: self.ino,
            owner: self.owner,
            pid: self.pid,
            thread: self.thread,
            start: self.start,
            end: self.end,
            kind,
        })
    }
}

fn typ(h: &HeldLock) -> i32 {
    match h.range.kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

/// Drops the kernel's cached pages of `ino` (a lock granted on a file
/// another mount changed must read what the last holder wrote).
pub(crate) fn drop_cached_pages(kernel: &Notifier, ino: u64) {
    // ENOENT: the kernel has nothing cached for it.
    if let Err(e) = kernel.inval_inode(INodeNo(ino), 0, 0) {
        debug!(ino, error = %e, "dropping cached pages");
    }
}

impl TesseraFs {
    pub(crate) fn getlk(&self, ask: LockArgs, reply: ReplyLock) {
        let lock = match ask.lock() {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        match self.result("getlk", self.vol.test_lock(&lock)) {
            Ok(Some(h)) => reply.locked(h.range.start, h.range.end, typ(&h), h.pid),
            Ok(None) => reply.locked(ask.start, ask.end, libc::F_UNLCK, 0),
            Err(e) => reply.error(e),
        }
    }

    pub(crate) fn setlk(&self, ask: LockArgs, sleep: bool, reply: ReplyEmpty) {
        let lock = match ask.lock() {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        if lock.kind.is_some() {
            self.handles.saw(ask.fh, ask.owner);
        }
        if !sleep || lock.kind.is_none() {
            return match self.result("setlk", self.vol.set_lock(&lock)) {
                Ok(Locked::Granted) => reply.ok(),
                Ok(Locked::Held(h)) => {
                    debug!(ino = ask.ino, held = ?h, "lock held by another owner");
                    reply.error(Errno::EAGAIN)
                }
                Err(e) => reply.error(e),
            };
        }
        let vol = self.vol.clone();
        let spawned = std::thread::Builder::new()
            .name("lock-wait".into())
            .spawn(move || match vol.wait_lock(&lock) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(errno(&e)),
            });
        if let Err(e) = spawned {
            // The reply went with the closure that did not run: fuser
            // answers a dropped reply with EIO.
            tracing::warn!(error = %e, "no thread for a lock wait");
        }
    }
}
