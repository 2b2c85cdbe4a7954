//! A file's extent map in the store (see `tessera_common::extents`):
//! `E` + volume + ino + file offset -> Slice, never overlapping. A commit
//! reads, in one pass, the extents in and just before the ranges its
//! slices cover, lays the slices over them in memory and writes what
//! changed: never more with the file's history or size. The map holds only
//! what is visible, one extent per run of bytes last written together.
//!
//! Range scans are not conflict-checked; what keeps two writers of one
//! file's extents from interleaving is checked elsewhere: a commit and a
//! truncation write the file's inode (and a commit reads its volume's
//! record, which a removal deletes); a trim's later steps are repeatable
//! and a commit waits for them (it reads the `T` record); a release's
//! steps come after the inode is gone, and inode numbers are never
//! reused.

use tessera_common::{
    extents::{self, ExtentMap, Extents, Refs, Visible},
    Ino, Slice, VolumeId,
};

use crate::{
    keys,
    records::{decode, store},
    store::Txn,
    MetaError, Result,
};

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

/// Lays `slices` (one file's, oldest first) over its extent map. What
/// the slices can change (the extents starting in the ranges they cover
/// and the one before each) is read in one pass, laid over in memory, and
/// only the extents that changed are written.
pub(crate) fn lay(
    txn: &mut dyn Txn,
    vol: VolumeId,
    ino: Ino,
    slices: &[Slice],
    refs: &mut Refs,
) -> Result<()> {
    let ranges: Vec<(Vec<u8>, Vec<u8>)> = covered(slices)
        .iter()
        .map(|&(a, b)| (keys::extent(vol, ino, a), keys::extent(vol, ino, b)))
        .collect();
    let floor = keys::under(keys::SLICE, vol, ino);
    let mut old = ExtentMap::default();
    for (k, v) in txn.scan_around(&floor, &ranges)? {
        let Ok(()) = old.put(decode(&k, &v)?);
    }
    let mut new = old.clone();
    let Ok(()) = extents::lay_all(&mut new, slices, refs);
    for e in old.iter() {
        if new.get(e.offset).is_none() {
            txn.delete(&keys::extent(vol, ino, e.offset))?;
        }
    }
    for e in new.iter() {
        if old.get(e.offset) != Some(e) {
            store(txn, &keys::extent(vol, ino, e.offset), e)?;
        }
    }
    Ok(())
}

/// The runs of bytes some slices cover, in order, adjacent ones joined.
pub(crate) fn covered(slices: &[Slice]) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = slices.iter().map(|s| (s.offset, s.end())).collect();
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// What shows of `ino` in `[start, end)`, each run as a slice of its own
/// (clipped to the run): what a merge of that span must find unchanged.
pub(crate) fn showing(
    txn: &mut dyn Txn,
    vol: VolumeId,
    ino: Ino,
    start: u64,
    end: u64,
) -> Result<Vec<Slice>> {
    let floor = keys::under(keys::SLICE, vol, ino);
    let range = (keys::extent(vol, ino, start), keys::extent(vol, ino, end));
    let mut map = ExtentMap::default();
    for (k, v) in txn.scan_around(&floor, &[range])? {
        let Ok(()) = map.put(decode(&k, &v)?);
    }
    Ok(map
        .visible(start, end)
        .iter()
        .map(Visible::as_slice)
        .collect())
}

/// Cuts the extents of `ino` at `size`: the one reaching past it is
/// shortened now; returns the key from which every extent goes whole.
pub(crate) fn cut_at(txn: &mut dyn Txn, vol: VolumeId, ino: Ino, size: u64) -> Result<Vec<u8>> {
    extents::cut_at(&mut Map { txn, vol, ino }, size)?;
    Ok(keys::extent(vol, ino, size))
}

/// Every extent of a file, in file order: read with one iterator, so
/// from one moment (a read-only transaction is not conflict-checked, and
/// pages read by iterators made one after another could mix the map
/// before and after a commit, leaving bytes without an extent).
pub(crate) fn file(txn: &mut dyn Txn, vol: VolumeId, ino: Ino) -> Result<Vec<Slice>> {
    let (from, end) = keys::prefix_range(&keys::under(keys::SLICE, vol, ino));
    txn.scan(&from, &end, usize::MAX)?
        .iter()
        .map(|(k, v)| decode(k, v))
        .collect()
}
