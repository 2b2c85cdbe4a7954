//! Advisory locks (fcntl record locks, and flock as a lock of the whole
//! file) held across every mount of the volume: each lock call is one
//! metadata call (see the metadata service's `fs/locks.rs`). While this
//! mount has taken a lock, it renews its session's lease every third of
//! it; if the mount dies, its locks lapse at the end of the lease and
//! other mounts may take them.
//!
//! Locks also order what mounts see of a file, as on NFS (see
//! [`Volume::set_lock`]).
//!
//! A blocking lock (F_SETLKW, flock without LOCK_NB) waits on a thread of
//! its own, asking again with a growing pause, until it is granted, a
//! signal is pending for the waiting thread (FUSE cannot interrupt the
//! request: without this even SIGKILL would wait), or the mount goes away.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use tessera_common::{
    locks::{HeldLock, LockAnswer, LockKind, LockRequest},
    Ino,
};
use tracing::warn;

use super::Volume;
use crate::{ClientError, Result};

/// Most lock waits a mount serves at once.
pub const MAX_WAITS: usize = 256;
/// The longest pause between two attempts of a waiting lock.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// This mount's lock state.
#[derive(Default)]
pub(crate) struct Locks {
    /// Whether the session's lease is being renewed.
    renewing: AtomicBool,
    /// Lock waits in progress.
    waiting: AtomicUsize,
    /// The mount is going away: waits end, renewal stops.
    closing: AtomicBool,
    /// (ino, owner) that may hold a lock here: what closing a file
    /// releases. Entered before a lock is asked for (an answer lost on
    /// the way may still have granted it), left once a release answered.
    held: Mutex<HashSet<(Ino, u64)>>,
}

/// What a lock call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    /// Granted; `stale`: another mount changed the file since this one
    /// last knew it, so cached pages of it must go.
    Granted { stale: bool },
    /// Another owner's lock is in the way.
    Held(HeldLock),
}

/// One owner's lock request on a file. `thread`: the caller's thread id
/// (for a wait, to see its signals).
#[derive(Clone, Copy, Debug)]
pub struct LockAsk {
    pub ino: Ino,
    pub owner: u64,
    pub pid: u32,
    pub thread: u32,
    pub start: u64,
    pub end: u64,
    /// None releases the range.
    pub kind: Option<LockKind>,
}

impl Volume {
    fn lock_call(&self, ask: &LockAsk) -> LockRequest {
        LockRequest {
            vol: self.id(),
            ino: ask.ino,
            session: self.inner.session,
            owner: ask.owner,
            pid: ask.pid,
            start: ask.start,
            end: ask.end,
            kind: ask.kind,
        }
    }

    /// F_GETLK: another owner's lock that keeps `ask` from being granted.
    pub fn test_lock(&self, ask: &LockAsk) -> Result<Option<HeldLock>> {
        self.inner.names.test_lock(&self.lock_call(ask))
    }

    /// F_SETLK: takes, changes or releases the range; answers the lock of
    /// another owner that keeps it from being granted (EAGAIN).
    ///
    /// As NFS does, locks order what mounts see of the file: every lock
    /// call first stores what this mount has buffered for the file (a
    /// write that fails stays to be reported by the next fsync or close;
    /// a release is sent whatever happened), and a lock granted on a file
    /// another mount changed since this one last knew it drops this
    /// mount's cached view of it (and says so, for the kernel's cached
    /// pages), so whoever takes the lock next, on any mount, reads what
    /// the holder wrote.
    pub fn set_lock(&self, ask: &LockAsk) -> Result<Locked> {
        if let Err(e) = self.block_on(self.store_buffered(ask.ino)) {
            warn!(volume = self.name(), ino = ask.ino, error = %e, "storing a file's writes before a lock call failed");
        }
        if ask.kind.is_some() {
            self.held().insert((ask.ino, ask.owner));
        }
        let (answer, lease_ms) = self.inner.names.set_lock(&self.lock_call(ask))?;
        let foreign_change = match answer {
            LockAnswer::Held(h) => return Ok(Locked::Held(h)),
            LockAnswer::Granted { foreign_change } => foreign_change,
        };
        if ask.kind.is_none() {
            return Ok(Locked::Granted { stale: false });
        }
        self.renew_locks(lease_ms);
        let Some(e) = self.existing_entry(ask.ino) else {
            return Ok(Locked::Granted { stale: true });
        };
        let seen = e.seen_change.fetch_max(foreign_change, Ordering::AcqRel);
        let stale = foreign_change > seen;
        if stale {
            self.invalidate(ask.ino);
        }
        Ok(Locked::Granted { stale })
    }

    /// `owner` closed `ino` (or exited): every lock it holds on the file
    /// goes, as POSIX says. A release that fails is tried again in the
    /// background until it is answered.
    pub fn release_locks(&self, ino: Ino, owner: u64) {
        if !self.held().contains(&(ino, owner)) {
            return;
        }
        let all = LockAsk {
            ino,
            owner,
            pid: 0,
            thread: 0,
            start: 0,
            end: u64::MAX,
            kind: None,
        };
        if self.release(&all) {
            return;
        }
        let vol = self.clone();
        std::thread::spawn(move || {
            let mut pause = Duration::from_millis(100);
            while !vol.release(&all) {
                if vol.inner.locks.closing.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// Sends a release of `all`; whether it was answered.
    fn release(&self, all: &LockAsk) -> bool {
        match self.set_lock(all) {
            Ok(_) => {
                self.held().remove(&(all.ino, all.owner));
                true
            }
            Err(e) => {
                warn!(volume = self.name(), ino = all.ino, error = %e, "releasing a closed file's locks failed; trying again");
                false
            }
        }
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<(Ino, u64)>> {
        self.inner.locks.held.lock().expect("held locks")
    }

    /// F_SETLKW: [`Volume::set_lock`] until it is granted; answers whether
    /// the file's cached pages are stale. Ends with EINTR when a signal is
    /// pending for the waiting thread or the mount goes away. Blocks: call
    /// it on a thread that may wait.
    pub fn wait_lock(&self, ask: &LockAsk) -> Result<bool> {
        let locks = &self.inner.locks;
        let waiting = locks.waiting.fetch_add(1, Ordering::AcqRel);
        let _count = Leave(&locks.waiting);
        if waiting >= MAX_WAITS {
            return Err(ClientError::TooManyLockWaits {
                ino: ask.ino,
                waiting,
                max: MAX_WAITS,
            });
        }
        let mut pause = Duration::from_millis(1);
        loop {
            if locks.closing.load(Ordering::Acquire) || signal_pending(ask.thread) {
                return Err(ClientError::LockWaitEnded { ino: ask.ino });
            }
            match self.set_lock(ask) {
                Ok(Locked::Granted { stale }) => return Ok(stale),
                Ok(Locked::Held(_)) => {}
                // The service restarting: go on waiting.
                Err(e) if e.is_unreachable() => {}
                Err(e) => return Err(e),
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// Ends every lock wait and the lease's renewal: the mount is going
    /// away.
    pub fn end_lock_waits(&self) {
        self.inner.locks.closing.store(true, Ordering::Release);
    }

    /// Starts renewing this session's lease, once, while the mount lives.
    fn renew_locks(&self, lease_ms: u64) {
        if self.inner.locks.renewing.swap(true, Ordering::AcqRel) {
            return;
        }
        // A third of the lease: two renewals may fail before it ends.
        let period = Duration::from_millis(lease_ms / 3).max(Duration::from_millis(100));
        let vol = self.clone();
        self.inner.rt.spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if vol.inner.locks.closing.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = vol.inner.meta.renew_locks(vol.inner.session).await {
                    warn!(volume = vol.name(), error = %e, "renewing the lease of this mount's locks failed");
                }
            }
        });
    }
}

/// Whether thread `tid` has a signal pending that it neither blocks nor
/// ignores (SIGKILL always counts), from /proc.
fn signal_pending(tid: u32) -> bool {
    if tid == 0 {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{tid}/status")) else {
        // Gone: nobody waits any more.
        return true;
    };
    let mask = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    const SIGKILL: u64 = 1 << (9 - 1);
    pending & SIGKILL != 0 || pending & !mask("SigBlk:") & !mask("SigIgn:") != 0
}

/// Counts a wait out when it ends, however it ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
