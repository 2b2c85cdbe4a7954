//! Which bytes of a file are visible when slices overlap: a later slice
//! covers an earlier one. Used by readers (what to fetch) and by the metadata
//! service (which slices are fully shadowed and can be dropped).

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
pub fn visible(extents: &[(u64, u64)], start: u64, end: u64) -> Vec<Piece> {
    let mut uncovered = vec![(start, end)];
    let mut pieces = Vec::new();
    for (i, &(off, len)) in extents.iter().enumerate().rev() {
        if uncovered.is_empty() {
            break;
        }
        let (s_start, s_end) = (off, off.saturating_add(len));
        let mut next = Vec::with_capacity(uncovered.len() + 1);
        for &(a, b) in &uncovered {
            let (lo, hi) = (a.max(s_start), b.min(s_end));
            if lo >= hi {
                next.push((a, b));
                continue;
            }
            pieces.push(Piece {
                slice: i,
                offset: lo,
                len: hi - lo,
            });
            if a < lo {
                next.push((a, lo));
            }
            if hi < b {
                next.push((hi, b));
            }
        }
        uncovered = next;
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
