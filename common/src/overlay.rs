//! Which bytes of a file are visible when slices overlap: a later slice
//! covers an earlier one. Used by readers (what to fetch) and by the metadata
//! service (which slices are fully shadowed and can be dropped).

use std::collections::BTreeMap;

/// One visible piece: bytes `[offset, offset+len)` of the file come from
/// slice number `slice` (an index into the input).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub slice: usize,
    pub offset: u64,
    pub len: u64,
}

/// Visible pieces of `[start, end)`, sorted by offset. `extents` are
/// `(offset, len)` of each slice, oldest first. Bytes no slice covers are
/// holes: no piece is returned for them.
///
/// Slices are laid newest first over the bytes still uncovered, kept as a
/// set of disjoint intervals: O(n log n) for n slices, so a long slice
/// list costs a sort, not a scan per slice.
pub fn visible(extents: &[(u64, u64)], start: u64, end: u64) -> Vec<Piece> {
    let mut uncovered: BTreeMap<u64, u64> = BTreeMap::new();
    if start < end {
        uncovered.insert(start, end);
    }
    let mut pieces = Vec::new();
    for (i, &(off, len)) in extents.iter().enumerate().rev() {
        if uncovered.is_empty() {
            break;
        }
        let (s, e) = (off, off.saturating_add(len));
        if s >= e {
            continue;
        }
        // Uncovered intervals overlapping [s, e): those starting before e
        // and ending after s. They are disjoint and sorted, so walk back
        // from the last one starting before e.
        let hit: Vec<(u64, u64)> = uncovered
            .range(..e)
            .rev()
            .take_while(|(_, &b)| b > s)
            .map(|(&a, &b)| (a, b))
            .collect();
        for (a, b) in hit {
            let (lo, hi) = (a.max(s), b.min(e));
            pieces.push(Piece {
                slice: i,
                offset: lo,
                len: hi - lo,
            });
            uncovered.remove(&a);
            if a < lo {
                uncovered.insert(a, lo);
            }
            if hi < b {
                uncovered.insert(hi, b);
            }
        }
    }
    pieces.sort_by_key(|p| p.offset);
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_slices_win_and_holes_stay_holes() {
        // old: [0,100), newer: [40,60), newest: [90,120)
        let ex = [(0, 100), (40, 20), (90, 30)];
        let p = visible(&ex, 0, 130);
        assert_eq!(
            p,
            vec![
                Piece {
                    slice: 0,
                    offset: 0,
                    len: 40
                },
                Piece {
                    slice: 1,
                    offset: 40,
                    len: 20
                },
                Piece {
                    slice: 0,
                    offset: 60,
                    len: 30
                },
                Piece {
                    slice: 2,
                    offset: 90,
                    len: 30
                },
            ]
        );
        assert!(visible(&ex, 125, 200).is_empty());
    }

    proptest::proptest! {
        #[test]
        fn any_overlap_matches_a_byte_by_byte_model(
            ex in proptest::collection::vec((0u64..200, 0u64..60), 0..40),
            start in 0u64..100,
            len in 0u64..200,
        ) {
            let end = start + len;
            let mut model = vec![usize::MAX; 300];
            for (i, &(o, l)) in ex.iter().enumerate() {
                for b in o..o + l {
                    model[b as usize] = i;
                }
            }
            let mut got = vec![usize::MAX; 300];
            let pieces = visible(&ex, start, end);
            for p in &pieces {
                proptest::prop_assert!(p.len > 0);
                for b in p.offset..p.offset + p.len {
                    proptest::prop_assert_eq!(got[b as usize], usize::MAX, "bytes seen twice");
                    got[b as usize] = p.slice;
                }
            }
            for b in 0..300 {
                let want = if (start..end).contains(&(b as u64)) { model[b] } else { usize::MAX };
                proptest::prop_assert_eq!(got[b], want, "byte {}", b);
            }
            proptest::prop_assert!(pieces.windows(2).all(|w| w[0].offset < w[1].offset));
        }
    }

    #[test]
    fn matches_a_byte_by_byte_model() {
        let ex = [(5, 10), (0, 3), (8, 4), (2, 10), (20, 1)];
        let mut model = [usize::MAX; 25];
        for (i, &(o, l)) in ex.iter().enumerate() {
            for b in o..o + l {
                model[b as usize] = i;
            }
        }
        let mut got = [usize::MAX; 25];
        for p in visible(&ex, 0, 25) {
            for b in p.offset..p.offset + p.len {
                got[b as usize] = p.slice;
            }
        }
        assert_eq!(got, model);
    }
}
