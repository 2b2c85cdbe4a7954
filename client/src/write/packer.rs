//! Small files share blocks (group commit). A flush that leaves at most
//! [`PACK_MAX`] bytes joins the mount's packer: the first one is stored at
//! once; those that arrive while a block is in flight are packed into the
//! next block (up to 4 MiB), and the slices of every file in it are
//! committed in one metadata transaction. Files closed together (an
//! unmount, parallel writers, several containers) then cost one stripe and
//! one commit, not one each, and a lone flush waits for nobody.

use std::{collections::VecDeque, sync::Arc};

use tessera_common::MAX_BLOCK;

use super::pipeline::Part;
use crate::volume::Volume;

/// A flush leaving at most this many bytes is packed with other files'.
pub(crate) const PACK_MAX: usize = 1 << 20;

/// Small flushes waiting for a block, and whether one is being stored.
#[derive(Default)]
pub(crate) struct Packer {
    state: std::sync::Mutex<PackState>,
}

#[derive(Default)]
struct PackState {
    queue: VecDeque<Part>,
    running: bool,
}

impl Volume {
    /// Queues a small part for the packer, starting it if it is idle.
    pub(super) fn pack(&self, part: Part) {
        let mut s = self.inner.packer.state.lock().expect("packer lock");
        s.queue.push_back(part);
        if s.running {
            return;
        }
        s.running = true;
        drop(s);
        let vol = self.clone();
        tokio::spawn(async move { vol.run_packer().await });
    }

    /// Stores and commits the queued parts, a block at a time, until none
    /// is left.
    async fn run_packer(&self) {
        loop {
            let batch = {
                let mut s = self.inner.packer.state.lock().expect("packer lock");
                let batch = next_batch(&mut s.queue);
                if batch.is_empty() {
                    s.running = false;
                    return;
                }
                batch
            };
            let results = self.store_and_commit(&batch).await;
            for (part, result) in batch.iter().zip(results) {
                self.settle(part, result).await;
            }
        }
    }
}

/// Takes the parts of the next block off the front of `queue`: at most a
/// block's worth, and (after the first) only parts that can commit without
/// waiting for a block outside the batch, since that block may itself wait
/// for a part in it.
fn next_batch(queue: &mut VecDeque<Part>) -> Vec<Part> {
    let mut batch: Vec<Part> = Vec::new();
    let mut bytes = 0;
    while let Some(p) = queue.front() {
        let len = p.pending.len();
        let ready = p.prev.as_ref().is_none_or(|prev| {
            prev.is_finished() || batch.iter().any(|q| Arc::ptr_eq(&q.pending, prev))
        });
        if !batch.is_empty() && (bytes + len > MAX_BLOCK || !ready) {
            break;
        }
        bytes += len;
        batch.extend(queue.pop_front());
    }
    batch
}
