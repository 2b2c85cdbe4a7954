//! A file's bytes as an extent map: file offsets mapped to the slice that
//! shows there, never overlapping. Laying a new slice over it removes the
//! extents it covers whole, cuts the ones it overlaps at an edge and
//! splits the one it falls inside, so the map holds only what is visible
//! and one extent per run of bytes last written together, however often
//! the file is overwritten. Laying costs a lookup back and what it
//! covers; reading a range costs a lookup and what is there.
//!
//! The algorithm is written once ([`lay`], [`cut_at`]) over [`Extents`]:
//! the metadata service keeps a file's map in its store, a mount keeps
//! what it read of one in memory ([`ExtentMap`]).

use std::{collections::BTreeMap, convert::Infallible};

use crate::Slice;

/// Where an extent map is kept.
pub trait Extents {
    type Error;
    /// The extent starting last before `offset`, if any.
    fn before(&mut self, offset: u64) -> Result<Option<Slice>, Self::Error>;
    /// The extents starting in `[start, end)`, in order.
    fn starting_in(&mut self, start: u64, end: u64) -> Result<Vec<Slice>, Self::Error>;
    /// Puts `s` at its offset, replacing what started there.
    fn put(&mut self, s: Slice) -> Result<(), Self::Error>;
    /// Removes the extent starting at `offset`.
    fn remove(&mut self, offset: u64) -> Result<(), Self::Error>;
}

/// What laying slices changed in block references: the extents that
/// reference a block and did not before (a laid slice, the far part of a
/// split), and those that went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Refs {
    pub added: Vec<Slice>,
    pub dropped: Vec<Slice>,
}

/// `e` up to `at`.
fn head(e: Slice, at: u64) -> Slice {
    Slice {
        len: (at - e.offset) as u32,
        ..e
    }
}

/// `e` from `at`.
fn tail(e: Slice, at: u64) -> Slice {
    let skip = (at - e.offset) as u32;
    Slice {
        offset: at,
        len: e.len - skip,
        block_offset: e.block_offset + skip,
        ..e
    }
}

/// Lays `s` over the map.
pub fn lay<E: Extents>(map: &mut E, s: Slice, refs: &mut Refs) -> Result<(), E::Error> {
    lay_run(map, &[s], refs)
}

/// Lays `slices` (oldest first) over the map. Slices that do not overlap
/// each other (the runs of one flush) are laid a run of touching slices at
/// a time: one lookup back and one scan of the range the run covers,
/// never of the extents between runs.
pub fn lay_all<E: Extents>(map: &mut E, slices: &[Slice], refs: &mut Refs) -> Result<(), E::Error> {
    let mut sorted = slices.to_vec();
    sorted.sort_by_key(|s| s.offset);
    if !sorted.windows(2).all(|w| w[0].end() <= w[1].offset) {
        for s in slices {
            lay(map, *s, refs)?;
        }
        return Ok(());
    }
    for run in sorted.chunk_by(|x, y| x.end() == y.offset) {
        lay_run(map, run, refs)?;
    }
    Ok(())
}

/// Lays `run`, slices in file order each ending where the next starts:
/// makes room for the range they cover, then puts them.
fn lay_run<E: Extents>(map: &mut E, run: &[Slice], refs: &mut Refs) -> Result<(), E::Error> {
    let (a, b) = (run[0].offset, run[run.len() - 1].end());
    if let Some(e) = map.before(a)?.filter(|e| e.end() > a) {
        // Its head stays where it is, shortened.
        map.put(head(e, a))?;
        if e.end() > b {
            // The run falls inside it: its tail is an extent of its own.
            let t = tail(e, b);
            map.put(t)?;
            refs.added.push(t);
        }
    }
    for x in map.starting_in(a, b)? {
        if x.end() > b {
            // Covered at its head only: the rest moves to start at `b`.
            map.put(tail(x, b))?;
        } else {
            refs.dropped.push(x);
        }
        // A slice of the run starting here replaces it anyway.
        if run.binary_search_by_key(&x.offset, |s| s.offset).is_err() {
            map.remove(x.offset)?;
        }
    }
    for &s in run {
        map.put(s)?;
        refs.added.push(s);
    }
    Ok(())
}

/// Cuts the extent reaching past `size` there; the caller removes the
/// extents starting at `size` or later (all of them, or a step at a time).
pub fn cut_at<E: Extents>(map: &mut E, size: u64) -> Result<(), E::Error> {
    if let Some(e) = map.before(size)?.filter(|e| e.end() > size) {
        map.put(head(e, size))?;
    }
    Ok(())
}

/// One visible run of a range: bytes `[offset, offset+len)` come from
/// `slice`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Visible {
    pub slice: Slice,
    pub offset: u64,
    pub len: u64,
}

impl Visible {
    /// Where the run starts in its block.
    pub fn block_offset(&self) -> usize {
        self.slice.block_offset as usize + (self.offset - self.slice.offset) as usize
    }

    /// The run as a slice of its own.
    pub fn as_slice(&self) -> Slice {
        Slice {
            offset: self.offset,
            len: self.len as u32,
            block_offset: self.block_offset() as u32,
            ..self.slice
        }
    }
}

/// An extent map in memory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentMap {
    map: BTreeMap<u64, Slice>,
}

impl Extents for ExtentMap {
    type Error = Infallible;

    fn before(&mut self, offset: u64) -> Result<Option<Slice>, Infallible> {
        Ok(self.map.range(..offset).next_back().map(|(_, s)| *s))
    }

    fn starting_in(&mut self, start: u64, end: u64) -> Result<Vec<Slice>, Infallible> {
        Ok(self.map.range(start..end).map(|(_, s)| *s).collect())
    }

    fn put(&mut self, s: Slice) -> Result<(), Infallible> {
        self.map.insert(s.offset, s);
        Ok(())
    }

    fn remove(&mut self, offset: u64) -> Result<(), Infallible> {
        self.map.remove(&offset);
        Ok(())
    }
}

impl ExtentMap {
    /// Lays `s` over the map.
    pub fn lay(&mut self, s: Slice) {
        let Ok(()) = lay(self, s, &mut Refs::default());
    }

    /// Drops everything at `size` and past it.
    pub fn cut(&mut self, size: u64) {
        let Ok(()) = cut_at(self, size);
        self.map.split_off(&size);
    }

    /// What shows in `[start, end)`, in file order; bytes no extent covers
    /// are holes.
    pub fn visible(&self, start: u64, end: u64) -> Vec<Visible> {
        let first = self
            .map
            .range(..start)
            .next_back()
            .filter(|(_, e)| e.end() > start);
        first
            .into_iter()
            .chain(self.map.range(start..end))
            .map(|(_, e)| {
                let (lo, hi) = (e.offset.max(start), e.end().min(end));
                Visible {
                    slice: *e,
                    offset: lo,
                    len: hi - lo,
                }
            })
            .collect()
    }

    /// The extent starting at `offset`.
    pub fn get(&self, offset: u64) -> Option<&Slice> {
        self.map.get(&offset)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every extent, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Slice> {
        self.map.values()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn slice(offset: u64, len: u32, block: u64) -> Slice {
        Slice {
            offset,
            len,
            block,
            block_offset: 0,
            block_len: 1 << 20,
        }
    }

    proptest! {
        /// Whatever is laid in whatever order, the map shows each byte from
        /// the last slice laid over it, from the same place in its block;
        /// extents never overlap; every reference is accounted for.
        #[test]
        fn the_map_shows_the_newest_bytes(
            writes in proptest::collection::vec((0u64..300, 1u32..80), 1..40),
            cut in 0u64..400,
        ) {
            let mut map = ExtentMap::default();
            let mut refs = Refs::default();
            let mut model = vec![0u64; 400];
            for (i, &(offset, len)) in writes.iter().enumerate() {
                let block = i as u64 + 1;
                lay(&mut map, slice(offset, len, block), &mut refs).unwrap();
                for b in offset..offset + u64::from(len) {
                    model[b as usize] = block;
                }
            }
            // The same writes laid as one flush's batches (runs that do
            // not overlap laid together) give the same map.
            let mut batched = ExtentMap::default();
            let mut brefs = Refs::default();
            let mut batch: Vec<Slice> = Vec::new();
            for (i, &(offset, len)) in writes.iter().enumerate() {
                let s = slice(offset, len, i as u64 + 1);
                if batch.iter().any(|b| b.offset < s.end() && s.offset < b.end()) {
                    lay_all(&mut batched, &batch, &mut brefs).unwrap();
                    batch.clear();
                }
                batch.push(s);
            }
            lay_all(&mut batched, &batch, &mut brefs).unwrap();
            prop_assert_eq!(&batched, &map);
            prop_assert_eq!(brefs.added.len() - brefs.dropped.len(), batched.len());
            prop_assert_eq!(refs.added.len() - refs.dropped.len(), map.len());
            let mut seen = vec![0u64; 400];
            let mut end = 0;
            for e in map.iter() {
                prop_assert!(e.offset >= end, "extents overlap: {:?}", map);
                end = e.end();
            }
            for v in map.visible(0, 400) {
                for b in v.offset..v.offset + v.len {
                    let written_at = writes[v.slice.block as usize - 1].0;
                    let at = v.block_offset() as u64 + (b - v.offset);
                    prop_assert_eq!(at, b - written_at, "byte {} from the wrong place", b);
                    seen[b as usize] = v.slice.block;
                }
            }
            prop_assert_eq!(&seen, &model);
            map.cut(cut);
            for v in map.visible(0, 400) {
                prop_assert!(v.offset + v.len <= cut);
                for b in v.offset..v.offset + v.len {
                    prop_assert_eq!(v.slice.block, model[b as usize]);
                }
            }
        }
    }

    /// An extent map that counts the extents it reads and writes.
    #[derive(Default)]
    struct Counted {
        map: ExtentMap,
        touched: usize,
    }

    impl Extents for Counted {
        type Error = Infallible;

        fn before(&mut self, offset: u64) -> Result<Option<Slice>, Infallible> {
            let e = self.map.before(offset)?;
            self.touched += usize::from(e.is_some());
            Ok(e)
        }

        fn starting_in(&mut self, start: u64, end: u64) -> Result<Vec<Slice>, Infallible> {
            let found = self.map.starting_in(start, end)?;
            self.touched += found.len();
            Ok(found)
        }

        fn put(&mut self, s: Slice) -> Result<(), Infallible> {
            self.touched += 1;
            self.map.put(s)
        }

        fn remove(&mut self, offset: u64) -> Result<(), Infallible> {
            self.touched += 1;
            self.map.remove(offset)
        }
    }

    /// A database's flush: a few pages far apart in a file of many
    /// extents. Laying them costs what they cover, not the extents
    /// between them.
    #[test]
    fn laying_scattered_slices_touches_only_what_they_cover() {
        let mut map = Counted::default();
        let mut refs = Refs::default();
        let pages: Vec<Slice> = (0..10_000).map(|i| slice(i * 10, 10, i + 1)).collect();
        lay_all(&mut map, &pages, &mut refs).unwrap();
        assert_eq!(map.map.len(), 10_000);
        map.touched = 0;
        let flush = [
            slice(50_000, 10, 20_001),
            slice(50_010, 10, 20_002),
            slice(3, 4, 20_003),
            slice(99_985, 10, 20_004),
        ];
        let mut refs = Refs::default();
        lay_all(&mut map, &flush, &mut refs).unwrap();
        assert!(map.touched <= 20, "touched {} extents", map.touched);
        // One page split in three, two cut by a slice straddling them.
        assert_eq!(map.map.len(), 10_000 + 2 + 1);
        assert_eq!(refs.dropped.len(), 2, "two pages covered whole");
        let v = map.map.visible(0, 20);
        assert_eq!(
            v.iter()
                .map(|x| (x.offset, x.slice.block))
                .collect::<Vec<_>>(),
            vec![(0, 1), (3, 20_003), (7, 1), (10, 2)]
        );
    }

    #[test]
    fn a_slice_inside_an_extent_splits_it() {
        let mut map = ExtentMap::default();
        let mut refs = Refs::default();
        let big = Slice {
            offset: 1000,
            len: 1000,
            block: 7,
            block_offset: 50,
            block_len: 4000,
        };
        lay(&mut map, big, &mut refs).unwrap();
        lay(&mut map, slice(1200, 100, 8), &mut refs).unwrap();
        let m: Vec<Slice> = map.iter().copied().collect();
        assert_eq!((m[0].offset, m[0].len, m[0].block_offset), (1000, 200, 50));
        assert_eq!((m[1].block, m[1].offset), (8, 1200));
        assert_eq!((m[2].offset, m[2].len, m[2].block_offset), (1300, 700, 350));
        assert_eq!(refs.added.len(), 3, "the split adds a reference to block 7");
        let v = map.visible(1250, 1400);
        assert_eq!(
            v.iter()
                .map(|x| (x.offset, x.len, x.slice.block))
                .collect::<Vec<_>>(),
            vec![(1250, 50, 8), (1300, 100, 7)]
        );
        assert_eq!(v[1].block_offset(), 350);
    }
}
