//! Letting go of what a file holds, in steps.
//!
//! A file's chunk rows (and their block references) and xattrs can be
//! many: a 10 GiB file written 4 KiB at a time has millions of slices. No
//! transaction does an unbounded amount of work, so removing or truncating
//! a large file is a series of transactions, each safe to crash after:
//!
//! - Removal: the transaction that drops a file's last link deletes its
//!   inode, and its rows too if they are few ([`FIRST_STEP_BYTES`]);
//!   otherwise it writes a release record (`F`). Later steps each delete a
//!   step's worth of rows (dropping their block references) until none is
//!   left, then the record. The inode number is never reused, so nothing
//!   new can land among the rows being deleted.
//! - Truncation: the transaction that lowers a file's size cuts the rows
//!   past it if they fit in one step; otherwise it writes a trim record
//!   (`T`, the size to cut at) and later steps cut the rest. A commit or a
//!   size change of that file finishes the trim first ([`pending_trim`]
//!   makes its transaction retry), so a slice committed after the
//!   truncation is never cut by it.
//!
//! A removal answers once its inode is gone (the file's bytes are no
//! longer counted in its volume's usage) and wakes the garbage collection
//! task, which finishes the release ([`resume`], also run when the service
//! opens after a crash). A trim is finished by the request that started
//! it before it answers, since the next write to the file waits for it.

use tessera_common::{Ino, Slice, VolumeId};
use tracing::info;

use super::TreeTxn;
use crate::{
    blocks,
    data::slices,
    keys,
    records::{decode, load, store, TrimRecord},
    store::{transact_buffered, MetaStore, Txn},
    MetaError, Result,
};

/// Most bytes of rows one step reads and deletes (a slice's row is about
/// 70 bytes: some 15,000 slices).
const STEP_BYTES: usize = 1 << 20;
/// Most bytes of rows the transaction removing a file deletes (about
/// 1,000 slices): more is left to the background, so the removal of a
/// large file answers at once.
const FIRST_STEP_BYTES: usize = 64 << 10;
/// Most rows one `delete_rows` deletes, whatever their size: a step is
/// one transaction, which etcd bounds by operations (`etcd_member.rs`).
/// A step deletes slices, xattrs and locks, and up to two block records
/// per slice: at most 5 × 2,048 writes.
const STEP_ROWS: usize = 2048;
/// Rows one scan of a step returns at most.
const SCAN_ROWS: usize = 1024;

/// Deletes the rows in `[start, end)` (slices when `slices`, dropping
/// their block references) up to `budget` bytes of them, or a step's
/// worth when `None`, and at most [`STEP_ROWS`] rows. Returns whether rows are left.
pub(crate) fn delete_rows(
    txn: &mut dyn Txn,
    start: &[u8],
    end: &[u8],
    slices: bool,
    budget: Option<usize>,
) -> Result<bool> {
    let budget = budget.unwrap_or(STEP_BYTES);
    let mut from = start.to_vec();
    let (mut bytes, mut deleted) = (0, 0);
    let mut dropped: Vec<Slice> = Vec::new();
    let more = loop {
        let ask = SCAN_ROWS.min(STEP_ROWS - deleted);
        let rows = txn.scan(&from, end, ask)?;
        let Some(last) = rows.last() else {
            break false;
        };
        from = last.0.clone();
        from.push(0);
        let full = rows.len() == ask;
        for (k, v) in &rows {
            if slices {
                dropped.push(decode::<Slice>(k, v)?);
            }
            txn.delete(k)?;
            bytes += k.len() + v.len();
        }
        deleted += rows.len();
        if !full {
            break false;
        }
        if bytes >= budget || deleted >= STEP_ROWS {
            break true;
        }
    };
    blocks::drop_refs(txn, &dropped)?;
    Ok(more)
}

/// One step (of at most `budget` bytes) of deleting the slices, then
/// the xattrs, of `ino`. Returns whether rows are left.
fn release_step(txn: &mut dyn Txn, vol: VolumeId, ino: Ino, budget: Option<usize>) -> Result<bool> {
    for (prefix, slices) in [
        (keys::SLICE, true),
        (keys::XATTR, false),
        (keys::LOCK, false),
    ] {
        let (start, end) = keys::prefix_range(&keys::under(prefix, vol, ino));
        if delete_rows(txn, &start, &end, slices, budget)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes inode `ino`, which lost its last link and is not kept open, in
/// the tree's transaction: the inode now, and what it holds now too if
/// that fits in one step. Returns whether a release is left for
/// [`finish_release`], in the background.
pub(crate) fn remove_inode(t: &mut TreeTxn<'_>, ino: Ino) -> Result<bool> {
    t.forget_inode(ino);
    let vol = t.vol();
    let txn = t.txn();
    txn.delete(&keys::trim(vol, ino))?;
    let more = release_step(txn, vol, ino, Some(FIRST_STEP_BYTES))?;
    if more {
        txn.put(&keys::release(vol, ino), b"")?;
    }
    Ok(more)
}

/// Finishes the release of a removed inode, a step per transaction.
pub(crate) fn finish_release(store: &dyn MetaStore, vol: VolumeId, ino: Ino) -> Result<()> {
    let key = keys::release(vol, ino);
    let mut steps = 0u64;
    while transact_buffered(store, |txn| {
        if txn.get(&key)?.is_none() {
            return Ok(false);
        }
        let more = release_step(txn, vol, ino, None)?;
        if !more {
            txn.delete(&key)?;
        }
        Ok(more)
    })? {
        steps += 1;
    }
    if steps > 0 {
        info!(volume = vol, ino, steps, "released a large file");
    }
    Ok(())
}

/// Cuts the extents of `ino` at `size`: the one reaching past it now,
/// and up to a step's worth of those after it, which go whole. Returns
/// whether extents are left to cut.
fn trim_step(txn: &mut dyn Txn, vol: VolumeId, ino: Ino, size: u64) -> Result<bool> {
    let from = slices::cut_at(txn, vol, ino, size)?;
    let (_, end) = keys::prefix_range(&keys::under(keys::SLICE, vol, ino));
    delete_rows(txn, &from, &end, true, None)
}

/// Lowers the size of `ino` to `size` in the tree's transaction: cuts its
/// slices now if that fits in one step, else records the trim for
/// [`finish_trim`]. Returns whether a trim is left.
pub(crate) fn cut(t: &mut TreeTxn<'_>, ino: Ino, size: u64) -> Result<bool> {
    let vol = t.vol();
    let txn = t.txn();
    let more = trim_step(txn, vol, ino, size)?;
    if more {
        store(txn, &keys::trim(vol, ino), &TrimRecord { size })?;
    }
    Ok(more)
}

/// Finishes the trim of `ino`, a step per transaction.
pub(crate) fn finish_trim(store: &dyn MetaStore, vol: VolumeId, ino: Ino) -> Result<()> {
    let key = keys::trim(vol, ino);
    while transact_buffered(store, |txn| {
        let Some(TrimRecord { size }) = load(txn, &key)? else {
            return Ok(false);
        };
        let more = trim_step(txn, vol, ino, size)?;
        if !more {
            txn.delete(&key)?;
        }
        Ok(more)
    })? {}
    Ok(())
}

/// Fails with [`MetaError::TrimPending`] if `ino` has a trim left: a
/// transaction that adds slices to it or changes its size must wait for
/// [`finish_trim`] (the read makes a trim recorded meanwhile conflict).
pub(crate) fn pending_trim(txn: &mut dyn Txn, vol: VolumeId, ino: Ino) -> Result<()> {
    match txn.get(&keys::trim(vol, ino))? {
        Some(_) => Err(MetaError::TrimPending { volume: vol, ino }),
        None => Ok(()),
    }
}

/// Finishes every release and trim a crash cut short.
pub(crate) fn resume(store: &dyn MetaStore) -> Result<()> {
    for (prefix, what) in [(keys::RELEASE, "release"), (keys::TRIM, "trim")] {
        let (start, end) = keys::prefix_range(&[prefix]);
        let mut pending: Vec<(VolumeId, Ino)> = Vec::new();
        let mut from = start;
        loop {
            let rows = store.begin().scan(&from, &end, 1024)?;
            let Some(last) = rows.last() else { break };
            from = last.0.clone();
            from.push(0);
            for (k, _) in &rows {
                pending.push(keys::volume_ino_of(k)?);
            }
        }
        for (vol, ino) in pending {
            info!(
                volume = vol,
                ino, what, "finishing what a restart cut short"
            );
            match prefix {
                keys::RELEASE => finish_release(store, vol, ino)?,
                _ => finish_trim(store, vol, ino)?,
            }
        }
    }
    Ok(())
}
