//! Advisory record locks (fcntl's F_SETLK/F_GETLK; flock, which FUSE
//! sends as a lock of the whole file, as NFS does) and the range algebra
//! behind them: what one owner holds is a sorted list of disjoint ranges,
//! each shared (read) or exclusive (write).

use serde::{Deserialize, Serialize};

use crate::{Error, Ino, VolumeId};

/// Most owners holding locks on one file, and most ranges locked on one
/// file: past either a lock is refused (ENOLCK).
pub const MAX_HOLDERS: usize = 1024;
pub const MAX_RANGES: usize = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
}

/// Bytes `start..=end` locked (`end` is inclusive: a lock to the end of
/// the file ends at `u64::MAX` or at the kernel's OFFSET_MAX).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRange {
    pub start: u64,
    pub end: u64,
    pub kind: LockKind,
}

impl LockRange {
    /// A range the caller asked for, checked.
    pub fn new(start: u64, end: u64, kind: LockKind) -> Result<LockRange, Error> {
        if start > end {
            return Err(Error::invalid(
                "lock range",
                format!("{start}..={end}"),
                "it starts after its end",
            ));
        }
        Ok(LockRange { start, end, kind })
    }

    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    /// Whether one owner's `self` keeps another owner from taking `other`.
    pub fn conflicts(&self, other: &LockRange) -> bool {
        self.overlaps(other.start, other.end)
            && (self.kind == LockKind::Write || other.kind == LockKind::Write)
    }
}

/// One lock call of one owner (a process's lock owner in one mount's
/// session): `kind` None releases `start..=end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockRequest {
    pub vol: VolumeId,
    pub ino: Ino,
    pub session: u64,
    pub owner: u64,
    pub pid: u32,
    pub start: u64,
    pub end: u64,
    pub kind: Option<LockKind>,
}

impl LockRequest {
    /// The range asked for, checked (a release is checked as a read).
    pub fn range(&self) -> Result<LockRange, Error> {
        LockRange::new(self.start, self.end, self.kind.unwrap_or(LockKind::Read))
    }
}

/// A lock another owner holds that keeps a request from being granted,
/// and the process that took it (F_GETLK names it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeldLock {
    pub range: LockRange,
    pub pid: u32,
}

/// What a lock call got: granted, or refused for another owner's lock.
/// A grant names the file's last change by another mount (a number that
/// grows with the file's changes): a mount that knew an older one drops
/// its cached view of the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockAnswer {
    Granted { foreign_change: u64 },
    Held(HeldLock),
}

impl LockAnswer {
    pub fn held(&self) -> Option<HeldLock> {
        match self {
            LockAnswer::Held(h) => Some(*h),
            LockAnswer::Granted { .. } => None,
        }
    }
}

/// Sets `start..=end` of one owner's `ranges` to `kind`, or unlocks it
/// (`None`), as a new fcntl lock replaces what the same owner held there:
/// the ranges stay sorted and disjoint, and touching ranges of one kind
/// merge.
pub fn set_range(ranges: &mut Vec<LockRange>, start: u64, end: u64, kind: Option<LockKind>) {
    let mut out = Vec::with_capacity(ranges.len() + 2);
    for r in ranges.drain(..) {
        if !r.overlaps(start, end) {
            out.push(r);
            continue;
        }
        if r.start < start {
            out.push(LockRange {
                end: start - 1,
                ..r
            });
        }
        if r.end > end {
            out.push(LockRange {
                start: end + 1,
                ..r
            });
        }
    }
    if let Some(kind) = kind {
        out.push(LockRange { start, end, kind });
    }
    out.sort_by_key(|r| r.start);
    for r in out {
        match ranges.last_mut() {
            Some(last) if last.kind == r.kind && last.end.checked_add(1) == Some(r.start) => {
                last.end = r.end;
            }
            _ => ranges.push(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use LockKind::*;

    fn r(start: u64, end: u64, kind: LockKind) -> LockRange {
        LockRange { start, end, kind }
    }

    #[test]
    fn a_lock_inside_another_of_the_other_kind_splits_it() {
        let mut v = vec![r(0, 99, Read)];
        set_range(&mut v, 10, 19, Some(Write));
        assert_eq!(v, [r(0, 9, Read), r(10, 19, Write), r(20, 99, Read)]);
        set_range(&mut v, 10, 19, Some(Read));
        assert_eq!(v, [r(0, 99, Read)]);
        set_range(&mut v, 0, u64::MAX, None);
        assert!(v.is_empty());
    }

    #[test]
    fn ranges_at_the_ends_of_the_offsets_do_not_overflow() {
        let mut v = vec![r(0, u64::MAX, Write)];
        set_range(&mut v, u64::MAX, u64::MAX, None);
        set_range(&mut v, 0, 0, None);
        assert_eq!(v, [r(1, u64::MAX - 1, Write)]);
        assert!(LockRange::new(5, 4, Read).is_err());
    }

    #[test]
    fn only_a_write_lock_conflicts() {
        assert!(!r(0, 9, Read).conflicts(&r(5, 5, Read)));
        assert!(r(0, 9, Read).conflicts(&r(5, 5, Write)));
        assert!(r(0, 9, Write).conflicts(&r(9, 20, Read)));
        assert!(!r(0, 9, Write).conflicts(&r(10, 20, Write)));
    }

    /// The kind each of bytes 0..64 has, byte by byte.
    fn bytes(v: &[LockRange]) -> Vec<Option<LockKind>> {
        (0..64u64)
            .map(|b| v.iter().find(|x| x.overlaps(b, b)).map(|x| x.kind))
            .collect()
    }

    proptest! {
        /// Against a byte-by-byte model: every byte ends with the kind of
        /// the last lock that covered it; the ranges stay sorted, disjoint
        /// and merged.
        #[test]
        fn set_range_matches_a_byte_model(
            ops in prop::collection::vec((0u64..64, 0u64..16, prop::option::of(any::<bool>())), 1..40)
        ) {
            let mut v = Vec::new();
            let mut model = vec![None; 64];
            for (start, len, kind) in ops {
                let end = (start + len).min(63);
                let kind = kind.map(|w| if w { Write } else { Read });
                set_range(&mut v, start, end, kind);
                for b in start..=end {
                    model[b as usize] = kind;
                }
                prop_assert_eq!(bytes(&v), model.clone());
                for w in v.windows(2) {
                    prop_assert!(w[0].end < w[1].start);
                    prop_assert!(w[0].kind != w[1].kind || w[0].end + 1 < w[1].start);
                }
            }
        }
    }
}
