//! Per-file write buffering and the pipeline that makes it durable.
//!
//! `write` copies bytes into the file's dirty extents. Each time 4 MiB
//! accumulate, they are cut into a block that is stored in the background
//! (several blocks in flight, bounded), and committed to the metadata
//! service strictly in the order they were cut, so a newer slice always sits
//! on top of an older one. `flush` cuts what is left and waits for the last
//! commit: only then is a close or fsync acknowledged. A failed block makes
//! the file's next write, flush or fsync fail with its errno.

use std::sync::Arc;

use tessera_common::{Ino, MAX_BLOCK};
use tokio::sync::watch;

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

/// A block's worth of extents on its way to the storage nodes.
pub(crate) struct Pending {
    pub extents: Vec<Extent>,
    done: watch::Sender<Option<Result<()>>>,
}

impl Pending {
    pub fn new(extents: Vec<Extent>) -> Arc<Self> {
        Arc::new(Pending {
            extents,
            done: watch::channel(None).0,
        })
    }

    pub fn finish(&self, result: Result<()>) {
        self.done.send_replace(Some(result));
    }

    /// Waits until this block is committed (or failed).
    pub async fn wait(&self) -> Result<()> {
        let mut rx = self.done.subscribe();
        let r = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ClientError::Invalid("write pipeline dropped".into()))?;
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
    /// Blocks stored or being stored but not yet committed, oldest first.
    pub inflight: Vec<Arc<Pending>>,
    /// A failure not yet reported to the application.
    pub error: Option<ClientError>,
    /// Open file handles of this inode in this mount.
    pub opens: u32,
    /// The file lost its last name while open here: closing its last
    /// handle releases it (see `volume/orphans.rs`).
    pub orphan: bool,
}

impl FileState {
    /// Buffers a write. Returns true when a full block is ready to cut.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        if let Some(last) = self.dirty.last_mut() {
            // Extend or overwrite the newest extent in place when the write
            // touches it: no newer extent can sit on top of it.
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

    /// Cuts up to one block (4 MiB) of the oldest dirty extents.
    pub fn cut(&mut self) -> Option<Vec<Extent>> {
        if self.dirty.is_empty() {
            return None;
        }
        let mut taken = Vec::new();
        let mut room = MAX_BLOCK;
        while room > 0 && !self.dirty.is_empty() {
            let e = &mut self.dirty[0];
            if e.data.len() <= room {
                let e = self.dirty.remove(0);
                room -= e.data.len();
                taken.push(e);
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
        Some(taken)
    }

    /// Every uncommitted extent, oldest first: what reads lay over the
    /// committed bytes.
    pub fn overlay(&self) -> Vec<Extent> {
        let mut out: Vec<Extent> = self
            .inflight
            .iter()
            .flat_map(|p| p.extents.iter().cloned())
            .collect();
        out.extend(self.dirty.iter().cloned());
        out
    }

    /// The end of the furthest uncommitted byte.
    pub fn pending_end(&self) -> u64 {
        self.overlay().iter().map(Extent::end).max().unwrap_or(0)
    }

    pub fn idle(&self) -> bool {
        self.dirty.is_empty() && self.inflight.is_empty() && self.opens == 0 && self.error.is_none()
    }

    pub fn take_error(&mut self, ino: Ino) -> Result<()> {
        match self.error.take() {
            None => Ok(()),
            Some(e) => Err(ClientError::EarlierWrite {
                ino,
                errno: e.errno(),
                why: e.to_string(),
            }),
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
        assert_eq!(block.iter().map(|e| e.data.len()).sum::<usize>(), MAX_BLOCK);
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
        for e in f.overlay() {
            file[e.offset as usize..e.end() as usize].copy_from_slice(&e.data);
        }
        assert_eq!(&file[..8], b"aCBBaaaa");
        assert_eq!(file[100], b'x');
        assert_eq!(f.pending_end(), 101);
    }
}
