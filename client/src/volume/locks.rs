//! Advisory locks (fcntl record locks, open file description locks, and
//! flock as a lock of the whole file) held across every mount of the
//! volume: each lock call is one metadata call (see the metadata
//! service's `fs/locks.rs`). While this mount has taken a lock, it renews
//! its session's lease every third of it; if the mount dies, its locks
//! lapse at the end of the lease and other mounts may take them.
//!
//! Locks also order what mounts see of a file, as on NFS (see
//! [`Volume::set_lock`]).
//!
//! A blocking lock (F_SETLKW, flock without LOCK_NB) waits on a thread of
//! its own, asking again with a growing pause, until it is granted, a
//! signal that would interrupt it is pending for the waiting thread (FUSE
//! cannot interrupt the request: without this even SIGKILL would wait),
//! or the mount goes away.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Mutex, MutexGuard, OnceLock,
    },
    time::Duration,
};

use tessera_common::{
    locks::{HeldLock, LockAnswer, LockKind, LockRequest},
    Ino,
};
use tracing::{info, warn};

use super::Volume;
use crate::{ClientError, Result};

/// Most lock waits a mount serves at once.
pub const MAX_WAITS: usize = 256;
/// The longest pause between two attempts of a waiting lock.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// Drops the kernel's cached pages of a file (the FUSE layer's).
pub type PageDropper = Box<dyn Fn(Ino) + Send + Sync>;

/// This mount's lock state.
#[derive(Default)]
pub(crate) struct Locks {
    /// Whether the session's lease is being renewed.
    renewing: AtomicBool,
    /// Lock waits in progress.
    waiting: AtomicUsize,
    /// The mount is going away: waits end, renewal stops.
    closing: AtomicBool,
    /// (ino, owner) that may hold a lock here, with a generation bumped by
    /// each lock asked for: what closing a file releases. Entered before
    /// a lock is asked for (an answer lost on the way may still have
    /// granted it); left when a release answered and no lock was asked
    /// for since it was sent.
    held: Mutex<HashMap<(Ino, u64), u64>>,
    /// Releases of closed files not answered yet (the service was
    /// unreachable), sent again in the background. The lock serializes
    /// them with new locks of the same owners: an owed release goes
    /// before the owner's next lock, never after it.
    owed: Mutex<HashSet<(Ino, u64)>>,
    /// Drops the kernel's cached pages of a file.
    pages: OnceLock<PageDropper>,
}

/// What a lock call got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Locked {
    Granted,
    /// Another owner's lock is in the way.
    Held(HeldLock),
}

/// One owner's lock request on a file. `thread`: the caller's thread id
/// (for a wait, to see its signals; 0 when the kernel could not name it).
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

impl LockAsk {
    /// A release of everything `owner` holds on `ino`.
    fn all(ino: Ino, owner: u64) -> LockAsk {
        LockAsk {
            ino,
            owner,
            pid: 0,
            thread: 0,
            start: 0,
            end: u64::MAX,
            kind: None,
        }
    }
}

impl Volume {
    /// How the mount drops the kernel's cached pages of a file, for locks
    /// granted on a file another mount changed. Set once.
    pub fn set_page_dropper(&self, drop_pages: PageDropper) {
        let _ = self.inner.locks.pages.set(drop_pages);
    }

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
    /// write that fails stays to be reported by the next fsync or close),
    /// and fails with EIO while bytes of it wait to be stored again (a
    /// service unreachable): a release must not let another mount write
    /// the range before they land over it. A lock granted on a file
    /// another mount changed since this one last knew it drops this
    /// mount's cached slices and the kernel's cached pages of it before it
    /// returns, so whoever takes the lock next, on any mount, reads what
    /// the holder wrote.
    pub fn set_lock(&self, ask: &LockAsk) -> Result<Locked> {
        // No hop onto the runtime when there is nothing to store.
        let stored = match self.has_buffered(ask.ino) {
            true => self.block_on(self.store_buffered(ask.ino)),
            false => Ok(()),
        };
        if let Err(e) = stored {
            warn!(volume = self.name(), ino = ask.ino, error = %e, "storing a file's writes before a lock call failed");
            if self.has_buffered(ask.ino) {
                return Err(e);
            }
        }
        if ask.kind.is_some() {
            self.pay_owed_release(ask.ino, ask.owner)?;
            *self.held().entry((ask.ino, ask.owner)).or_default() += 1;
        }
        let asked = self.inner.names.set_lock(&self.lock_call(ask));
        if ask.kind.is_some() {
            // Again once answered: a close's release that went out while
            // this was in flight must not forget a lock granted after it.
            *self.held().entry((ask.ino, ask.owner)).or_default() += 1;
        }
        let (answer, lease_ms) = asked?;
        let foreign_change = match answer {
            LockAnswer::Held(h) => return Ok(Locked::Held(h)),
            LockAnswer::Granted { foreign_change } => foreign_change,
        };
        if ask.kind.is_none() {
            return Ok(Locked::Granted);
        }
        self.renew_locks(lease_ms);
        // What the lock orders may be a name (a journal file another mount
        // created): names are looked up anew.
        self.inner.name_cache.clear();
        if let Some(e) = self.existing_entry(ask.ino) {
            // What this mount knew is raised only once its cached view is
            // gone: a lock granted meanwhile drops it too.
            if foreign_change > e.seen_change.load(Ordering::Acquire) {
                self.invalidate(ask.ino);
                if let Some(drop_pages) = self.inner.locks.pages.get() {
                    drop_pages(ask.ino);
                }
                e.seen_change.fetch_max(foreign_change, Ordering::AcqRel);
            }
        }
        Ok(Locked::Granted)
    }

    /// `owner` closed `ino` (or exited): every lock it holds on the file
    /// goes, as POSIX says. A release the service does not answer is owed:
    /// sent again in the background, and before the owner's next lock. So
    /// is one while bytes of the file wait to be stored again: it goes
    /// once they land, so that whoever locks the range next reads them,
    /// and they cannot land over that holder's writes.
    pub fn release_locks(&self, ino: Ino, owner: u64) {
        let Some(generation) = self.held().get(&(ino, owner)).copied() else {
            return;
        };
        if self.bytes_wait(ino) {
            info!(
                volume = self.name(),
                ino, "a closed file's locks stay until its written bytes are stored"
            );
            return self.owe_release(ino, owner, generation);
        }
        match self.send_release(ino, owner) {
            Ok(()) => self.released(ino, owner, generation),
            Err(e) => {
                warn!(volume = self.name(), ino, error = %e, "releasing a closed file's locks failed; trying again");
                self.owe_release(ino, owner, generation);
            }
        }
    }

    /// Has the release of `owner`'s locks on `ino` sent in the background.
    fn owe_release(&self, ino: Ino, owner: u64, generation: u64) {
        if self.owed().insert((ino, owner)) {
            let vol = self.clone();
            std::thread::spawn(move || vol.pay_in_background(ino, owner, generation));
        }
    }

    /// A release sent at `generation` was answered: the entry goes unless
    /// a lock was asked for since.
    fn released(&self, ino: Ino, owner: u64, generation: u64) {
        let mut held = self.held();
        if held.get(&(ino, owner)) == Some(&generation) {
            held.remove(&(ino, owner));
        }
    }

    fn pay_in_background(&self, ino: Ino, owner: u64, generation: u64) {
        let mut pause = Duration::from_millis(100);
        loop {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(5));
            if self.inner.locks.closing.load(Ordering::Acquire) {
                return;
            }
            let mut owed = self.owed();
            if !owed.contains(&(ino, owner)) {
                return; // paid before a new lock
            }
            if !self.bytes_wait(ino) && self.send_release(ino, owner).is_ok() {
                owed.remove(&(ino, owner));
                drop(owed);
                self.released(ino, owner, generation);
                return;
            }
        }
    }

    /// Sends the release `owner` owes on `ino`, if any, before its new
    /// lock.
    fn pay_owed_release(&self, ino: Ino, owner: u64) -> Result<()> {
        let mut owed = self.owed();
        if owed.contains(&(ino, owner)) {
            self.send_release(ino, owner)?;
            owed.remove(&(ino, owner));
        }
        Ok(())
    }

    /// Releases everything `owner` holds on `ino` (its writes were stored
    /// when it closed the file).
    fn send_release(&self, ino: Ino, owner: u64) -> Result<()> {
        let all = self.lock_call(&LockAsk::all(ino, owner));
        self.inner.names.set_lock(&all).map(|_| ())
    }

    fn held(&self) -> MutexGuard<'_, HashMap<(Ino, u64), u64>> {
        self.inner.locks.held.lock().expect("held locks")
    }

    fn owed(&self) -> MutexGuard<'_, HashSet<(Ino, u64)>> {
        self.inner.locks.owed.lock().expect("owed releases")
    }

    /// F_SETLKW: [`Volume::set_lock`] until it is granted. Ends with EINTR
    /// when a signal that would interrupt it is pending for the waiting
    /// thread, or the mount goes away. Blocks: call it on a thread that
    /// may wait.
    pub fn wait_lock(&self, ask: &LockAsk) -> Result<()> {
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
        if ask.thread == 0 {
            warn!(
                volume = self.name(),
                ino = ask.ino,
                "a lock waiter the kernel cannot name (another pid namespace): its signals cannot end the wait"
            );
        }
        let mut pause = Duration::from_millis(1);
        loop {
            if locks.closing.load(Ordering::Acquire) || signal_pending(ask.thread) {
                return Err(ClientError::LockWaitEnded { ino: ask.ino });
            }
            match self.set_lock(ask) {
                Ok(Locked::Granted) => return Ok(()),
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

/// Whether thread `tid` has a signal pending that would interrupt a local
/// lock wait: SIGKILL, or one neither blocked nor ignored that it catches
/// or whose default action ends the process (not the stop, continue and
/// ignore-by-default ones), from /proc.
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
    let bit = |sig: u32| 1u64 << (sig - 1);
    let not_fatal = [17, 18, 19, 20, 21, 22, 23, 28]
        .into_iter()
        .map(bit)
        .fold(0, |a, b| a | b);
    let pending = mask("SigPnd:") | mask("ShdPnd:");
    let interrupting = (mask("SigCgt:") | !not_fatal) & !mask("SigBlk:") & !mask("SigIgn:");
    pending & bit(9) != 0 || pending & interrupting != 0
}

/// Counts a wait out when it ends, however it ends.
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
