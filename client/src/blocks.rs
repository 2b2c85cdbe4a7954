//! Block ids, reserved from the metadata service in batches.

use tokio::sync::Mutex;

use tessera_common::BlockId;

use crate::{meta::MetaClient, Result};

const BATCH: u32 = 256;

pub(crate) struct BlockIds {
    meta: MetaClient,
    range: Mutex<(u64, u64)>,
}

impl BlockIds {
    pub fn new(meta: MetaClient) -> Self {
        BlockIds {
            meta,
            range: Mutex::new((0, 0)),
        }
    }

    pub async fn next(&self) -> Result<BlockId> {
        let mut r = self.range.lock().await;
        if r.0 == r.1 {
            let ids = self.meta.alloc_blocks(BATCH).await?;
            *r = (ids.start, ids.end);
        }
        let id = r.0;
        r.0 += 1;
        Ok(id)
    }
}
