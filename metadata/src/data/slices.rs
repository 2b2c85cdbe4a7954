//! A file's extent map in the store (see `tessera_common::extents`):
//! `E` + volume + ino + file offset -> Slice, never overlapping. A commit
//! lays its slices over it: a lookup back and a scan of the range they
//! cover, never more with the file's history; the map holds only what is
//! visible, one extent per run of bytes last written together.
//!
//! Every writer of a file's extents (commit, truncation, release) also
//! writes the file's inode in the same transaction, so two of them never
//! interleave on one file: range scans are not conflict-checked, the inode
//! is.

use tessera_common::{
    extents::{self, Extents, Refs},
    Ino, Slice, VolumeId,
};

use crate::{
    keys,
    records::{decode, store},
    store::Txn,
    MetaError, Result,
};

/// Extents read per scan.
const SCAN: usize = 4096;

/// The extent map of one file, in a transaction.
struct Map<'t> {
    txn: &'t mut dyn Txn,
    vol: VolumeId,
    ino: Ino,
}

impl Extents for Map<'_> {
    type Error = MetaError;

    fn before(&mut self, offset: u64) -> Result<Option<Slice>> {
        let start = keys::under(keys::SLICE, self.vol, self.ino);
        let end = keys::extent(self.vol, self.ino, offset);
        match self.txn.scan_back(&start, &end, 1)?.pop() {
            Some((k, v)) => decode(&k, &v).map(Some),
            None => Ok(None),
        }
    }

    fn starting_in(&mut self, start: u64, end: u64) -> Result<Vec<Slice>> {
        let from = keys::extent(self.vol, self.ino, start);
        let to = keys::extent(self.vol, self.ino, end);
        self.txn
            .scan(&from, &to, usize::MAX)?
            .iter()
            .map(|(k, v)| decode(k, v))
            .collect()
    }

    fn put(&mut self, s: Slice) -> Result<()> {
        store(self.txn, &keys::extent(self.vol, self.ino, s.offset), &s)
    }

    fn remove(&mut self, offset: u64) -> Result<()> {
        Ok(self.txn.delete(&keys::extent(self.vol, self.ino, offset))?)
    }
}

/// Lays `slices` (one file's, oldest first) over its extent map.
pub(crate) fn lay(
    txn: &mut dyn Txn,
    vol: VolumeId,
    ino: Ino,
    slices: &[Slice],
    refs: &mut Refs,
) -> Result<()> {
    extents::lay_all(&mut Map { txn, vol, ino }, slices, refs)
}

/// Cuts the extents of `ino` at `size`: the one reaching past it is
/// shortened now; returns the key from which every extent goes whole.
pub(crate) fn cut_at(txn: &mut dyn Txn, vol: VolumeId, ino: Ino, size: u64) -> Result<Vec<u8>> {
    extents::cut_at(&mut Map { txn, vol, ino }, size)?;
    Ok(keys::extent(vol, ino, size))
}

/// Every extent of a file, in file order.
pub(crate) fn file(txn: &mut dyn Txn, vol: VolumeId, ino: Ino) -> Result<Vec<Slice>> {
    let (mut from, end) = keys::prefix_range(&keys::under(keys::SLICE, vol, ino));
    let mut out = Vec::new();
    loop {
        let rows = txn.scan(&from, &end, SCAN)?;
        let full = rows.len() == SCAN;
        for (k, v) in &rows {
            out.push(decode::<Slice>(k, v)?);
        }
        match rows.last() {
            Some((k, _)) if full => {
                from = k.clone();
                from.push(0);
            }
            _ => return Ok(out),
        }
    }
}
