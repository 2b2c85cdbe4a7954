//! Append-only segment files and the group commit that makes them durable.
//!
//! One writer appends records to the last segment under a mutex; a put then
//! waits in [`Segments::wait_synced`] until an fdatasync covers its record.
//! Whoever finds no sync running starts one covering everything appended so
//! far; the others wait on a condvar for the "synced up to" watermark, so N
//! concurrent puts cost about one fsync, not N.
//!
//! A record of [`DIRECT_MIN`] bytes or more is written with O_DIRECT: it
//! starts at a 4 KiB boundary and is padded with zeros to one, so its bytes
//! go from one aligned copy to the disk without passing through the page
//! cache (no page-cache copy, no writeback work, no cache filled with data
//! nobody reads soon). Smaller records are written through the page cache,
//! back to back. Zeros from a record's end to the next 4 KiB boundary are
//! padding; recovery skips them (FORMAT.md).

use std::{
    collections::{BTreeSet, HashMap},
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError,
    },
};

use tessera_common::ShardKey;

use crate::{
    aligned::{align_up, AlignedBuf, AlignedBytes, ALIGN},
    error::{Error, Result},
    format::{Header, Kind, VERSION},
};

/// Records this large or larger are written with O_DIRECT.
pub const DIRECT_MIN: u64 = 64 << 10;

/// Size at which the writer rolls to a new segment.
pub const SEGMENT_SIZE: u64 = 256 << 20;

/// A place in the log: segment number, then byte offset. Ordered as the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub segment: u32,
    pub offset: u64,
}

/// A record to append.
pub struct NewRecord<'a> {
    pub kind: Kind,
    pub key: ShardKey,
    pub crc: u32,
    pub data: &'a [u8],
    /// `data`'s piece CRCs ([`crate::format::piece_crcs`]).
    pub pieces: &'a [u32],
}

impl NewRecord<'_> {
    /// A tombstone: `key` is deleted from here on in the log.
    pub fn tombstone(key: ShardKey) -> NewRecord<'static> {
        NewRecord {
            kind: Kind::Tombstone,
            key,
            crc: 0,
            data: &[],
            pieces: &[],
        }
    }
}

/// Where an append put its records.
pub struct Appended {
    pub starts: Vec<Pos>,
    /// Just past the last record.
    pub end: Pos,
}

pub fn segment_path(dir: &Path, n: u32) -> PathBuf {
    dir.join(format!("seg-{n:08}.tsd"))
}

/// Segment numbers present in `dir`, ascending. Other files are ignored.
pub fn list_segments(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let name = entry.map_err(|e| Error::io(dir, e))?.file_name();
        let n = name.to_str().and_then(|s| {
            s.strip_prefix("seg-")?
                .strip_suffix(".tsd")?
                .parse::<u32>()
                .ok()
        });
        out.extend(n);
    }
    out.sort_unstable();
    Ok(out)
}

/// Makes the entries of `dir` (a created or renamed file) durable.
pub fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Writer {
    segment: u32,
    file: Arc<File>,
    /// The same file opened with O_DIRECT (None where the file system
    /// refuses it, or when direct I/O is off).
    direct: Option<File>,
    /// Where a direct record is laid out before it is written.
    buf: AlignedBuf,
    end: u64,
    /// Starts of records appended whose index update has not finished.
    inflight: BTreeSet<Pos>,
    /// Bytes that puts and deletes (not compaction) appended to `segment`.
    fresh: u64,
}

struct SyncState {
    synced: Pos,
    running: bool,
    /// Set after a failed fsync: the kernel may have dropped dirty pages, so
    /// a later fsync succeeding proves nothing. Writes stop until a restart
    /// re-verifies the segments.
    failed: Option<String>,
}

pub struct Segments {
    dir: PathBuf,
    segment_size: u64,
    direct_io: bool,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
    readers: Mutex<HashMap<u32, Arc<File>>>,
    /// O_DIRECT read handles, for whole large records.
    direct_readers: Mutex<HashMap<u32, Arc<File>>>,
    /// The file system refused an O_DIRECT open: read through the cache.
    direct_refused: std::sync::atomic::AtomicBool,
    fsyncs: AtomicU64,
}

/// `path` opened for O_DIRECT writes, or None if its file system does not
/// support them (some do not: tmpfs on older kernels, network file systems).
fn open_direct(path: &Path) -> Result<Option<File>> {
    use std::os::unix::fs::OpenOptionsExt;
    match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::info!(path = %path.display(), "no O_DIRECT here: writing through the page cache");
            Ok(None)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

impl Segments {
    /// Opens for appending at the end of segment `last` (already recovered
    /// and synced), or creates segment 1 in an empty directory.
    pub fn open(
        dir: &Path,
        last: Option<u32>,
        segment_size: u64,
        direct_io: bool,
    ) -> Result<Segments> {
        let segment = last.unwrap_or(1);
        let path = segment_path(dir, segment);
        let file = open_rw(&path)?;
        let direct = if direct_io { open_direct(&path)? } else { None };
        if last.is_none() {
            // The new segment's directory entry must survive a crash.
            fsync_dir(dir)?;
        }
        let end = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let at = Pos {
            segment,
            offset: end,
        };
        Ok(Segments {
            dir: dir.to_path_buf(),
            segment_size,
            direct_io,
            writer: Mutex::new(Writer {
                segment,
                file: Arc::new(file),
                direct,
                buf: AlignedBuf::default(),
                end,
                inflight: BTreeSet::new(),
                fresh: 0,
            }),
            sync: Mutex::new(SyncState {
                synced: at,
                running: false,
                failed: None,
            }),
            synced_cv: Condvar::new(),
            readers: Mutex::new(HashMap::new()),
            direct_readers: Mutex::new(HashMap::new()),
            direct_refused: Default::default(),
            fsyncs: AtomicU64::new(0),
        })
    }

    /// fsyncs issued since open.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    fn check_writable(&self) -> Result<()> {
        match &lock(&self.sync).failed {
            Some(reason) => Err(Error::WritesDisabled {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    fn fail(&self, reason: String) {
        let mut st = lock(&self.sync);
        st.failed.get_or_insert(reason);
        self.synced_cv.notify_all();
    }

    /// Appends `records` contiguously (not yet durable: see `wait_synced`).
    /// On a write error the partial bytes are truncated away. The starts
    /// stay "in flight" until [`Segments::done`].
    pub fn append(&self, records: &[NewRecord<'_>]) -> Result<Appended> {
        self.append_from(records, false)
    }

    /// [`Segments::append`] of records that compaction moves forward.
    pub fn append_moved(&self, records: &[NewRecord<'_>]) -> Result<Appended> {
        self.append_from(records, true)
    }

    fn append_from(&self, records: &[NewRecord<'_>], moved: bool) -> Result<Appended> {
        self.check_writable()?;
        let mut w = lock(&self.writer);
        let len_of = |r: &NewRecord<'_>| {
            Header {
                version: VERSION,
                kind: r.kind,
                key: r.key,
                segment: 0,
                offset: 0,
                data_len: r.data.len() as u32,
                shard_crc: r.crc,
            }
            .record_len()
        };
        // With the padding a direct record may need on both sides.
        let total: u64 = records
            .iter()
            .map(|r| match len_of(r) {
                len if len >= DIRECT_MIN => len + 2 * ALIGN as u64,
                len => len,
            })
            .sum();
        if w.end > 0 && w.end + total > self.segment_size {
            self.roll(&mut w)?;
        }
        let (segment, base) = (w.segment, w.end);
        let path = segment_path(&self.dir, segment);
        let mut at = base;
        let mut starts = Vec::with_capacity(records.len());
        let mut result = Ok(());
        let Writer {
            file, direct, buf, ..
        } = &mut *w;
        for r in records {
            let len = len_of(r);
            let direct = direct.as_ref().filter(|_| len >= DIRECT_MIN);
            let start = if direct.is_some() { align_up(at) } else { at };
            let header = Header {
                version: VERSION,
                kind: r.kind,
                key: r.key,
                segment,
                offset: start,
                data_len: r.data.len() as u32,
                shard_crc: r.crc,
            };
            let head = header.encode(r.pieces);
            let written = match direct {
                Some(f) => {
                    // The gap before `start` stays a hole: it reads as zeros.
                    let padded = align_up(len);
                    let b = buf.get(padded as usize);
                    b[..head.len()].copy_from_slice(&head);
                    b[head.len()..len as usize].copy_from_slice(r.data);
                    b[len as usize..].fill(0);
                    f.write_all_at(b, start).map(|()| padded)
                }
                None => file
                    .write_all_at(&head, start)
                    .and_then(|()| file.write_all_at(r.data, start + head.len() as u64))
                    .map(|()| len),
            };
            match written {
                Ok(n) => {
                    starts.push(Pos {
                        segment,
                        offset: start,
                    });
                    at = start + n;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        if let Err(e) = result {
            // Leave no partial record behind: the next append starts at `base`.
            if let Err(t) = w.file.set_len(base) {
                self.fail(format!(
                    "cannot truncate {} after a failed write: {t}",
                    path.display()
                ));
            }
            return Err(Error::io(path, e));
        }
        if !moved {
            w.fresh += at - base;
        }
        w.end = at;
        w.inflight.extend(starts.iter().copied());
        Ok(Appended {
            starts,
            end: Pos {
                segment,
                offset: at,
            },
        })
    }

    fn roll(&self, w: &mut Writer) -> Result<()> {
        let old = segment_path(&self.dir, w.segment);
        // The group commit only syncs the current segment, so everything
        // appended to this one must be durable before we move on.
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = w.file.sync_data() {
            self.fail(format!("fsync of {} failed: {e}", old.display()));
            return Err(Error::io(old, e));
        }
        let synced_to = Pos {
            segment: w.segment,
            offset: w.end,
        };
        let next = w.segment + 1;
        let path = segment_path(&self.dir, next);
        let file = open_rw(&path)?;
        let direct = if self.direct_io {
            open_direct(&path)?
        } else {
            None
        };
        // The new segment's name must survive a crash before records in it
        // are acknowledged.
        fsync_dir(&self.dir)?;
        let end = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        w.segment = next;
        w.file = Arc::new(file);
        w.direct = direct;
        w.end = end;
        w.fresh = 0;
        let mut st = lock(&self.sync);
        st.synced = st.synced.max(synced_to);
        Ok(())
    }

    /// Blocks until an fdatasync covers everything before `end`.
    pub fn wait_synced(&self, end: Pos) -> Result<()> {
        let mut st = lock(&self.sync);
        loop {
            if let Some(reason) = &st.failed {
                return Err(Error::WritesDisabled {
                    reason: reason.clone(),
                });
            }
            if st.synced >= end {
                return Ok(());
            }
            if st.running {
                st = self
                    .synced_cv
                    .wait(st)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            st.running = true;
            drop(st);
            // Everything appended so far is in this file or in older,
            // already synced segments (see `roll`).
            let (file, target) = {
                let w = lock(&self.writer);
                (
                    w.file.clone(),
                    Pos {
                        segment: w.segment,
                        offset: w.end,
                    },
                )
            };
            self.fsyncs.fetch_add(1, Ordering::Relaxed);
            let r = file.sync_data();
            st = lock(&self.sync);
            st.running = false;
            match r {
                Ok(()) => st.synced = st.synced.max(target),
                Err(e) => {
                    let path = segment_path(&self.dir, target.segment);
                    st.failed
                        .get_or_insert(format!("fsync of {} failed: {e}", path.display()));
                    self.synced_cv.notify_all();
                    return Err(Error::io(path, e));
                }
            }
            self.synced_cv.notify_all();
        }
    }

    /// How far the index may claim to be complete once the records at
    /// `own` are indexed: up to the oldest record still in flight elsewhere.
    pub fn marker_excluding(&self, own: &[Pos]) -> Pos {
        let w = lock(&self.writer);
        w.inflight
            .iter()
            .find(|p| !own.contains(p))
            .copied()
            .unwrap_or(Pos {
                segment: w.segment,
                offset: w.end,
            })
    }

    /// The records at `starts` are indexed (or abandoned).
    pub fn done(&self, starts: &[Pos]) {
        let mut w = lock(&self.writer);
        for p in starts {
            w.inflight.remove(p);
        }
    }

    /// The segment being appended to.
    pub fn current(&self) -> u32 {
        lock(&self.writer).segment
    }

    /// Size at which the writer rolls to a new segment.
    pub fn segment_size(&self) -> u64 {
        self.segment_size
    }

    /// Bytes that puts and deletes appended to the current segment.
    pub fn fresh_bytes(&self) -> u64 {
        lock(&self.writer).fresh
    }

    /// Rolls to a new segment if `seg` is still the one being appended to,
    /// so that it can be compacted before it fills.
    pub fn seal(&self, seg: u32) -> Result<()> {
        let mut w = lock(&self.writer);
        if w.segment == seg && w.end > 0 {
            self.roll(&mut w)?;
        }
        Ok(())
    }

    /// Whether records appended to `seg` still wait for their index update
    /// (until then the index does not know they are live).
    pub fn has_inflight(&self, seg: u32) -> bool {
        let from = Pos {
            segment: seg,
            offset: 0,
        };
        lock(&self.writer)
            .inflight
            .range(from..)
            .next()
            .is_some_and(|p| p.segment == seg)
    }

    /// Forgets the read handle of a segment about to be removed.
    pub fn retire(&self, seg: u32) {
        lock(&self.readers).remove(&seg);
        lock(&self.direct_readers).remove(&seg);
    }

    /// Reads exactly `buf.len()` bytes at `at`. Reading past the end of the
    /// file is an `UnexpectedEof` error.
    pub fn read_at(&self, at: Pos, buf: &mut [u8]) -> std::io::Result<()> {
        let file = {
            let mut readers = lock(&self.readers);
            match readers.get(&at.segment) {
                Some(f) => f.clone(),
                None => {
                    let f = Arc::new(File::open(segment_path(&self.dir, at.segment))?);
                    readers.insert(at.segment, f.clone());
                    f
                }
            }
        };
        file.read_exact_at(buf, at.offset)
    }

    /// Reads the `len` bytes at `at` with O_DIRECT, from the page cache's
    /// point of view not at all: the disk fills an aligned buffer that is
    /// handed on as it is. Returns the buffer and where `at` is in it
    /// (short at the end of the file), or None where direct I/O is off or
    /// refused.
    pub fn read_direct(
        &self,
        at: Pos,
        len: usize,
    ) -> std::io::Result<Option<(AlignedBytes, usize)>> {
        if !self.direct_io || self.direct_refused.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let file = {
            let mut readers = lock(&self.direct_readers);
            match readers.get(&at.segment) {
                Some(f) => f.clone(),
                None => {
                    use std::os::unix::fs::OpenOptionsExt;
                    let path = segment_path(&self.dir, at.segment);
                    match OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_DIRECT)
                        .open(&path)
                    {
                        Ok(f) => {
                            let f = Arc::new(f);
                            readers.insert(at.segment, f.clone());
                            f
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                            self.direct_refused.store(true, Ordering::Relaxed);
                            return Ok(None);
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        };
        let start = at.offset - at.offset % ALIGN as u64;
        let skip = (at.offset - start) as usize;
        let span = align_up((skip + len) as u64) as usize;
        Ok(Some((AlignedBytes::read_at(&file, start, span)?, skip)))
    }
}
