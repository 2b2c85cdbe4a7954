//! Reading shards back. Every byte returned has had its piece CRCs checked
//! and its record's header matched against the index entry.

use bytes::Bytes;
use tessera_common::{crc32, ShardKey};
use tracing::warn;

use super::ShardStore;
use crate::{
    error::{Error, Result},
    format::{decode_head, Head, Header, Kind},
    index::Entry,
};

/// The error for a record that fails a check, logged with its place.
fn corrupt(key: ShardKey, e: Entry, why: String) -> Error {
    warn!(
        block = key.block,
        shard = key.index,
        segment = e.pos.segment,
        offset = e.pos.offset,
        why = why.as_str(),
        "corrupt shard"
    );
    Error::CorruptShard {
        key,
        segment: e.pos.segment,
        offset: e.pos.offset,
        why,
    }
}

/// The header the index entry `e` of `key` says the record has, in format
/// `version`.
fn expected(key: ShardKey, e: Entry, version: u16) -> Header {
    Header {
        version,
        kind: Kind::Shard,
        key,
        segment: e.pos.segment,
        offset: e.pos.offset,
        data_len: e.len,
        shard_crc: e.crc,
    }
}

/// Decodes the head at the start of `b` (in any version read) and checks
/// it against `e`.
fn check_head(key: ShardKey, e: Entry, b: &[u8]) -> Result<Head> {
    let head = decode_head(b).map_err(|bad| corrupt(key, e, bad.0.into()))?;
    if head.header != expected(key, e, head.header.version) {
        return Err(corrupt(
            key,
            e,
            "record does not match its index entry".into(),
        ));
    }
    Ok(head)
}

impl ShardStore {
    /// An I/O error reading the segment of the record at `e`.
    fn segment_io(&self, e: Entry, err: std::io::Error) -> Error {
        Error::io(
            crate::segment::segment_path(&self.dir.join("segments"), e.pos.segment),
            err,
        )
    }

    /// Reads and verifies `[offset, end)` of the record at `e`; a full read
    /// also checks the whole-shard CRC.
    pub(super) fn read(&self, key: ShardKey, e: Entry, offset: u32, end: u32) -> Result<Vec<u8>> {
        let corrupt = |why: String| corrupt(key, e, why);
        let read_at = |at: u64, buf: &mut [u8]| {
            let pos = crate::segment::Pos {
                segment: e.pos.segment,
                offset: at,
            };
            self.segments
                .read_at(pos, buf)
                .map_err(|err| match err.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        corrupt("record runs past the end of its segment".into())
                    }
                    _ => self.segment_io(e, err),
                })
        };
        // The index entry says how long the data is, and so how long the
        // head is at most (in any version): one read, and a head that says
        // otherwise does not match the entry.
        let mut head = vec![0u8; Header::longest_head_len(e.len)];
        read_at(e.pos.offset, &mut head)?;
        let head = check_head(key, e, &head)?;
        if offset == end {
            return Ok(Vec::new());
        }
        let (head_len, piece) = (head.header.head_len(), head.header.piece());
        let (offset, end) = (offset as usize, end as usize);
        let first = offset / piece;
        let span_start = first * piece;
        let span_end = end
            .div_ceil(piece)
            .saturating_mul(piece)
            .min(e.len as usize);
        let mut buf = vec![0u8; span_end - span_start];
        read_at(e.pos.offset + head_len as u64 + span_start as u64, &mut buf)?;
        if let Err(n) = head.verify_pieces(first, &buf) {
            return Err(corrupt(format!(
                "CRC mismatch in piece {n} ({} KiB pieces)",
                piece >> 10
            )));
        }
        if offset == 0 && end == e.len as usize && crc32(&buf) != e.crc {
            return Err(corrupt("whole-shard CRC mismatch".into()));
        }
        buf.truncate(end - span_start);
        buf.drain(..offset - span_start);
        Ok(buf)
    }

    /// The whole shard of the record at `e`, read with O_DIRECT in one
    /// request into a buffer of its own and handed on from there: no
    /// page-cache copy. None where direct reads are not available.
    pub(super) fn read_whole_direct(&self, key: ShardKey, e: Entry) -> Result<Option<Bytes>> {
        // The longest the record can be; a shorter one (version 1) is
        // followed by other bytes, or by the end of the file, where the
        // read comes back short.
        let longest = Header::longest_head_len(e.len) + e.len as usize;
        let read = self
            .segments
            .read_direct(e.pos, longest)
            .map_err(|err| self.segment_io(e, err))?;
        let Some((buf, skip)) = read else {
            return Ok(None);
        };
        let past_end = || corrupt(key, e, "record runs past the end of its segment".into());
        let head = check_head(key, e, buf.as_ref().get(skip..).ok_or_else(past_end)?)?;
        let (head_len, record_len) = (head.header.head_len(), head.header.record_len() as usize);
        let record = buf
            .as_ref()
            .get(skip..skip + record_len)
            .ok_or_else(past_end)?;
        let data = &record[head_len..];
        if let Err(n) = head.verify_pieces(0, data) {
            return Err(corrupt(
                key,
                e,
                format!(
                    "CRC mismatch in piece {n} ({} KiB pieces)",
                    head.header.piece() >> 10
                ),
            ));
        }
        if crc32(data) != e.crc {
            return Err(corrupt(key, e, "whole-shard CRC mismatch".into()));
        }
        Ok(Some(
            Bytes::from_owner(buf).slice(skip + head_len..skip + record_len),
        ))
    }
}
