//! Orphans: files that lost their last name while a client had them open.
//!
//! POSIX keeps such a file, nameless, until its last open handle is closed
//! (databases rely on it for temporary files). Unlink and Rename take the
//! inodes the caller has open; one of them losing its last link keeps its
//! inode and data, and gets an orphan record (`O` + volume + ino) naming
//! the caller's session and when its lease ends. The caller releases it
//! when it closes the file; a caller that dies without doing so stops
//! renewing the lease, and the garbage collection loop removes the file
//! once the lease has run out. Until then the file counts in its volume's
//! usage, as it does on a local disk.

use serde::{Deserialize, Serialize};
use tessera_common::{Ino, VolumeId};
use tracing::info;

use super::{Tree, KIND_FILE};
use crate::{
    keys,
    meta::{now_ns, Meta},
    records::{decode, load, store},
    store::{transact, transact_buffered, Txn},
    MetaError, Result,
};

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
}

/// What dropping a link did to the inode.
pub(super) enum Dropped {
    /// Still linked elsewhere.
    Linked,
    /// Gone; its size in bytes was freed.
    Freed(u64),
    /// Kept as an orphan for the holder.
    Orphaned,
}

/// Keeps `ino`, which just lost its last link, as an orphan of `holder` if
/// it is a file the holder has open.
pub(super) fn keep_if_open(
    t: &mut Tree<'_>,
    ino: Ino,
    kind: u32,
    holder: Holder<'_>,
    expires_ns: i64,
) -> Result<bool> {
    if kind != KIND_FILE || !holder.open.contains(&ino) {
        return Ok(false);
    }
    let rec = OrphanRecord {
        session: holder.session,
        expires_ns,
    };
    let vol = t.vol();
    store(t.txn(), &keys::under(keys::ORPHAN, vol, ino), &rec)?;
    Ok(true)
}

impl Meta {
    /// How long an orphan lives without its session renewing it.
    pub fn orphan_lease(&self) -> std::time::Duration {
        self.orphan_lease
    }

    /// The client that kept `ino` open has closed it: the file goes, with
    /// its data. Releasing a file that is no orphan (any more) does nothing.
    pub fn release_orphan(&self, vol: VolumeId, ino: Ino) -> Result<()> {
        let freed = transact_buffered(self.store.as_ref(), |txn| release(txn, vol, ino))?;
        if let Some(bytes) = freed {
            self.account(vol, -(bytes as i64), -1);
        }
        Ok(())
    }

    /// Extends the lease of the orphans of `session` among `inos`.
    pub fn renew_orphans(&self, vol: VolumeId, session: u64, inos: &[Ino]) -> Result<()> {
        if inos.len() > 1 << 20 {
            return Err(MetaError::Invalid(format!(
                "{} orphans in one renewal",
                inos.len()
            )));
        }
        let expires_ns = now_ns().saturating_add(self.orphan_lease.as_nanos() as i64);
        transact_buffered(self.store.as_ref(), |txn| {
            for &ino in inos {
                let key = keys::under(keys::ORPHAN, vol, ino);
                if let Some(mut rec) = load::<OrphanRecord>(txn, &key)? {
                    if rec.session == session {
                        rec.expires_ns = expires_ns;
                        store(txn, &key, &rec)?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Removes the orphans whose lease ran out (their client died or lost
    /// the metadata service); returns how many.
    pub fn expire_orphans(&self) -> Result<usize> {
        let now = now_ns();
        let (start, end) = keys::prefix_range(&[keys::ORPHAN]);
        let mut expired = Vec::new();
        let rows = transact(self.store.as_ref(), |txn| {
            Ok(txn.scan(&start, &end, 10_000)?)
        })?;
        for (k, v) in rows {
            let rec: OrphanRecord = decode(&k, &v)?;
            if rec.expires_ns <= now && k.len() == 17 {
                let vol = u64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
                let ino = u64::from_be_bytes(k[9..17].try_into().expect("8 bytes"));
                expired.push((vol, ino));
            }
        }
        for &(vol, ino) in &expired {
            info!(volume = vol, ino, "orphan's lease ran out; removing it");
            self.release_orphan(vol, ino)?;
        }
        Ok(expired.len())
    }
}

/// Removes orphan `ino` in `txn`; returns the bytes freed.
fn release(txn: &mut dyn Txn, vol: VolumeId, ino: Ino) -> Result<Option<u64>> {
    let key = keys::under(keys::ORPHAN, vol, ino);
    if load::<OrphanRecord>(txn, &key)?.is_none() {
        return Ok(None);
    }
    txn.delete(&key)?;
    let mut t = Tree::new(txn, vol);
    let inode = match t.inode(ino) {
        Ok(inode) => inode,
        Err(MetaError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if inode.nlink > 0 {
        return Ok(None);
    }
    t.remove(ino)?;
    t.finish()?;
    Ok(Some(inode.size))
}
