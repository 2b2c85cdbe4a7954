//! Committing written slices: after a writer's shards are durable, its
//! slices go on top of their chunks, the blocks they point into gain a
//! reference, sizes grow within the volume's quota, missing shards are
//! queued for repair and inline blocks stored, all in one durable
//! transaction.

use tessera_common::{
    extents::Refs, is_inline, Attr, Commit, Committed, FileWrite, InlineBlock, Protection, VolumeId,
};

use super::{slices, FileData};
use crate::{
    blocks,
    cluster::rebalance,
    fs::{release, TreeTxn},
    keys,
    records::{load, store, PlacementRecord, Slice, VolumeRecord},
    repair,
    store::{transact, Txn},
    MetaError, Result,
};

impl FileData<'_> {
    /// Commits `c` in one transaction.
    pub fn commit(&self, c: &Commit) -> Result<Committed> {
        let volume = self.meta.volumes().by_id(c.vol)?;
        self.check(c, &volume)?;
        let p = volume.protection;
        loop {
            let done = transact(self.meta.store(), |txn| self.apply(txn, c));
            let (attrs, epoch, reserved) = match done {
                // A truncation of one of the files is still being cut:
                // finish it first, so it cannot cut these slices.
                Err(MetaError::TrimPending { ino, .. }) => {
                    release::finish_trim(self.meta.store(), c.vol, ino)?;
                    continue;
                }
                other => other?,
            };
            reserved.commit();
            for f in c.files.iter().filter(|f| !f.replaces.is_empty()) {
                // A merge deleted an extent key per run it replaced.
                let store = self.meta.store();
                store.deleted_many(
                    &keys::extent(c.vol, f.ino, 0),
                    &keys::extent(c.vol, f.ino, u64::MAX),
                );
            }
            let moved = c.placement_epoch != 0 && c.placement_epoch < epoch;
            if !c.degraded.is_empty() || moved {
                self.meta.repair_queued.notify_one();
            }
            tracing::trace!(volume = c.vol, files = c.files.len(), %p, "committed");
            return Ok(Committed {
                attrs,
                placement_epoch: epoch,
            });
        }
    }

    /// What can be checked before the transaction: every slice, inline
    /// block and degraded report, against the volume's class.
    fn check(&self, c: &Commit, volume: &VolumeRecord) -> Result<()> {
        for s in c.files.iter().flat_map(|f| &f.slices) {
            s.check()?;
        }
        for b in &c.inline {
            check_inline(b, &c.files)?;
        }
        let min_durable = self
            .meta
            .volumes()
            .settings(c.vol)?
            .min_durable_for(volume.protection);
        for d in &c.degraded {
            d.check(volume.protection)?;
            let durable = volume.protection.width() - d.missing.len();
            if durable < min_durable {
                return Err(MetaError::Invalid(format!(
                    "block {} has {durable} durable shards; volume {} needs {min_durable}",
                    d.block, volume.name
                )));
            }
            if !c
                .files
                .iter()
                .flat_map(|f| &f.slices)
                .any(|s| s.block == d.block)
            {
                return Err(MetaError::Invalid(format!(
                    "degraded block {} is not a block of this commit",
                    d.block
                )));
            }
        }
        Ok(())
    }

    /// The commit's transaction body.
    fn apply<'u>(
        &'u self,
        txn: &mut dyn Txn,
        c: &Commit,
    ) -> Result<(Vec<Attr>, u64, crate::volumes::usage::Reservation<'u>)> {
        // Read in the transaction, so a removal of the volume that commits
        // first makes this commit retry and fail, rather than leave extents
        // under a tree already deleted; and the quota is the one in force.
        let volume: VolumeRecord = load(txn, &keys::volume(c.vol))?
            .ok_or_else(|| MetaError::not_found(format!("volume {}", c.vol)))?;
        let p = volume.protection;
        for d in &c.degraded {
            repair::queue(txn, p, d, &[])?;
        }
        store_inline(txn, &c.files, &c.inline)?;
        let epoch = queue_moves(txn, p, c)?;
        let mut t = TreeTxn::new(txn, c.vol);
        let mut attrs = Vec::with_capacity(c.files.len());
        let mut growth = 0u64;
        let mut refs = Refs::default();
        for f in &c.files {
            let mut inode = t.file(f.ino)?;
            release::pending_trim(t.txn(), c.vol, f.ino)?;
            if !f.replaces.is_empty() {
                // A merge: the same bytes in fresh slices, if nothing
                // changed since they were read; no time changes.
                // (The inode is written, unchanged, so that a commit or
                // truncation racing with this one conflicts with it.)
                // Other mounts' cached views point at blocks this frees.
                unchanged(t.txn(), c.vol, f)?;
                append_slices(t.txn(), c.vol, f, &mut refs)?;
                crate::fs::note_change(t.txn(), c.vol, f.ino, c.session)?;
                attrs.push(inode.attr(f.ino));
                t.set(f.ino, inode);
                continue;
            }
            append_slices(t.txn(), c.vol, f, &mut refs)?;
            let end = f.slices.iter().map(Slice::end).max().unwrap_or(0);
            if end > inode.size {
                growth += end - inode.size;
                inode.size = end;
            }
            inode.mtime_ns = inode.mtime_ns.max(f.mtime_ns);
            inode.ctime_ns = inode.ctime_ns.max(f.mtime_ns);
            crate::fs::note_change(t.txn(), c.vol, f.ino, c.session)?;
            attrs.push(inode.attr(f.ino));
            t.set(f.ino, inode);
        }
        // References are added before any is dropped, so a block whose
        // slice this commit both adds and prunes is counted right.
        blocks::add_refs(t.txn(), p, &refs.added)?;
        blocks::drop_refs(t.txn(), &refs.dropped)?;
        let reserved = self
            .meta
            .usage
            .reserve(c.vol, &volume.name, volume.size, growth)?;
        t.finish()?;
        Ok((attrs, epoch, reserved))
    }
}

/// Reads the class's current placement in the transaction (so a remap
/// that commits first makes this commit retry and see it); shards placed
/// with an older table are queued to move. Returns the current epoch.
fn queue_moves(txn: &mut dyn Txn, p: Protection, c: &Commit) -> Result<u64> {
    let current: Option<PlacementRecord> = load(txn, &keys::placement(p.k, p.m))?;
    let epoch = current.as_ref().map_or(0, |c| c.epoch);
    if c.placement_epoch == 0 || c.placement_epoch >= epoch {
        return Ok(epoch);
    }
    let key = keys::placement_history(p.k, p.m, c.placement_epoch);
    let old: PlacementRecord = load(txn, &key)?.ok_or_else(|| {
        MetaError::Invalid(format!(
            "placement epoch {} of {p} is unknown",
            c.placement_epoch
        ))
    })?;
    let cur = current.as_ref().expect("an epoch above 0 has a table");
    for s in c.files.iter().flat_map(|f| &f.slices) {
        if let Some((d, sources)) = rebalance::moves_of(&old.pgs, &cur.pgs, *s) {
            repair::queue(txn, p, &d, &sources)?;
        }
    }
    Ok(epoch)
}

/// A merge's slices cover exactly the runs it replaces (no hole filled,
/// no byte added), and those runs are what shows there now.
fn unchanged(txn: &mut dyn Txn, vol: VolumeId, f: &FileWrite) -> Result<()> {
    let (start, end) = span(&f.slices);
    if slices::covered(&f.slices) != slices::covered(&f.replaces)
        || span(&f.replaces) != (start, end)
    {
        return Err(MetaError::Invalid(format!(
            "a merge of inode {} covers other bytes than it replaces",
            f.ino
        )));
    }
    if slices::showing(txn, vol, f.ino, start, end)? != f.replaces {
        return Err(MetaError::Busy(format!(
            "inode {} changed in [{start}, {end}) since its fragments were read",
            f.ino
        )));
    }
    Ok(())
}

/// The first and last byte (exclusive) of some slices.
fn span(slices: &[Slice]) -> (u64, u64) {
    let start = slices.iter().map(|s| s.offset).min().unwrap_or(0);
    let end = slices.iter().map(Slice::end).max().unwrap_or(0);
    (start, end)
}

/// An inline block must be pointed into by the commit, with its length.
fn check_inline(b: &InlineBlock, files: &[FileWrite]) -> Result<()> {
    b.check()?;
    let bad = |why: &str| {
        Err(MetaError::Invalid(format!(
            "inline block {:#x} of {} bytes: {why}",
            b.block,
            b.data.len()
        )))
    };
    let slices = || {
        files
            .iter()
            .flat_map(|f| &f.slices)
            .filter(|s| s.block == b.block)
    };
    if slices().next().is_none() {
        return bad("no slice of this commit points into it");
    }
    if slices().any(|s| s.block_len as usize != b.data.len()) {
        return bad("a slice gives it another length");
    }
    Ok(())
}

/// Stores the commit's inline blocks; every inline block its slices point
/// into must then be kept. A block kept already (the same commit retried
/// file by file) must hold the same bytes.
fn store_inline(txn: &mut dyn Txn, files: &[FileWrite], inline: &[InlineBlock]) -> Result<()> {
    for b in inline {
        let key = keys::inline(b.block);
        match load::<Vec<u8>>(txn, &key)? {
            None => store(txn, &key, &b.data.to_vec())?,
            Some(kept) if kept == b.data => {}
            Some(_) => {
                return Err(MetaError::Invalid(format!(
                    "inline block {:#x} is kept already with other bytes",
                    b.block
                )))
            }
        }
    }
    for s in files.iter().flat_map(|f| &f.slices) {
        if is_inline(s.block)
            && !inline.iter().any(|b| b.block == s.block)
            && txn.get(&keys::inline(s.block))?.is_none()
        {
            return Err(MetaError::Invalid(format!(
                "slice {s:?} points into inline block {:#x}, which is not kept",
                s.block
            )));
        }
    }
    Ok(())
}

/// Lays a file's new slices over its extent map (`slices.rs`), oldest
/// first, collecting the references they add and drop.
fn append_slices(txn: &mut dyn Txn, vol: VolumeId, f: &FileWrite, refs: &mut Refs) -> Result<()> {
    slices::lay(txn, vol, f.ino, &f.slices, refs)
}
