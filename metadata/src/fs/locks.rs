//! Advisory locks held across every mount of a volume: fcntl record locks,
//! and flock, which FUSE sends as a lock of the whole file (as NFS does,
//! so a process's flock and fcntl locks on one file are not independent
//! as they are on a local file system).
//!
//! A file's locks are one record, `K` + volume + ino -> [`LockTable`]:
//! every owner (a process's lock owner, in one mount's session) holding
//! ranges on it, and which session changed the file last. A lock call
//! reads and writes that one key, so two mounts taking conflicting locks
//! at once conflict in the store, and one of their optimistic
//! transactions is retried against the other's lock.
//!
//! A session's locks live while it renews its lease (`Y` + session): a
//! mount that dies, or loses the service for longer than the lease, loses
//! its locks, and the next change on the file drops them. For a lease
//! after this process starts every session counts as alive, so a restart
//! of the service does not drop the locks of mounts that could not renew
//! while it was down. Lock changes are buffered commits, as changes of
//! names are: they survive a crash of the service's process; a power loss
//! of its machine can lose the last ones.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_common::{
    locks::{
        set_range, HeldLock as Held, LockAnswer, LockRange, LockRequest, MAX_HOLDERS, MAX_RANGES,
    },
    Ino, VolumeId,
};

use super::{FileTree, TreeTxn};
use crate::{
    keys,
    meta::now_ns,
    records::{load, store},
    store::{transact_buffered, Txn},
    MetaError, Result,
};

/// One owner's locks on a file: its ranges, sorted and disjoint, and
/// the process that took them (F_GETLK names it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub session: u64,
    pub owner: u64,
    pub pid: u32,
    pub ranges: Vec<LockRange>,
}

/// Every lock on one file, and who changed it last. Kept while the file
/// exists, once it was first locked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockTable {
    pub owners: Vec<LockOwner>,
    /// Changes of the file (commits) since the table was made.
    pub changes: u64,
    /// (session, its last change) of the last two sessions that changed
    /// the file, the newest first; the second is of another session than
    /// the first. The last change by a session other than S is the first's
    /// unless S made it, else the second's.
    pub last: [(u64, u64); 2],
}

impl LockTable {
    /// A new table: its first change is by an unknown session (0), so
    /// every mount's first lock finds the file changed.
    fn new() -> LockTable {
        LockTable {
            owners: Vec::new(),
            changes: 1,
            last: [(0, 1), (0, 0)],
        }
    }

    /// The last change by a session other than `session`.
    fn foreign_change(&self, session: u64) -> u64 {
        if self.last[0].0 != session {
            self.last[0].1
        } else {
            self.last[1].1
        }
    }
}

/// A mount holding locks, and when they lapse unless it renews them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub expires_ns: i64,
}

/// Records a change of `ino` by `session` (a commit), if the file has a
/// lock table.
pub(crate) fn note_change(txn: &mut dyn Txn, vol: VolumeId, ino: Ino, session: u64) -> Result<()> {
    let key = keys::under(keys::LOCK, vol, ino);
    let Some(mut table) = load::<LockTable>(txn, &key)? else {
        return Ok(());
    };
    table.changes += 1;
    if table.last[0].0 != session {
        table.last[1] = table.last[0];
    }
    table.last[0] = (session, table.changes);
    store(txn, &key, &table)
}

impl FileTree<'_> {
    /// How long a session's locks live without a renewal.
    pub fn lock_lease(&self) -> std::time::Duration {
        self.meta.options.lock_lease
    }

    /// F_SETLK: sets the request's range for its owner, unless another
    /// owner holds a lock that conflicts; then nothing changes and that
    /// lock is the answer. Unlocking always succeeds (the file may be
    /// gone, with its locks). A grant answers the file's last change by
    /// another session.
    pub fn set_lock(&self, req: &LockRequest) -> Result<LockAnswer> {
        let want = req.range()?;
        let lease = self.lock_lease().as_nanos() as i64;
        transact_buffered(self.meta.store(), |txn| {
            let key = keys::under(keys::LOCK, req.vol, req.ino);
            let mut table = match load::<LockTable>(txn, &key)? {
                Some(t) => t,
                None if req.kind.is_none() => return Ok(LockAnswer::Granted { foreign_change: 0 }),
                None => {
                    // Locks are taken on files that exist.
                    TreeTxn::new(txn, req.vol).inode(req.ino)?;
                    LockTable::new()
                }
            };
            let before = table.clone();
            self.drop_lapsed(txn, &mut table)?;
            let foreign_change = table.foreign_change(req.session);
            if req.kind.is_some() {
                if let Some(held) = conflict(&table, req, &want) {
                    return Ok(LockAnswer::Held(held));
                }
            }
            let own = table
                .owners
                .iter()
                .position(|o| (o.session, o.owner) == (req.session, req.owner));
            let i = match own {
                Some(i) => i,
                None if req.kind.is_none() => {
                    if table != before {
                        store(txn, &key, &table)?;
                    }
                    return Ok(LockAnswer::Granted { foreign_change });
                }
                None => {
                    table.owners.push(LockOwner {
                        session: req.session,
                        owner: req.owner,
                        pid: req.pid,
                        ranges: Vec::new(),
                    });
                    table.owners.len() - 1
                }
            };
            let o = &mut table.owners[i];
            set_range(&mut o.ranges, req.start, req.end, req.kind);
            if req.kind.is_some() {
                o.pid = req.pid;
            }
            if o.ranges.is_empty() {
                table.owners.swap_remove(i);
            }
            let ranges: usize = table.owners.iter().map(|o| o.ranges.len()).sum();
            if table.owners.len() > MAX_HOLDERS || ranges > MAX_RANGES {
                return Err(MetaError::NoLocks(format!(
                    "inode {} of volume {}: at most {MAX_HOLDERS} owners and {MAX_RANGES} ranges \
                     of locks on a file",
                    req.ino, req.vol
                )));
            }
            store(txn, &key, &table)?;
            if req.kind.is_some() {
                // The session's lease starts with its first lock (again,
                // if it ran out).
                let session = keys::lock_session(req.session);
                let now = now_ns();
                let fresh = load::<SessionRecord>(txn, &session)?
                    .is_some_and(|s| s.expires_ns - now > lease / 2);
                if !fresh {
                    let expires_ns = now.saturating_add(lease);
                    store(txn, &session, &SessionRecord { expires_ns })?;
                }
            }
            Ok(LockAnswer::Granted { foreign_change })
        })
    }

    /// F_GETLK: a lock of another owner that would keep the request from
    /// being granted, if any.
    pub fn test_lock(&self, req: &LockRequest) -> Result<Option<Held>> {
        let want = req.range()?;
        transact_buffered(self.meta.store(), |txn| {
            let key = keys::under(keys::LOCK, req.vol, req.ino);
            let Some(mut table) = load::<LockTable>(txn, &key)? else {
                return Ok(None);
            };
            self.drop_lapsed(txn, &mut table)?;
            Ok(conflict(&table, req, &want))
        })
    }

    /// Extends the lease of every lock `session` holds. A session whose
    /// lease ran out is not revived, since other mounts may have taken its
    /// locks: the caller is told, and its next lock starts a new lease.
    pub fn renew_locks(&self, session: u64) -> Result<()> {
        let now = now_ns();
        let expires_ns = now.saturating_add(self.lock_lease().as_nanos() as i64);
        transact_buffered(self.meta.store(), |txn| {
            let key = keys::lock_session(session);
            match load::<SessionRecord>(txn, &key)? {
                Some(s) if !self.alive(&s, now) => Err(MetaError::NotFound {
                    what: format!(
                        "the locks of session {session:#x} (its lease ran out: other mounts \
                         may have taken them)"
                    ),
                }),
                Some(_) => store(txn, &key, &SessionRecord { expires_ns }),
                // A session that took no lock has nothing to renew.
                None => Ok(()),
            }
        })
    }

    /// Whether a session's locks still hold: its lease has not run out, or
    /// this process started less than a lease ago (mounts could not renew
    /// while it was down).
    fn alive(&self, s: &SessionRecord, now: i64) -> bool {
        let lease = self.lock_lease().as_nanos() as i64;
        s.expires_ns > now || now < self.meta.started_ns.saturating_add(lease)
    }

    /// Drops from `table` the owners of sessions whose lease ran out, the
    /// caller's own included (its locks may be another mount's now).
    fn drop_lapsed(&self, txn: &mut dyn Txn, table: &mut LockTable) -> Result<()> {
        let now = now_ns();
        let mut alive = HashMap::new();
        for o in &table.owners {
            if let std::collections::hash_map::Entry::Vacant(e) = alive.entry(o.session) {
                let s: Option<SessionRecord> = load(txn, &keys::lock_session(o.session))?;
                e.insert(s.is_some_and(|s| self.alive(&s, now)));
            }
        }
        table.owners.retain(|o| alive[&o.session]);
        Ok(())
    }
}

/// A lock of another owner that keeps `want` from being granted.
fn conflict(table: &LockTable, req: &LockRequest, want: &LockRange) -> Option<Held> {
    table
        .owners
        .iter()
        .filter(|o| (o.session, o.owner) != (req.session, req.owner))
        .find_map(|o| {
            o.ranges.iter().find(|r| r.conflicts(want)).map(|r| Held {
                range: *r,
                pid: o.pid,
            })
        })
}
