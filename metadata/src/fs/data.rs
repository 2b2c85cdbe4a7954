//! Where a file's bytes live: its chunks' slice lists. Writers commit new
//! slices here only after their shards are durable. A block of at most
//! `INLINE_MAX` bytes may instead come with the commit and be kept here
//! (an inline block: its id has `INLINE_BIT` set).

use std::collections::BTreeSet;

use tessera_common::{
    is_inline, overlay, BlockId, Ino, Protection, VolumeId, CHUNK_SIZE, INLINE_BIT, INLINE_MAX,
    MAX_BLOCK,
};

use super::{Attr, Tree, KIND_FILE};
use crate::{
    blocks, keys,
    meta::Meta,
    rebalance,
    records::{decode, load, store, PlacementRecord, Slice},
    repair::{self, Degraded},
    store::{transact, Txn},
    MetaError, Result,
};

/// Largest file: 2^50 bytes (1 PiB).
pub const MAX_FILE_SIZE: u64 = 1 << 50;

/// A chunk with more slices than this is pruned of fully shadowed ones on
/// the next commit.
const PRUNE_AT: usize = 32;

/// The bytes of an inline block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InlineBlock {
    pub block: BlockId,
    pub data: Vec<u8>,
}

/// A file's attributes, slices and the inline blocks they point into.
#[derive(Clone, Debug)]
pub struct FileData {
    pub attr: Attr,
    /// Oldest first within each chunk.
    pub slices: Vec<Slice>,
    pub inline: Vec<InlineBlock>,
}

/// Slices written to one file in one flush.
#[derive(Clone, Debug)]
pub struct FileWrite {
    pub ino: Ino,
    pub slices: Vec<Slice>,
    pub mtime_ns: i64,
}

impl Meta {
    /// Reserves `count` fresh block ids; returns the first.
    pub fn alloc_blocks(&self, count: u32) -> Result<u64> {
        if !(1..=65_536).contains(&count) {
            return Err(MetaError::Invalid(format!(
                "block count {count} not in 1..=65536"
            )));
        }
        let first = self.block_ids.alloc(self.store.as_ref(), count.into())?;
        if first + u64::from(count) > INLINE_BIT {
            return Err(MetaError::Invalid("block ids are exhausted".into()));
        }
        Ok(first)
    }

    /// A file's attributes and every slice, oldest first within each chunk.
    pub fn get_slices(&self, vol: VolumeId, ino: Ino) -> Result<(Attr, Vec<Slice>)> {
        let d = self.file_data(vol, ino)?;
        Ok((d.attr, d.slices))
    }

    /// [`Meta::get_slices`] with the bytes of the inline blocks.
    pub fn file_data(&self, vol: VolumeId, ino: Ino) -> Result<FileData> {
        transact(self.store.as_ref(), |txn| {
            let mut t = Tree::new(txn, vol);
            let inode = t.inode(ino)?;
            let (start, end) = keys::prefix_range(&keys::under(keys::CHUNK, vol, ino));
            let mut slices = Vec::new();
            for (k, v) in t.txn().scan(&start, &end, usize::MAX)? {
                slices.extend(decode::<Vec<Slice>>(&k, &v)?);
            }
            let blocks: BTreeSet<BlockId> = slices
                .iter()
                .map(|s| s.block)
                .filter(|&b| is_inline(b))
                .collect();
            let mut inline = Vec::with_capacity(blocks.len());
            for block in blocks {
                let key = keys::inline(block);
                let data: Vec<u8> = load(t.txn(), &key)?.ok_or_else(|| MetaError::Corrupt {
                    key,
                    why: format!("inline block {block:#x} of inode {ino} has no bytes"),
                })?;
                inline.push(InlineBlock { block, data });
            }
            Ok(FileData {
                attr: Attr { ino, inode },
                slices,
                inline,
            })
        })
    }

    /// Appends slices to files and grows their sizes, in one transaction.
    pub fn commit_writes(&self, vol: VolumeId, files: &[FileWrite]) -> Result<Vec<Attr>> {
        self.commit_writes_degraded(vol, files, &[])
    }

    /// [`Meta::commit_writes`], queueing the missing shards of `degraded`
    /// blocks (each one a block of these slices) for repair in the same
    /// transaction.
    pub fn commit_writes_degraded(
        &self,
        vol: VolumeId,
        files: &[FileWrite],
        degraded: &[Degraded],
    ) -> Result<Vec<Attr>> {
        Ok(self.commit_writes_placed(vol, files, degraded, 0)?.0)
    }

    /// [`Meta::commit_writes_degraded`] for blocks placed with the table of
    /// `placement_epoch` (0: the current one). Shards placed with an older
    /// table are queued to move where the current table wants them, in the
    /// same transaction. Returns the attributes and the current epoch.
    pub fn commit_writes_placed(
        &self,
        vol: VolumeId,
        files: &[FileWrite],
        degraded: &[Degraded],
        placement_epoch: u64,
    ) -> Result<(Vec<Attr>, u64)> {
        self.commit_writes_inline(vol, files, degraded, &[], placement_epoch)
    }

    /// [`Meta::commit_writes_placed`] that also stores `inline` blocks, in
    /// the same transaction. A slice may point into an inline block only if
    /// the block comes with this commit or is kept already.
    pub fn commit_writes_inline(
        &self,
        vol: VolumeId,
        files: &[FileWrite],
        degraded: &[Degraded],
        inline: &[InlineBlock],
        placement_epoch: u64,
    ) -> Result<(Vec<Attr>, u64)> {
        for f in files {
            for s in &f.slices {
                check_slice(s)?;
            }
        }
        for b in inline {
            check_inline(b, files)?;
        }
        let volume = self.volume_by_id(vol)?;
        let min_durable = self
            .volume_settings(vol)?
            .min_durable_for(volume.protection);
        for d in degraded {
            repair::check(d, volume.protection)?;
            if volume.protection.width() - d.missing.len() < min_durable {
                return Err(MetaError::Invalid(format!(
                    "block {} has {} durable shards; volume {} needs {min_durable}",
                    d.block,
                    volume.protection.width() - d.missing.len(),
                    volume.name
                )));
            }
            if !files
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
        let p = volume.protection;
        let (attrs, growth, epoch) = transact(self.store.as_ref(), |txn| {
            for d in degraded {
                repair::queue(txn, p, d)?;
            }
            store_inline(txn, files, inline)?;
            // Read in the transaction, so a remap that commits first makes
            // this commit retry and see it.
            let current: Option<PlacementRecord> = load(txn, &keys::placement(p.k, p.m))?;
            let epoch = current.as_ref().map_or(0, |c| c.epoch);
            if placement_epoch != 0 && placement_epoch < epoch {
                let key = keys::placement_history(p.k, p.m, placement_epoch);
                let old: PlacementRecord = load(txn, &key)?.ok_or_else(|| {
                    MetaError::Invalid(format!(
                        "placement epoch {placement_epoch} of {p} is unknown"
                    ))
                })?;
                let cur = current.as_ref().expect("an epoch above 0 has a table");
                for s in files.iter().flat_map(|f| &f.slices) {
                    if let Some((d, sources)) = rebalance::moves_of(&old.pgs, &cur.pgs, *s) {
                        repair::queue_with_sources(txn, p, &d, &sources)?;
                    }
                }
            }
            let mut t = Tree::new(txn, vol);
            let mut attrs = Vec::with_capacity(files.len());
            let mut growth = 0u64;
            for f in files {
                let mut inode = t.inode(f.ino)?;
                if inode.kind != KIND_FILE {
                    return Err(MetaError::Invalid(format!(
                        "inode {} is not a regular file",
                        f.ino
                    )));
                }
                for s in &f.slices {
                    append_slice(t.txn(), p, vol, f.ino, *s)?;
                }
                let end = f.slices.iter().map(Slice::end).max().unwrap_or(0);
                if end > inode.size {
                    growth += end - inode.size;
                    inode.size = end;
                }
                inode.mtime_ns = inode.mtime_ns.max(f.mtime_ns);
                inode.ctime_ns = inode.ctime_ns.max(f.mtime_ns);
                t.set(f.ino, inode.clone());
                attrs.push(Attr { ino: f.ino, inode });
            }
            let used = self.usage_of(vol).bytes;
            if growth > 0 && used.saturating_add(growth) > volume.size {
                return Err(MetaError::Quota {
                    volume: volume.name.clone(),
                    used,
                    size: volume.size,
                });
            }
            t.finish()?;
            Ok((attrs, growth, epoch))
        })?;
        self.account(vol, growth as i64, 0);
        if !degraded.is_empty() || (placement_epoch != 0 && placement_epoch < epoch) {
            self.repair_queued.notify_one();
        }
        Ok((attrs, epoch))
    }
}

fn check_slice(s: &Slice) -> Result<()> {
    let ok = s.len > 0
        && s.block != 0
        && (s.block_len as usize) <= MAX_BLOCK
        && s.block_offset
            .checked_add(s.len)
            .is_some_and(|e| e <= s.block_len)
        && s.offset
            .checked_add(u64::from(s.len))
            .is_some_and(|e| e <= MAX_FILE_SIZE);
    if ok {
        Ok(())
    } else {
        Err(MetaError::Invalid(format!("malformed slice {s:?}")))
    }
}

/// An inline block must be small, marked, and pointed into by the commit.
fn check_inline(b: &InlineBlock, files: &[FileWrite]) -> Result<()> {
    let bad = |why: &str| {
        Err(MetaError::Invalid(format!(
            "inline block {:#x} of {} bytes: {why}",
            b.block,
            b.data.len()
        )))
    };
    if !is_inline(b.block) {
        return bad("its id lacks the inline bit");
    }
    if b.data.is_empty() || b.data.len() > INLINE_MAX {
        return bad("length out of range");
    }
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
            None => store(txn, &key, &b.data)?,
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

/// Adds a slice on top of its chunk(s), splitting it at chunk boundaries;
/// each piece references its block.
fn append_slice(
    txn: &mut dyn Txn,
    p: Protection,
    vol: VolumeId,
    ino: Ino,
    mut s: Slice,
) -> Result<()> {
    loop {
        let index = s.offset / CHUNK_SIZE;
        let chunk_end = (index + 1) * CHUNK_SIZE;
        let mut part = s;
        if s.end() > chunk_end {
            part.len = (chunk_end - s.offset) as u32;
        }
        let key = keys::chunk(vol, ino, index);
        let mut list: Vec<Slice> = load(txn, &key)?.unwrap_or_default();
        list.push(part);
        blocks::add_ref(txn, p, &part)?;
        if list.len() > PRUNE_AT {
            let (kept, dropped) = prune(list, index);
            blocks::drop_refs(txn, &dropped)?;
            list = kept;
        }
        store(txn, &key, &list)?;
        if part.len == s.len {
            return Ok(());
        }
        s.offset += u64::from(part.len);
        s.block_offset += part.len;
        s.len -= part.len;
    }
}

/// Splits off slices that newer ones cover completely: they add no visible
/// byte. Returns (kept, dropped).
fn prune(list: Vec<Slice>, index: u64) -> (Vec<Slice>, Vec<Slice>) {
    let extents: Vec<(u64, u64)> = list.iter().map(|s| (s.offset, u64::from(s.len))).collect();
    let mut visible = vec![false; list.len()];
    for p in overlay::visible(&extents, index * CHUNK_SIZE, (index + 1) * CHUNK_SIZE) {
        visible[p.slice] = true;
    }
    let (kept, dropped): (Vec<_>, Vec<_>) = list.into_iter().zip(visible).partition(|(_, v)| *v);
    (
        kept.into_iter().map(|(s, _)| s).collect(),
        dropped.into_iter().map(|(s, _)| s).collect(),
    )
}

/// Cuts every slice at `size` so bytes beyond it never reappear.
pub(super) fn truncate_slices(txn: &mut dyn Txn, vol: VolumeId, ino: Ino, size: u64) -> Result<()> {
    let first = size / CHUNK_SIZE;
    let (_, end) = keys::prefix_range(&keys::under(keys::CHUNK, vol, ino));
    for (k, v) in txn.scan(&keys::chunk(vol, ino, first), &end, usize::MAX)? {
        let list: Vec<Slice> = decode(&k, &v)?;
        let (kept, gone): (Vec<Slice>, Vec<Slice>) =
            list.into_iter().partition(|s| s.offset < size);
        blocks::drop_refs(txn, &gone)?;
        let kept: Vec<Slice> = kept
            .into_iter()
            .map(|mut s| {
                if s.end() > size {
                    s.len = (size - s.offset) as u32;
                }
                s
            })
            .collect();
        if kept.is_empty() {
            txn.delete(&k)?;
        } else {
            store(txn, &k, &kept)?;
        }
    }
    Ok(())
}
