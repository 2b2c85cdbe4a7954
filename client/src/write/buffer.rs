//! One file's write buffer in a mount: the dirty extents `write` copies
//! into, and the blocks cut from them that are being stored (`Pending`),
//! oldest first. Readers of this mount see both, laid over the committed
//! bytes.

use std::sync::Arc;

use bytes::Bytes;
use tessera_common::{Ino, MAX_BLOCK};
use tokio::sync::watch;

use super::handles::Handles;
use crate::{ClientError, Result};

/// Bytes written at `offset`, not yet committed.
#[derive(Clone, Debug)]
pub(crate) struct Extent {
    pub offset: u64,
    pub data: Arc<Vec<u8>>,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.data.len() as u64
    }
}

/// An extent's bytes, shared without a copy (a block being stored, or a
/// reader's view of one).
pub(crate) struct SharedBytes(pub Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// A block's worth of extents on its way to the storage nodes.
pub(crate) struct Pending {
    pub extents: Vec<Extent>,
    /// Cut from bytes put back: older than the ones still put back.
    retry: bool,
    done: watch::Sender<Option<Result<()>>>,
}

impl Pending {
    fn new(extents: Vec<Extent>, retry: bool) -> Arc<Self> {
        Arc::new(Pending {
            extents,
            retry,
            done: watch::channel(None).0,
        })
    }

    pub fn finish(&self, result: Result<()>) {
        self.done.send_replace(Some(result));
    }

    /// Waits until this block of inode `ino` is committed (or failed).
    pub async fn wait(&self, ino: Ino) -> Result<()> {
        let mut rx = self.done.subscribe();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ClientError::PipelineDropped { ino })?;
        r.clone().expect("wait_for returned a finished result")
    }

    /// Whether this block is committed (or failed).
    pub fn is_finished(&self) -> bool {
        self.done.borrow().is_some()
    }

    pub fn len(&self) -> usize {
        self.extents.iter().map(|e| e.data.len()).sum()
    }
}

/// What one file has buffered and in flight in this mount.
#[derive(Default)]
pub(crate) struct FileState {
    pub dirty: Vec<Extent>,
    pub dirty_bytes: usize,
    /// How many of the leading extents of `dirty` came back from blocks
    /// that could not be stored or committed (a service unreachable): they
    /// are older than anything written since, and older than every block
    /// in flight, so they are cut again only when no block is in flight.
    requeued: usize,
    /// Blocks stored or being stored but not yet committed, oldest first.
    pub inflight: Vec<Arc<Pending>>,
    /// Open handles, and the failed writes they report.
    pub handles: Handles,
    /// The file lost its last name while open here: closing its last
    /// handle releases it (see `volume/orphans.rs`).
    pub orphan: bool,
    /// A task retries the requeued bytes in the background.
    pub retrying: bool,
}

impl FileState {
    /// Buffers a write. Returns true when a full block is ready to cut.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        // Extend or overwrite the newest extent in place when the write
        // touches it: no newer extent can sit on top of it. Not one put
        // back: a block still in flight may come back on top of it.
        let fresh = self.dirty.len() > self.requeued;
        if let Some(last) = self.dirty.last_mut().filter(|_| fresh) {
            if offset >= last.offset && offset <= last.end() {
                let buf = Arc::make_mut(&mut last.data);
                let at = (offset - last.offset) as usize;
                let overlap = (buf.len() - at).min(data.len());
                let grow = data.len() - overlap;
                if buf.capacity() - buf.len() < grow {
                    // Straight to a whole block: a sequential writer fills
                    // it, and doubling would copy the bytes again each time.
                    buf.reserve_exact(grow.max(MAX_BLOCK.saturating_sub(buf.len())));
                }
                buf[at..at + overlap].copy_from_slice(&data[..overlap]);
                buf.extend_from_slice(&data[overlap..]);
                self.dirty_bytes += data.len() - overlap;
                return self.dirty_bytes >= MAX_BLOCK;
            }
        }
        self.dirty.push(Extent {
            offset,
            data: Arc::new(data.to_vec()),
        });
        self.dirty_bytes += data.len();
        self.dirty_bytes >= MAX_BLOCK
    }

    /// Cuts up to one block (4 MiB) of the oldest dirty extents, and puts
    /// it in flight. Not while extents put back wait behind a block in
    /// flight: they must commit before it if it is newer, and after it if
    /// it is older (cut from them).
    pub fn cut(&mut self) -> Option<Arc<Pending>> {
        if self.dirty.is_empty() || (self.requeued > 0 && !self.inflight.is_empty()) {
            return None;
        }
        let retry = self.requeued > 0;
        let mut taken = Vec::new();
        let mut room = MAX_BLOCK;
        while room > 0 && !self.dirty.is_empty() {
            let e = &mut self.dirty[0];
            if e.data.len() <= room {
                let e = self.dirty.remove(0);
                room -= e.data.len();
                taken.push(e);
                self.requeued = self.requeued.saturating_sub(1);
            } else {
                let head = Extent {
                    offset: e.offset,
                    data: Arc::new(e.data[..room].to_vec()),
                };
                e.data = Arc::new(e.data[room..].to_vec());
                e.offset += room as u64;
                taken.push(head);
                room = 0;
            }
        }
        self.dirty_bytes -= MAX_BLOCK - room;
        let pending = Pending::new(taken, retry);
        self.inflight.push(pending.clone());
        Some(pending)
    }

    /// Puts back the extents of a block that could not be stored or
    /// committed, in the order blocks were cut (they settle in that
    /// order): a block cut from bytes put back goes before those still
    /// put back, any other after them; all before what was written since.
    pub fn requeue(&mut self, block: &Pending) {
        self.inflight
            .retain(|p| !std::ptr::eq(Arc::as_ptr(p), block));
        let at = if block.retry { 0 } else { self.requeued };
        self.dirty.splice(at..at, block.extents.iter().cloned());
        self.requeued += block.extents.len();
        self.dirty_bytes += block.len();
    }

    /// Bytes wait here because their block could not be stored or
    /// committed.
    pub fn stalled(&self) -> bool {
        self.requeued > 0
    }

    /// Bytes put back are not stored yet: they wait here, or are on their
    /// way again in a block cut from them.
    pub fn put_back_pending(&self) -> bool {
        self.stalled() || self.inflight.iter().any(|p| p.retry)
    }

    /// The uncommitted bytes within `[start, end)`, oldest first, as
    /// (offset, bytes): what reads lay over the committed bytes. Extents in
    /// flight are immutable and shared; dirty ones are copied, only the
    /// bytes asked for, so a reader never holds the buffer a writer is
    /// appending to (which would make the writer copy it whole).
    pub fn overlay(&self, start: u64, end: u64) -> Vec<(u64, Bytes)> {
        let clip = |x: &Extent| {
            let (lo, hi) = (x.offset.max(start), x.end().min(end));
            (lo < hi).then(|| ((lo - x.offset) as usize, (hi - x.offset) as usize, lo))
        };
        let mut out = Vec::new();
        let inflight = |retry: bool, out: &mut Vec<(u64, Bytes)>| {
            let blocks = self.inflight.iter().filter(|p| p.retry == retry);
            for x in blocks.flat_map(|p| &p.extents) {
                if let Some((a, b, at)) = clip(x) {
                    out.push((
                        at,
                        Bytes::from_owner(SharedBytes(x.data.clone())).slice(a..b),
                    ));
                }
            }
        };
        let dirty = |xs: &[Extent], out: &mut Vec<(u64, Bytes)>| {
            for x in xs {
                if let Some((a, b, at)) = clip(x) {
                    out.push((at, Bytes::copy_from_slice(&x.data[a..b])));
                }
            }
        };
        // Oldest first: blocks cut from bytes put back, the bytes still
        // put back, the other blocks in flight, what was written since.
        inflight(true, &mut out);
        dirty(&self.dirty[..self.requeued], &mut out);
        inflight(false, &mut out);
        dirty(&self.dirty[self.requeued..], &mut out);
        out
    }

    /// The ranges `[lo, hi)` of `[start, end)` that uncommitted bytes (in
    /// flight or buffered) cover, in no order, without the bytes.
    pub fn uncommitted(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.inflight
            .iter()
            .flat_map(|p| &p.extents)
            .chain(&self.dirty)
            .map(|x| (x.offset.max(start), x.end().min(end)))
            .filter(|(lo, hi)| lo < hi)
            .collect()
    }

    /// The end of the furthest uncommitted byte.
    pub fn pending_end(&self) -> u64 {
        let inflight = self.inflight.iter().flat_map(|p| &p.extents);
        inflight
            .chain(&self.dirty)
            .map(Extent::end)
            .max()
            .unwrap_or(0)
    }

    pub fn idle(&self) -> bool {
        self.dirty.is_empty() && self.inflight.is_empty() && self.handles.quiet()
    }

    /// Why bytes are still held here after a flush stored what it could.
    pub fn held_back(&self, ino: Ino) -> Result<()> {
        match self.stalled() {
            true => Err(self.handles.why_held(ino)),
            false => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_writes_coalesce_and_cut_into_blocks() {
        let mut f = FileState::default();
        let chunk = vec![7u8; 1 << 20];
        let mut ready = false;
        for i in 0..5u64 {
            ready |= f.write(i << 20, &chunk);
        }
        assert!(ready);
        assert_eq!(f.dirty.len(), 1);
        let block = f.cut().unwrap();
        assert_eq!(block.len(), MAX_BLOCK);
        assert_eq!(f.dirty_bytes, 1 << 20);
        assert_eq!(f.dirty[0].offset, MAX_BLOCK as u64);
    }

    #[test]
    fn overwrites_keep_the_newest_bytes() {
        let mut f = FileState::default();
        f.write(0, b"aaaaaaaa");
        f.write(2, b"BB");
        f.write(100, b"x");
        f.write(1, b"C");
        let mut file = [0u8; 101];
        for (at, data) in f.overlay(0, 200) {
            file[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
        assert_eq!(&file[..8], b"aCBBaaaa");
        assert_eq!(file[100], b'x');
        assert_eq!(f.pending_end(), 101);
        // Only the bytes asked for, from the extents that hold them.
        assert_eq!(f.overlay(3, 5), vec![(3, Bytes::from_static(b"Ba"))]);
        assert_eq!(
            f.overlay(0, 3),
            vec![
                (0, Bytes::from_static(b"aaB")),
                (1, Bytes::from_static(b"C"))
            ]
        );
    }

    /// A reader in the middle of a sequential writer's block takes a copy
    /// of what it reads, never the buffer itself: the writer goes on
    /// appending in place instead of copying 4 MiB.
    #[test]
    fn a_reader_never_makes_the_writer_copy_its_buffer() {
        let mut f = FileState::default();
        f.write(0, &[1u8; 4096]);
        // The second write grows the buffer to a whole block at once.
        f.write(4096, &[1u8; 4096]);
        let before = f.dirty[0].data.as_ptr();
        let seen = f.overlay(4096, 8192);
        f.write(8192, &[2u8; 1 << 20]);
        assert_eq!(
            f.dirty[0].data.as_ptr(),
            before,
            "the writer copied its buffer"
        );
        assert_eq!(Arc::strong_count(&f.dirty[0].data), 1);
        assert_eq!(seen, vec![(4096, Bytes::from(vec![1u8; 4096]))]);
    }

    fn bytes_of(f: &FileState, len: usize) -> Vec<u8> {
        let mut file = vec![0u8; len];
        for (at, data) in f.overlay(0, len as u64) {
            file[at as usize..at as usize + data.len()].copy_from_slice(&data);
        }
        file
    }

    /// Blocks that failed come back in the order they were cut, under
    /// everything written since, and are not cut again while a newer
    /// block is in flight.
    #[test]
    fn requeued_blocks_keep_their_order_under_newer_writes() {
        let mut f = FileState::default();
        f.write(0, b"1111");
        let first = f.cut().unwrap();
        f.write(2, b"22");
        let second = f.cut().unwrap();
        f.write(3, b"3");
        assert!(!f.put_back_pending(), "blocks in flight, none put back");
        // Both fail, oldest first, as they settle.
        f.requeue(&first);
        assert!(f.stalled());
        assert!(f.cut().is_none(), "cut over a newer block in flight");
        // A write meanwhile goes on top of all of them, even where it
        // touches the bytes put back.
        f.write(0, b"4");
        assert_eq!(bytes_of(&f, 4), b"4123", "reads while one is put back");
        f.requeue(&second);
        assert_eq!(bytes_of(&f, 4), b"4123");
        assert_eq!(f.dirty_bytes, 8);
        // With nothing in flight they go again, in one block, in order.
        let again = f.cut().unwrap();
        assert!(!f.stalled());
        assert!(f.put_back_pending(), "their block is on its way again");
        let order: Vec<&[u8]> = again.extents.iter().map(|x| x.data.as_slice()).collect();
        assert_eq!(order, [&b"1111"[..], b"22", b"3", b"4"]);
    }

    /// A block cut from bytes put back is older than those still put
    /// back: if it fails again, it goes back in front of them.
    #[test]
    fn a_retried_block_that_fails_again_stays_oldest() {
        let mut f = FileState::default();
        f.write(0, &vec![b'x'; MAX_BLOCK]);
        let x = f.cut().unwrap();
        f.write(0, b"y");
        let y = f.cut().unwrap();
        f.requeue(&x);
        f.requeue(&y);
        // The retry takes x alone (a whole block); y waits behind it.
        let retry = f.cut().unwrap();
        assert_eq!(retry.len(), MAX_BLOCK);
        assert!(f.stalled());
        assert!(f.cut().is_none());
        assert_eq!(bytes_of(&f, 2), b"yx", "reads while the retry is in flight");
        f.requeue(&retry);
        assert_eq!(bytes_of(&f, 2), b"yx", "x came back over y");
    }

    /// A write over bytes put back, while a newer block is in flight, is
    /// not merged into them: that block may come back over them, and the
    /// write must stay on top.
    #[test]
    fn a_write_over_bytes_put_back_stays_newest() {
        let mut f = FileState::default();
        f.write(0, b"aaaa");
        let a = f.cut().unwrap();
        f.write(1, b"b");
        let b = f.cut().unwrap();
        f.requeue(&a);
        f.write(1, b"X");
        f.requeue(&b);
        assert_eq!(bytes_of(&f, 4), b"aXaa");
    }
}
