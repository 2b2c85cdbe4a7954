//! A small LRU of decoded blocks, so a degraded block is decoded once per
//! burst of reads rather than once per 128 KiB read.

use std::{collections::VecDeque, sync::Mutex};

use bytes::Bytes;
use tessera_common::BlockId;

pub(crate) struct BlockCache {
    capacity: usize,
    blocks: Mutex<VecDeque<(BlockId, Bytes)>>,
}

impl BlockCache {
    pub fn new(capacity: usize) -> Self {
        BlockCache {
            capacity,
            blocks: Mutex::new(VecDeque::new()),
        }
    }

    pub fn get(&self, block: BlockId) -> Option<Bytes> {
        let mut b = self.blocks.lock().expect("block cache lock");
        let pos = b.iter().position(|(id, _)| *id == block)?;
        let entry = b.remove(pos).expect("position is in range");
        let data = entry.1.clone();
        b.push_front(entry);
        Some(data)
    }

    pub fn put(&self, block: BlockId, data: Bytes) {
        let mut b = self.blocks.lock().expect("block cache lock");
        b.retain(|(id, _)| *id != block);
        b.push_front((block, data));
        b.truncate(self.capacity);
    }
}
