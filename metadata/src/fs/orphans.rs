//! Orphans: files that lost their last name while a client had them open.
//!
//! POSIX keeps such a file, nameless, until its last open handle is closed
//! (databases rely on it for temporary files). Unlink and Rename take the
//! inodes the caller has open; one of them losing its last link keeps its
//! inode and data, and gets an orphan record (`O` + volume + ino) naming
//! the caller's session and when its lease ends. The caller releases it
//! when it closes the file; a caller that dies without doing so stops
//! renewing the lease, and the garbage collection task removes the file
//! once the lease has run out. Until then the file counts in its volume's
//! usage, as it does on a local disk.

use serde::{Deserialize, Serialize};
use tessera_common::{FileKind, Ino, VolumeId};
use tracing::info;

use super::{release, FileTree, TreeTxn};
use crate::{
    keys,
    meta::now_ns,
    records::{decode, load, store},
    store::{transact, transact_buffered, Txn},
    MetaError, Result,
};

pub use tessera_common::fs::{MAX_OPEN, MAX_RENEW, RENEW_BATCH};
/// Orphans whose lease ran out that one round of expiry removes.
const EXPIRE_BATCH: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrphanRecord {
    /// The session of the client that has the file open.
    pub session: u64,
    /// When the file goes unless the session renews it.
    pub expires_ns: i64,
}

/// The caller of an unlink or rename: the inodes it has open, and its
/// session.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holder<'a> {
    pub open: &'a [Ino],
    pub session: u64,
}

impl Holder<'_> {
    /// A caller with nothing open: a file losing its last name goes.
    pub const NONE: Holder<'static> = Holder {
        open: &[],
        session: 0,
    };

    pub(super) fn check(&self) -> Result<()> {
        if self.open.len() > MAX_OPEN {
            return Err(MetaError::Invalid(format!(
                "{} open inodes named; at most {MAX_OPEN}",
                self.open.len()
            )));
        }
        Ok(())
    }
}

/// Keeps `ino`, which just lost its last link, as an orphan of `holder` if
/// it is a file the holder has open.
pub(super) fn keep_if_open(
    t: &mut TreeTxn<'_>,
    ino: Ino,
    kind: FileKind,
    holder: Holder<'_>,
    expires_ns: i64,
) -> Result<bool> {
    if kind != FileKind::File || !holder.open.contains(&ino) {
        return Ok(false);
    }
    let rec = OrphanRecord {
        session: holder.session,
        expires_ns,
    };
    let vol = t.vol();
    store(t.txn(), &keys::orphan(vol, ino), &rec)?;
    Ok(true)
}

impl FileTree<'_> {
    /// How long an orphan lives without its session renewing it.
    pub fn orphan_lease(&self) -> std::time::Duration {
        self.meta.options.orphan_lease
    }

    /// When an orphan made now goes unless renewed.
    pub(super) fn lease_end(&self) -> i64 {
        now_ns().saturating_add(self.orphan_lease().as_nanos() as i64)
    }

    /// The client that kept `ino` open has closed it: the file goes, with
    /// its data. Releasing a file that is no orphan (any more) does nothing.
    pub fn release_orphan(&self, vol: VolumeId, ino: Ino) -> Result<()> {
        let freed = transact_buffered(self.meta.store(), |txn| release(txn, vol, ino))?;
        if let Some((bytes, pending)) = freed {
            self.meta.usage.account(vol, -(bytes as i64), -1);
            if pending {
                self.meta.gc_wanted.notify_one();
            }
        }
        Ok(())
    }

    /// Extends the lease of the orphans of `session` among `inos` (at most
    /// [`MAX_RENEW`]), [`RENEW_BATCH`] of them per transaction.
    pub fn renew_orphans(&self, vol: VolumeId, session: u64, inos: &[Ino]) -> Result<()> {
        if inos.len() > MAX_RENEW {
            return Err(MetaError::Invalid(format!(
                "{} orphans in one renewal; at most {MAX_RENEW}",
                inos.len()
            )));
        }
        let expires_ns = self.lease_end();
        for batch in inos.chunks(RENEW_BATCH) {
            transact_buffered(self.meta.store(), |txn| {
                for &ino in batch {
                    let key = keys::orphan(vol, ino);
                    if let Some(mut rec) = load::<OrphanRecord>(txn, &key)? {
                        if rec.session == session {
                            rec.expires_ns = expires_ns;
                            store(txn, &key, &rec)?;
                        }
                    }
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Removes orphans whose lease ran out (their client died or lost the
    /// metadata service), up to a batch; returns how many.
    pub fn expire_orphans(&self) -> Result<usize> {
        let now = now_ns();
        let (mut from, end) = keys::prefix_range(&[keys::ORPHAN]);
        let mut expired = Vec::new();
        while expired.len() < EXPIRE_BATCH {
            let rows = transact(self.meta.store(), |txn| {
                Ok(txn.scan(&from, &end, EXPIRE_BATCH)?)
            })?;
            let Some(last) = rows.last() else { break };
            from = last.0.clone();
            from.push(0);
            for (k, v) in &rows {
                let rec: OrphanRecord = decode(k, v)?;
                if rec.expires_ns <= now {
                    expired.push(keys::volume_ino_of(k)?);
                }
            }
        }
        for &(vol, ino) in &expired {
            info!(volume = vol, ino, "orphan's lease ran out; removing it");
            self.release_orphan(vol, ino)?;
        }
        Ok(expired.len())
    }
}

/// Removes orphan `ino` in `txn`; returns the bytes freed and whether its
/// rows are still to be released.
fn release(txn: &mut dyn Txn, vol: VolumeId, ino: Ino) -> Result<Option<(u64, bool)>> {
    let key = keys::orphan(vol, ino);
    if load::<OrphanRecord>(txn, &key)?.is_none() {
        return Ok(None);
    }
    txn.delete(&key)?;
    let mut t = TreeTxn::new(txn, vol);
    let inode = match t.inode(ino) {
        Ok(inode) => inode,
        Err(MetaError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if inode.nlink > 0 {
        return Ok(None);
    }
    let pending = release::remove_inode(&mut t, ino)?;
    t.finish()?;
    Ok(Some((inode.size, pending)))
}
