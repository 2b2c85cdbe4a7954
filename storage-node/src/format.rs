//! The record format of segment files, versions 1 and 2 (see FORMAT.md).
//!
//! A record is a fixed header, a table of CRC32s (one per piece of the
//! data: 64 KiB in version 1, 4 KiB in version 2), a CRC32 over header
//! and table, then the data. Version 2 is written; both are read. The header names its
//! own segment and offset, so bytes copied from elsewhere (a shard that holds
//! a segment file, say) never pass for a record when recovery resynchronises
//! after damage. Decoding never trusts a byte: every failure is a [`BadRecord`].

use tessera_common::{crc32, ShardKey};

pub const MAGIC: [u8; 4] = *b"TSRD";
/// The version written. A ranged read checks the pieces it touches: 4 KiB
/// pieces let a database's 4 KiB page cost a 4 KiB read and CRC, where
/// version 1's 64 KiB pieces cost 64 KiB.
pub const VERSION: u16 = 2;
/// Bytes of data covered by one CRC of the piece table, in the version
/// written.
pub const PIECE: usize = 4 << 10;
/// The same in version 1.
const PIECE_V1: usize = 64 << 10;
/// Bytes of the fixed part of the header.
pub const FIXED_LEN: usize = 36;
/// Largest shard a record may hold; anything larger is damage, not data.
pub const MAX_DATA_LEN: u32 = 64 << 20;

/// Why some bytes are not a valid record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BadRecord(pub &'static str);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Shard = 1,
    Tombstone = 2,
}

/// The fixed header of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version: 1 or 2 (the size of its pieces).
    pub version: u16,
    pub kind: Kind,
    pub key: ShardKey,
    /// Segment and offset the record was written at.
    pub segment: u32,
    pub offset: u64,
    pub data_len: u32,
    /// CRC32 of the whole shard, as the writer sent it (0 for tombstones).
    pub shard_crc: u32,
}

/// A decoded header with its piece table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    pub header: Header,
    pub pieces: Vec<u32>,
}

/// The CRC32s of `data`'s pieces: the piece table of a record written now.
pub fn piece_crcs(data: &[u8]) -> Vec<u32> {
    data.chunks(PIECE).map(crc32).collect()
}

/// The CRC32 of `len` bytes of data, from the CRC32s of its pieces: a
/// writer's whole-shard CRC is checked without a second pass over the bytes.
pub fn whole_crc(pieces: &[u32], len: usize) -> u32 {
    let mut whole = crc32fast::Hasher::new();
    for (i, &crc) in pieces.iter().enumerate() {
        let piece_len = PIECE.min(len - i * PIECE);
        whole.combine(&crc32fast::Hasher::new_with_initial_len(
            crc,
            piece_len as u64,
        ));
    }
    whole.finalize()
}

impl Header {
    /// Bytes of data covered by one CRC of this record's piece table.
    pub fn piece(&self) -> usize {
        match self.version {
            1 => PIECE_V1,
            _ => PIECE,
        }
    }

    /// Number of pieces of this record's data.
    pub fn piece_count(&self) -> usize {
        (self.data_len as usize).div_ceil(self.piece())
    }

    /// Bytes of header, piece table and header CRC.
    pub fn head_len(&self) -> usize {
        FIXED_LEN + 4 * self.piece_count() + 4
    }

    /// The longest head a record of `data_len` bytes has in any version
    /// read (version 2's): reading that many bytes gets any such record's
    /// head in one read, and never runs past the record (a version 1
    /// head is shorter by at most a 1,024th of the data, plus 4 bytes).
    pub fn longest_head_len(data_len: u32) -> usize {
        FIXED_LEN + 4 * (data_len as usize).div_ceil(PIECE) + 4
    }

    /// Bytes of the whole record.
    pub fn record_len(&self) -> u64 {
        self.head_len() as u64 + u64::from(self.data_len)
    }

    /// Encodes header, piece table and header CRC; `pieces` are the
    /// [`piece_crcs`] of the record's data.
    pub fn encode(&self, pieces: &[u32]) -> Vec<u8> {
        debug_assert_eq!(pieces.len(), self.piece_count());
        let mut out = Vec::with_capacity(self.head_len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_le_bytes());
        out.push(self.kind as u8);
        out.push(self.key.index);
        out.extend_from_slice(&self.key.block.to_le_bytes());
        out.extend_from_slice(&self.segment.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.shard_crc.to_le_bytes());
        debug_assert_eq!(out.len(), FIXED_LEN);
        for crc in pieces {
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes the fixed part; enough to know how long the head is. The
    /// header CRC is checked later, by [`decode_head`].
    pub fn decode_fixed(b: &[u8]) -> Result<Header, BadRecord> {
        let b: &[u8; FIXED_LEN] = b
            .get(..FIXED_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(BadRecord("short header"))?;
        if b[0..4] != MAGIC {
            return Err(BadRecord("bad magic"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);
        let version = u16::from_le_bytes([b[4], b[5]]);
        if !(1..=VERSION).contains(&version) {
            return Err(BadRecord("unknown format version"));
        }
        let kind = match b[6] {
            1 => Kind::Shard,
            2 => Kind::Tombstone,
            _ => return Err(BadRecord("unknown record kind")),
        };
        let header = Header {
            version,
            kind,
            key: ShardKey {
                block: u64_at(8),
                index: b[7],
            },
            segment: u32_at(16),
            data_len: u32_at(20),
            offset: u64_at(24),
            shard_crc: u32_at(32),
        };
        if header.data_len > MAX_DATA_LEN {
            return Err(BadRecord("data length too large"));
        }
        if kind == Kind::Tombstone && (header.data_len != 0 || header.shard_crc != 0) {
            return Err(BadRecord("tombstone with data"));
        }
        Ok(header)
    }
}

/// Decodes and checks a whole head (`b` must be at least `head_len` bytes).
pub fn decode_head(b: &[u8]) -> Result<Head, BadRecord> {
    let header = Header::decode_fixed(b)?;
    let len = header.head_len();
    let b = b.get(..len).ok_or(BadRecord("short piece table"))?;
    let (body, crc) = b.split_at(len - 4);
    let crc = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    if crc32(body) != crc {
        return Err(BadRecord("header CRC mismatch"));
    }
    let pieces = body[FIXED_LEN..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok(Head { header, pieces })
}

impl Head {
    /// Checks `data`, the bytes of pieces `first..` (whole pieces, the last
    /// one possibly short at the end of the shard). Returns the first bad
    /// piece.
    pub fn verify_pieces(&self, first: usize, data: &[u8]) -> Result<(), usize> {
        for (i, piece) in data.chunks(self.header.piece()).enumerate() {
            let n = first + i;
            if self.pieces.get(n) != Some(&crc32(piece)) {
                return Err(n);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: u32) -> Header {
        Header {
            version: VERSION,
            kind: Kind::Shard,
            key: ShardKey {
                block: 0x0102_0304_0506_0708,
                index: 9,
            },
            segment: 3,
            offset: 4096,
            data_len: len,
            shard_crc: 0xdead_beef,
        }
    }

    #[test]
    fn whole_crc_from_pieces_is_the_crc_of_the_bytes() {
        for len in [0usize, 1, 65535, 65536, 65537, 300_000, 1 << 20] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
            assert_eq!(
                whole_crc(&piece_crcs(&data), len),
                crc32(&data),
                "{len} bytes"
            );
        }
    }

    #[test]
    fn round_trip() {
        for len in [0u32, 1, 65535, 65536, 65537, 300_000] {
            let data = vec![7u8; len as usize];
            let h = header(len);
            let b = h.encode(&piece_crcs(&data));
            assert_eq!(b.len(), h.head_len());
            let head = decode_head(&b).unwrap();
            assert_eq!(head.header, h);
            assert_eq!(head.pieces.len(), (len as usize).div_ceil(4096));
            assert_eq!(head.verify_pieces(0, &data), Ok(()));
            assert!(b.len() <= Header::longest_head_len(len));
        }
    }

    /// Version 1 records (64 KiB pieces), as nodes before version 2 wrote
    /// them, still read: their head is no longer than the longest head
    /// read for their length, and never longer than their record.
    #[test]
    fn version_1_records_decode_and_verify() {
        for len in [0u32, 1, 4097, 65535, 65536, 65537, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 13) as u8).collect();
            let h = Header {
                version: 1,
                ..header(len)
            };
            let b = h.encode(&v1_pieces(&data));
            assert_eq!(b.len(), h.head_len());
            let head = decode_head(&b).unwrap();
            assert_eq!(head.header, h);
            assert_eq!(head.pieces.len(), (len as usize).div_ceil(65536));
            assert_eq!(head.verify_pieces(0, &data), Ok(()));
            let longest = Header::longest_head_len(len);
            assert!(b.len() <= longest && longest as u64 <= h.record_len());
            if len > 70_000 {
                let mut bad = data.clone();
                bad[65536 + 70] ^= 1;
                assert_eq!(head.verify_pieces(0, &bad), Err(1));
            }
        }
    }

    /// A version 1 piece table.
    pub fn v1_pieces(data: &[u8]) -> Vec<u32> {
        data.chunks(64 << 10).map(crc32).collect()
    }

    #[test]
    fn every_flipped_byte_is_rejected_without_panic() {
        let h = header(200_000);
        let b = h.encode(&piece_crcs(&vec![1u8; 200_000]));
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x40;
            assert!(decode_head(&bad).is_err(), "byte {i}");
        }
        for cut in 0..b.len() {
            assert!(decode_head(&b[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn garbage_does_not_panic() {
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&[0xff; 64]);
        assert_eq!(decode_head(&b), Err(BadRecord("unknown format version")));
        b[4] = 1;
        b[5] = 0;
        b[6] = 1;
        assert_eq!(decode_head(&b), Err(BadRecord("data length too large")));
        assert!(decode_head(&[]).is_err());
    }

    #[test]
    fn bad_piece_is_found() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let head = decode_head(&header(200_000).encode(&piece_crcs(&data))).unwrap();
        let mut bad = data.clone();
        bad[PIECE * 2 + 5] ^= 1;
        assert_eq!(head.verify_pieces(0, &bad), Err(2));
        assert_eq!(head.verify_pieces(1, &bad[PIECE..2 * PIECE]), Ok(()));
    }
}
