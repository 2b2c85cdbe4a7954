//! Recovery: bring the index up to date with the segments at open.
//!
//! The scan starts at the index's marker (or at the first segment if the
//! index is new) and replays every record in log order. A record counts only
//! if its header, piece table and data all check out, so a record whose
//! append was never acknowledged (torn by a crash) is never indexed. Damaged
//! bytes followed by a valid record are skipped (logged); damaged bytes at
//! the end of a segment are a torn tail and are truncated away. Zeros from
//! a record boundary to the next 4 KiB boundary are padding (around records
//! written with O_DIRECT) and are skipped.

use std::{fs::OpenOptions, os::unix::fs::FileExt, path::Path};

use tessera_common::{crc32, ShardKey};
use tracing::{info, warn};

use crate::{
    aligned::align_up,
    error::{Error, Result},
    format::{decode_head, BadRecord, Header, Kind, FIXED_LEN, MAGIC},
    index::{Entry, Index},
    segment::{list_segments, segment_path, Pos},
};

/// Index updates written per batch while scanning.
const BATCH: usize = 1024;
/// Bytes read at a time when searching for the next valid record.
const SEARCH_CHUNK: usize = 1 << 20;

/// Replays the segments into `index`; returns the last segment, if any.
pub fn recover(segments_dir: &Path, index: &Index) -> Result<Option<u32>> {
    let segs = list_segments(segments_dir)?;
    let len_of = |n: u32| {
        let p = segment_path(segments_dir, n);
        std::fs::metadata(&p)
            .map(|m| m.len())
            .map_err(|e| Error::io(p, e))
    };
    let first = Pos {
        segment: segs.first().copied().unwrap_or(1),
        offset: 0,
    };
    let start = match index.marker()? {
        Some(m) if segs.contains(&m.segment) && m.offset <= len_of(m.segment)? => m,
        marker => {
            if let Some(m) = marker {
                warn!(
                    segment = m.segment,
                    offset = m.offset,
                    "index marker is beyond the segments; rebuilding the index"
                );
            } else {
                info!(
                    segments = segs.len(),
                    "building the shard index from the segments"
                );
            }
            index.clear()?;
            first
        }
    };
    for &seg in segs.iter().filter(|&&s| s >= start.segment) {
        let from = if seg == start.segment {
            start.offset
        } else {
            0
        };
        let mut batch = Vec::new();
        let apply = |batch: &mut Vec<(ShardKey, Option<Entry>)>, marker: Pos| -> Result<()> {
            index.apply(batch, marker)?;
            batch.clear();
            Ok(())
        };
        let end = scan_segment(segments_dir, seg, from, |pos, h| {
            let entry = Entry {
                pos,
                len: h.data_len,
                crc: h.shard_crc,
            };
            batch.push((h.key, (h.kind == Kind::Shard).then_some(entry)));
            if batch.len() >= BATCH {
                apply(
                    &mut batch,
                    Pos {
                        segment: seg,
                        offset: pos.offset + h.record_len(),
                    },
                )?;
            }
            Ok(())
        })?;
        apply(
            &mut batch,
            Pos {
                segment: seg,
                offset: end,
            },
        )?;
    }
    Ok(segs.last().copied())
}

/// Calls `on_record` for every valid record of segment `seg` from `from`,
/// truncates a torn tail, fsyncs the file and returns its final length.
pub fn scan_segment(
    dir: &Path,
    seg: u32,
    from: u64,
    mut on_record: impl FnMut(Pos, &Header) -> Result<()>,
) -> Result<u64> {
    let path = segment_path(dir, seg);
    let io = |e: std::io::Error| Error::io(&path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io)?;
    let mut file_len = file.metadata().map_err(io)?.len();
    let mut off = from;
    // Where the last valid record ends: a torn tail is cut there, padding
    // skipped before it included.
    let mut valid_end = from;
    let mut buf = Vec::new();
    while off < file_len {
        match read_record(&file, seg, off, file_len, &mut buf).map_err(io)? {
            Ok(h) => {
                on_record(
                    Pos {
                        segment: seg,
                        offset: off,
                    },
                    &h,
                )?;
                off += h.record_len();
                valid_end = off;
            }
            Err(BadRecord(_)) if is_padding(&file, off, file_len).map_err(io)? => {
                off = align_up(off);
            }
            Err(BadRecord(why)) => {
                match find_next(&file, seg, off + 1, file_len, &mut buf).map_err(io)? {
                    Some(next) => {
                        warn!(
                            segment = seg,
                            offset = off,
                            skipped = next - off,
                            why,
                            "skipping damaged bytes in segment"
                        );
                        off = next;
                    }
                    None => {
                        let cut = if valid_end <= off { valid_end } else { off };
                        warn!(
                            segment = seg,
                            offset = cut,
                            dropped = file_len - cut,
                            why,
                            "truncating the torn tail of segment"
                        );
                        file.set_len(cut).map_err(io)?;
                        file_len = cut;
                        off = cut;
                    }
                }
            }
        }
    }
    // What we just indexed may have been in the page cache only (a process
    // crash, not a machine crash): make it durable before anyone relies on it.
    file.sync_all().map_err(io)?;
    Ok(off)
}

/// Whether the bytes from `off` (a record boundary) to the next 4 KiB
/// boundary are zeros: the padding before or after a record written with
/// O_DIRECT.
fn is_padding(file: &std::fs::File, off: u64, file_len: u64) -> std::io::Result<bool> {
    let next = align_up(off);
    if next == off || next > file_len {
        return Ok(false);
    }
    let mut gap = vec![0u8; (next - off) as usize];
    file.read_exact_at(&mut gap, off)?;
    Ok(gap.iter().all(|&b| b == 0))
}

/// Reads and checks the whole record at `off`: header, table, data. The
/// outer error is I/O; the inner one says why the bytes are not a record.
fn read_record(
    file: &std::fs::File,
    seg: u32,
    off: u64,
    file_len: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Result<Header, BadRecord>> {
    if off + FIXED_LEN as u64 > file_len {
        return Ok(Err(BadRecord("short header")));
    }
    let mut fixed = [0u8; FIXED_LEN];
    file.read_exact_at(&mut fixed, off)?;
    let h = match Header::decode_fixed(&fixed) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    if h.segment != seg || h.offset != off {
        return Ok(Err(BadRecord("record names another place")));
    }
    if off + h.record_len() > file_len {
        return Ok(Err(BadRecord("record runs past the end of the file")));
    }
    buf.resize(h.record_len() as usize, 0);
    file.read_exact_at(buf, off)?;
    let head = match decode_head(buf) {
        Ok(head) => head,
        Err(e) => return Ok(Err(e)),
    };
    let data = &buf[h.head_len()..];
    if head.verify_pieces(0, data).is_err() {
        return Ok(Err(BadRecord("piece CRC mismatch")));
    }
    if h.kind == Kind::Shard && crc32(data) != h.shard_crc {
        return Ok(Err(BadRecord("shard CRC mismatch")));
    }
    Ok(Ok(h))
}

/// The offset of the first valid record at or after `from`, if any.
fn find_next(
    file: &std::fs::File,
    seg: u32,
    from: u64,
    file_len: u64,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<u64>> {
    let mut chunk = vec![0u8; SEARCH_CHUNK + MAGIC.len() - 1];
    let mut at = from;
    while at < file_len {
        let n = (file_len - at).min(chunk.len() as u64) as usize;
        file.read_exact_at(&mut chunk[..n], at)?;
        for i in 0..n.saturating_sub(MAGIC.len() - 1).min(SEARCH_CHUNK) {
            if chunk[i..i + MAGIC.len()] == MAGIC
                && read_record(file, seg, at + i as u64, file_len, buf)?.is_ok()
            {
                return Ok(Some(at + i as u64));
            }
        }
        at += SEARCH_CHUNK as u64;
    }
    Ok(None)
}
