//! The erasure codec: one block becomes one stripe of K data shards of
//! ceil(len/K) bytes (the last zero-padded) plus M parity shards.
//!
//! The code is systematic: data shard `i` holds block bytes
//! `[i*S, (i+1)*S)`, so healthy reads never decode. `replica:N` (K=1) stores N
//! identical copies and needs no arithmetic at all.

mod gfni;

use bytes::Bytes;
use reed_solomon_erasure::galois_8::ReedSolomon;

use crate::{BlockId, Error, Protection};

pub struct Codec {
    protection: Protection,
    /// `None` when there is nothing to compute: replicas, or no parity.
    rs: Option<ReedSolomon>,
    /// The same parity, faster, on CPUs with GFNI and AVX-512.
    gfni: Option<gfni::Gfni>,
}

/// One piece of a systematic read: bytes `[offset, offset+len)` of data shard
/// `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardRange {
    pub index: u8,
    pub offset: u32,
    pub len: u32,
}

/// `c[j][i]`: what data shard i is multiplied by in parity shard j, read
/// off the library's encoder (parity is linear: encode each unit vector).
fn coefficients(rs: &ReedSolomon) -> Vec<Vec<u8>> {
    let (k, m) = (rs.data_shard_count(), rs.parity_shard_count());
    // Column i: the parity of a block whose only 1 is in data shard i.
    let columns: Vec<Vec<u8>> = (0..k)
        .map(|i| {
            let data: Vec<[u8; 1]> = (0..k).map(|d| [u8::from(d == i)]).collect();
            let mut parity = vec![[0u8; 1]; m];
            rs.encode_sep(&data, &mut parity)
                .expect("unit shards have equal lengths and the right count");
            parity.iter().map(|p| p[0]).collect()
        })
        .collect();
    (0..m)
        .map(|j| columns.iter().map(|col| col[j]).collect())
        .collect()
}

/// Rebuilds the missing data shards from the first K present ones with
/// GFNI: each missing shard is a fixed combination of those K, whose
/// coefficients are read off the library (rebuilding from unit vectors),
/// so the bytes are the library's. `None` if fewer than K are present.
fn reconstruct_gfni(rs: &ReedSolomon, shards: &mut [Option<Vec<u8>>]) -> Option<()> {
    let k = rs.data_shard_count();
    let present: Vec<usize> = (0..shards.len())
        .filter(|&i| shards[i].is_some())
        .take(k)
        .collect();
    let missing: Vec<usize> = (0..k).filter(|&i| shards[i].is_none()).collect();
    if present.len() < k {
        return None;
    }
    let mut coefficients = vec![vec![0u8; k]; missing.len()];
    for (col, &p) in present.iter().enumerate() {
        let mut unit: Vec<Option<Vec<u8>>> = (0..shards.len())
            .map(|i| present.contains(&i).then(|| vec![u8::from(i == p)]))
            .collect();
        rs.reconstruct_data(&mut unit).ok()?;
        for (row, &d) in missing.iter().enumerate() {
            coefficients[row][col] = unit[d].as_ref()?[0];
        }
    }
    let rebuilt = {
        let data: Vec<&[u8]> = present
            .iter()
            .map(|&p| shards[p].as_deref())
            .collect::<Option<_>>()?;
        gfni::Gfni::new(&coefficients)?.encode(&data, data[0].len())
    };
    for (&d, shard) in missing.iter().zip(rebuilt) {
        shards[d] = Some(shard);
    }
    Some(())
}

impl Codec {
    pub fn new(protection: Protection) -> Self {
        let rs = (protection.k > 1 && protection.m > 0).then(|| {
            ReedSolomon::new(protection.k.into(), protection.m.into())
                .expect("Protection::new bounds K and M to what reed-solomon accepts")
        });
        let gfni = rs
            .as_ref()
            .and_then(|rs| gfni::Gfni::new(&coefficients(rs)));
        Codec {
            protection,
            rs,
            gfni,
        }
    }

    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Bytes in each shard of a block of `block_len` bytes.
    pub fn shard_len(&self, block_len: usize) -> usize {
        block_len.div_ceil(self.protection.k.into())
    }

    /// Splits and encodes `block` into K+M shards of equal length.
    pub fn encode(&self, block: &[u8]) -> Vec<Vec<u8>> {
        self.encode_shared(Bytes::copy_from_slice(block))
            .into_iter()
            .map(|shard| shard.to_vec())
            .collect()
    }

    /// `encode` without copying what need not be: a data shard that lies
    /// whole inside the block is a slice of it, and replicas share it;
    /// only the zero-padded last data shard and the parity are new bytes.
    pub fn encode_shared(&self, block: Bytes) -> Vec<Bytes> {
        let k = usize::from(self.protection.k);
        let width = self.protection.width();
        if k == 1 {
            return vec![block; width];
        }
        let s = self.shard_len(block.len());
        let mut shards: Vec<Bytes> = (0..k)
            .map(|i| {
                let start = (i * s).min(block.len());
                let end = ((i + 1) * s).min(block.len());
                if end - start == s {
                    block.slice(start..end)
                } else {
                    let mut shard = vec![0u8; s];
                    shard[..end - start].copy_from_slice(&block[start..end]);
                    Bytes::from(shard)
                }
            })
            .collect();
        let parity = match (&self.gfni, &self.rs) {
            (Some(g), _) => {
                let data: Vec<&[u8]> = shards.iter().map(|d| &d[..]).collect();
                g.encode(&data, s)
            }
            (None, Some(rs)) => {
                // One zeroed allocation each: `vec![v; n]` would copy `v`.
                let mut parity: Vec<Vec<u8>> = (k..width).map(|_| vec![0u8; s]).collect();
                rs.encode_sep(&shards, &mut parity)
                    .expect("shards were built with equal lengths and the right count");
                parity
            }
            (None, None) => Vec::new(),
        };
        shards.extend(parity.into_iter().map(Bytes::from));
        shards
    }

    /// Whether parity is computed (and lost data shards rebuilt) with GFNI
    /// on this CPU.
    pub fn uses_gfni(&self) -> bool {
        self.gfni.is_some()
    }

    /// Rebuilds the block's bytes from any K shards. `shards[i]` is `None` for a
    /// shard that is missing or failed its CRC; present shards must have been
    /// verified by the caller.
    pub fn decode(
        &self,
        block: BlockId,
        mut shards: Vec<Option<Vec<u8>>>,
        block_len: usize,
    ) -> Result<Vec<u8>, Error> {
        let k = usize::from(self.protection.k);
        let got = self.keep_usable(block, &mut shards, block_len)?;
        let not_enough = || Error::NotEnoughShards {
            block,
            needed: k,
            got,
        };
        if k == 1 {
            let mut copy = shards.into_iter().flatten().next().ok_or_else(not_enough)?;
            copy.truncate(block_len);
            return Ok(copy);
        }
        if shards[..k].iter().any(Option::is_none) {
            let rs = self.rs.as_ref().ok_or_else(not_enough)?;
            if self.gfni.is_some() {
                reconstruct_gfni(rs, &mut shards).ok_or_else(not_enough)?;
            } else {
                rs.reconstruct_data(&mut shards).map_err(|_| not_enough())?;
            }
        }
        let mut out = Vec::with_capacity(k * self.shard_len(block_len));
        for shard in shards.into_iter().take(k) {
            out.extend_from_slice(&shard.expect("reconstructed above"));
        }
        out.truncate(block_len);
        Ok(out)
    }

    /// Drops anything of the wrong length (it cannot be a shard of this
    /// block) and checks that K shards are left; returns how many are.
    fn keep_usable(
        &self,
        block: BlockId,
        shards: &mut [Option<Vec<u8>>],
        block_len: usize,
    ) -> Result<usize, Error> {
        let s = self.shard_len(block_len);
        for x in shards.iter_mut() {
            if x.as_ref().is_some_and(|d| d.len() != s) {
                *x = None;
            }
        }
        let got = shards.iter().filter(|x| x.is_some()).count();
        let k = usize::from(self.protection.k);
        if shards.len() != self.protection.width() || got < k {
            return Err(Error::NotEnoughShards {
                block,
                needed: k,
                got,
            });
        }
        Ok(got)
    }

    /// Rebuilds every missing shard (data and parity), for repair. Shards of
    /// the wrong length are treated as missing.
    pub fn reconstruct_all(
        &self,
        block: BlockId,
        mut shards: Vec<Option<Vec<u8>>>,
        block_len: usize,
    ) -> Result<Vec<Vec<u8>>, Error> {
        let k = usize::from(self.protection.k);
        let got = self.keep_usable(block, &mut shards, block_len)?;
        let not_enough = || Error::NotEnoughShards {
            block,
            needed: k,
            got,
        };
        match &self.rs {
            // Replicas: every shard is a copy of the block.
            None if k == 1 => {
                let copy = shards
                    .iter()
                    .flatten()
                    .next()
                    .ok_or_else(not_enough)?
                    .clone();
                Ok(vec![copy; self.protection.width()])
            }
            // No parity: all K are present (checked above).
            None => Ok(shards.into_iter().flatten().collect()),
            Some(rs) => {
                rs.reconstruct(&mut shards).map_err(|_| not_enough())?;
                Ok(shards
                    .into_iter()
                    .map(|x| x.expect("reconstructed"))
                    .collect())
            }
        }
    }

    /// The `len` bytes of data shard `want` in some range, from the same
    /// range of the other shards (`pieces`, one per shard index, None
    /// where missing): the code works byte column by byte column, so any
    /// K pieces give the range of every data shard. Pieces of another
    /// length are not used. None with fewer than K.
    pub fn rebuild_range(
        &self,
        want: usize,
        len: usize,
        mut pieces: Vec<Option<Vec<u8>>>,
    ) -> Option<Vec<u8>> {
        let k = usize::from(self.protection.k);
        if want >= k || pieces.len() != self.protection.width() {
            return None;
        }
        for p in pieces.iter_mut() {
            if p.as_ref().is_some_and(|p| p.len() != len) {
                *p = None;
            }
        }
        if let Some(p) = pieces[want].take() {
            return Some(p);
        }
        if k == 1 {
            // Replicas: every piece is a copy.
            return pieces.into_iter().flatten().next();
        }
        if pieces.iter().flatten().count() < k {
            return None;
        }
        let rs = self.rs.as_ref()?;
        if self.gfni.is_some() {
            reconstruct_gfni(rs, &mut pieces)?;
        } else {
            rs.reconstruct_data(&mut pieces).ok()?;
        }
        pieces.swap_remove(want)
    }

    /// Where bytes `[offset, offset+len)` of a block live among the data shards.
    pub fn data_ranges(&self, block_len: usize, offset: usize, len: usize) -> Vec<ShardRange> {
        let end = (offset + len).min(block_len);
        if self.protection.k == 1 {
            return vec![ShardRange {
                index: 0,
                offset: offset as u32,
                len: end.saturating_sub(offset) as u32,
            }];
        }
        let s = self.shard_len(block_len);
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end {
            let index = pos / s;
            let within = pos % s;
            let take = (s - within).min(end - pos);
            out.push(ShardRange {
                index: index as u8,
                offset: within as u32,
                len: take as u32,
            });
            pos += take;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::crc32;

    fn protections() -> impl Strategy<Value = Protection> {
        prop_oneof![
            Just(Protection { k: 4, m: 2 }),
            Just(Protection { k: 2, m: 1 }),
            Just(Protection { k: 6, m: 3 }),
            Just(Protection { k: 1, m: 2 }),
            Just(Protection { k: 3, m: 0 }),
        ]
    }

    proptest! {
        /// Shards written by GFNI and by the library must be the same
        /// bytes: either may read or repair the other's. (Without GFNI on
        /// the CPU, both sides are the library.)
        #[test]
        fn gfni_parity_is_the_library_parity(
            (k, m) in prop_oneof![Just((4u8, 2u8)), Just((2, 1)), Just((8, 3)), Just((10, 4))],
            data in proptest::collection::vec(any::<u8>(), 1..20_000),
        ) {
            let codec = Codec::new(Protection { k, m });
            let shards = codec.encode(&data);
            let (k, m) = (usize::from(k), usize::from(m));
            let mut want = vec![vec![0u8; codec.shard_len(data.len())]; m];
            codec.rs.as_ref().unwrap().encode_sep(&shards[..k], &mut want).unwrap();
            prop_assert_eq!(&shards[k..], &want[..]);
        }

        #[test]
        fn any_m_losses_give_the_exact_bytes(
            p in protections(),
            data in proptest::collection::vec(any::<u8>(), 1..20_000),
            seed in any::<u64>(),
        ) {
            let codec = Codec::new(p);
            let shards = codec.encode(&data);
            prop_assert_eq!(shards.len(), p.width());
            // Lose M shards chosen by the seed.
            let mut lost: Vec<usize> = (0..p.width()).collect();
            let mut s = seed;
            for i in (1..lost.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                lost.swap(i, (s >> 33) as usize % (i + 1));
            }
            lost.truncate(p.m.into());
            let partial: Vec<Option<Vec<u8>>> = shards
                .iter()
                .enumerate()
                .map(|(i, x)| (!lost.contains(&i)).then(|| x.clone()))
                .collect();
            prop_assert_eq!(&codec.decode(7, partial.clone(), data.len()).unwrap(), &data);
            let all = codec.reconstruct_all(7, partial, data.len()).unwrap();
            prop_assert_eq!(all, shards);
        }

        #[test]
        fn a_range_of_a_lost_data_shard_comes_from_the_same_range_of_k_others(
            p in protections(),
            data in proptest::collection::vec(any::<u8>(), 1..20_000),
            at in any::<prop::sample::Index>(),
            len in 1usize..5_000,
            seed in any::<u64>(),
        ) {
            let codec = Codec::new(p);
            let shards = codec.encode(&data);
            let shard_len = shards[0].len();
            let start = at.index(shard_len);
            let end = (start + len).min(shard_len);
            // A data shard lost, with M - 1 others chosen by the seed.
            let want = (seed as usize) % usize::from(p.k);
            let mut lost = vec![want];
            let mut s = seed;
            while lost.len() < usize::from(p.m).max(1) {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let i = (s >> 33) as usize % p.width();
                if !lost.contains(&i) {
                    lost.push(i);
                }
            }
            let pieces: Vec<Option<Vec<u8>>> = shards
                .iter()
                .enumerate()
                .map(|(i, x)| (!lost.contains(&i)).then(|| x[start..end].to_vec()))
                .collect();
            let mut pieces = pieces;
            // A piece of another length (a short answer) is not used.
            if let Some(other) = (0..p.width()).find(|&i| pieces[i].is_some()) {
                pieces[other].as_mut().unwrap().push(0);
                if p.m > 0 && pieces.iter().flatten().count() == usize::from(p.k) {
                    prop_assert_eq!(codec.rebuild_range(want, end - start, pieces.clone()), None);
                }
                pieces[other].as_mut().unwrap().pop();
            }
            let rebuilt = codec.rebuild_range(want, end - start, pieces);
            if p.m == 0 {
                prop_assert_eq!(rebuilt, None);
            } else {
                prop_assert_eq!(rebuilt.as_deref(), Some(&shards[want][start..end]));
            }
        }

        #[test]
        fn a_corrupt_shard_is_detected_and_never_returned(
            data in proptest::collection::vec(any::<u8>(), 1..20_000),
            victim in 0usize..6,
            pos in any::<usize>(),
            flip in 1u8..=255,
        ) {
            let codec = Codec::new(Protection { k: 4, m: 2 });
            let shards = codec.encode(&data);
            let crcs: Vec<u32> = shards.iter().map(|s| crc32(s)).collect();
            let mut received = shards.clone();
            let at = pos % received[victim].len();
            received[victim][at] ^= flip;
            // What a reader does: keep only shards whose CRC matches.
            let verified: Vec<Option<Vec<u8>>> = received
                .into_iter()
                .zip(&crcs)
                .map(|(s, &c)| (crc32(&s) == c).then_some(s))
                .collect();
            prop_assert!(verified[victim].is_none(), "flipped byte not detected");
            prop_assert_eq!(codec.decode(1, verified, data.len()).unwrap(), data);
        }

        #[test]
        fn data_ranges_cover_exactly_the_requested_bytes(
            len in 1usize..50_000, a in any::<usize>(), b in any::<usize>(),
        ) {
            let codec = Codec::new(Protection { k: 4, m: 2 });
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            let shards = codec.encode(&data);
            let off = a % len;
            let n = b % (len - off) + 1;
            let mut got = Vec::new();
            for r in codec.data_ranges(len, off, n) {
                let s = &shards[r.index as usize];
                got.extend_from_slice(&s[r.offset as usize..(r.offset + r.len) as usize]);
            }
            prop_assert_eq!(&got[..], &data[off..off + n]);
        }
    }

    #[test]
    fn more_than_m_losses_is_an_error_not_garbage() {
        let codec = Codec::new(Protection { k: 4, m: 2 });
        let data = vec![42u8; 10_000];
        let mut shards: Vec<Option<Vec<u8>>> = codec.encode(&data).into_iter().map(Some).collect();
        shards[0] = None;
        shards[3] = None;
        shards[5] = None;
        assert_eq!(
            codec.decode(9, shards, data.len()),
            Err(Error::NotEnoughShards {
                block: 9,
                needed: 4,
                got: 3
            })
        );
    }
}
