//! Parity with the GFNI instructions of x86-64 CPUs that have them, with
//! the same code as reed-solomon-erasure (the field GF(2^8) with the
//! polynomial 0x11D, its encoding matrix), so the shards are identical.
//!
//! Multiplying by a constant in GF(2^8) is linear over GF(2), so it is an
//! 8×8 bit matrix, and `vgf2p8affineqb` applies one to 64 bytes at once.
//! Each parity shard is the XOR of its row's K products; a 64-byte column
//! of every shard is done in registers, and the parity is written once,
//! without being zeroed first. reed-solomon-erasure instead makes K×M
//! passes over whole shards with 4-bit table lookups: it was a fifth of a
//! mount's CPU while writing.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Parity of K data shards as M rows of coefficients, ready for GFNI.
pub(super) struct Gfni {
    k: usize,
    m: usize,
    /// `matrices[j * k + i]`: multiplying by parity row j's coefficient
    /// for data shard i, as `vgf2p8affineqb` takes it.
    matrices: Vec<u64>,
}

impl Gfni {
    /// `None` when this CPU lacks the instructions. `coefficients[j][i]`
    /// is what data shard i is multiplied by in parity shard j.
    pub fn new(coefficients: &[Vec<u8>]) -> Option<Gfni> {
        if !supported() {
            return None;
        }
        let k = coefficients.first()?.len();
        Some(Gfni {
            k,
            m: coefficients.len(),
            matrices: coefficients
                .iter()
                .flat_map(|row| row.iter().map(|&c| matrix(c)))
                .collect(),
        })
    }

    /// The M parity shards of `data` (K shards of `len` bytes each).
    pub fn encode(&self, data: &[&[u8]], len: usize) -> Vec<Vec<u8>> {
        assert_eq!(data.len(), self.k, "data shards");
        assert!(data.iter().all(|d| d.len() == len), "shard lengths");
        let mut parity: Vec<Vec<u8>> = (0..self.m).map(|_| Vec::with_capacity(len)).collect();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `new` checked the CPU has the features; `encode_x86`
        // writes every byte of each parity's first `len` bytes of capacity
        // and reads only within the data shards (checked above).
        unsafe {
            let mut out: Vec<*mut u8> = parity.iter_mut().map(|p| p.as_mut_ptr()).collect();
            encode_x86(&self.matrices, data, &mut out, len);
            for p in &mut parity {
                p.set_len(len);
            }
        }
        parity
    }
}

fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("gfni")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `a * b` in GF(2^8) with the polynomial x^8 + x^4 + x^3 + x^2 + 1 (0x11D).
pub(super) fn mul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0u8;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        let carry = a & 0x80 != 0;
        a <<= 1;
        if carry {
            a ^= 0x1D;
        }
        b >>= 1;
    }
    p
}

/// Multiplying by `c` as the bit matrix `vgf2p8affineqb` takes: bit i of
/// a product is the parity of (x AND byte 7-i of the matrix).
fn matrix(c: u8) -> u64 {
    let mut m = 0u64;
    for i in 0..8 {
        // Row i: which bits of x feed bit i of c*x.
        let row = (0..8).fold(0u8, |r, j| r | (((mul(c, 1 << j) >> i) & 1) << j));
        m |= u64::from(row) << (8 * (7 - i));
    }
    m
}

/// # Safety
/// The CPU has GFNI, AVX-512F and AVX-512BW; each of `data` holds at least
/// `len` bytes and each of `out` has room for `len`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "gfni,avx512f,avx512bw")]
unsafe fn encode_x86(matrices: &[u64], data: &[&[u8]], out: &mut [*mut u8], len: usize) {
    let k = data.len();
    let mats: Vec<__m512i> = matrices
        .iter()
        .map(|&m| _mm512_set1_epi64(m as i64))
        .collect();
    let mut at = 0;
    while at < len {
        let left = len - at;
        // The last column may be short: masked loads and stores touch
        // only its bytes.
        let mask: __mmask64 = if left >= 64 { !0 } else { (1u64 << left) - 1 };
        for (j, o) in out.iter().enumerate() {
            let mut acc = _mm512_setzero_si512();
            for (i, d) in data.iter().enumerate() {
                let x = _mm512_maskz_loadu_epi8(mask, d.as_ptr().add(at).cast());
                let y = _mm512_gf2p8affine_epi64_epi8::<0>(x, mats[j * k + i]);
                acc = _mm512_xor_si512(acc, y);
            }
            _mm512_mask_storeu_epi8(o.add(at).cast(), mask, acc);
        }
        at += 64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matrix_of_c_multiplies_by_c() {
        let Some(g) = Gfni::new(&[(0..=255u8).collect()]) else {
            eprintln!("no GFNI on this CPU: skipped");
            return;
        };
        // One data shard per coefficient, each holding every byte value:
        // parity = sum of products; compare each product alone instead.
        for c in 0..=255u8 {
            let one = Gfni {
                k: 1,
                m: 1,
                matrices: vec![g.matrices[c as usize]],
            };
            let x: Vec<u8> = (0..=255u8).collect();
            let p = one.encode(&[&x], x.len());
            for (xv, pv) in x.iter().zip(&p[0]) {
                assert_eq!(*pv, mul(c, *xv), "{c} * {xv}");
            }
        }
    }

    #[test]
    fn mul_is_the_field_of_0x11d() {
        // 2^8 = x^4 + x^3 + x^2 + 1 and 2 is a generator of order 255.
        assert_eq!(mul(0x80, 2), 0x1D);
        let mut x = 1u8;
        for n in 1..=255 {
            x = mul(x, 2);
            assert_eq!(x == 1, n == 255, "2^{n}");
        }
    }
}
