//! Open directory handles: a directory's listing is read when it is opened
//! and served from memory, so readdir offsets stay stable while entries
//! change underneath.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use tessera_common::DirEntry;

#[derive(Default)]
pub struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
}

impl DirHandles {
    pub fn insert(&self, entries: Vec<DirEntry>) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open
            .lock()
            .expect("dir handles lock")
            .insert(fh, Arc::new(entries));
        fh
    }

    pub fn get(&self, fh: u64) -> Option<Arc<Vec<DirEntry>>> {
        self.open
            .lock()
            .expect("dir handles lock")
            .get(&fh)
            .cloned()
    }

    pub fn remove(&self, fh: u64) {
        self.open.lock().expect("dir handles lock").remove(&fh);
    }
}
