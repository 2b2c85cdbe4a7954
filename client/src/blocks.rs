//! Block ids, reserved from the metadata service in batches.

use tokio::sync::Mutex;

use tessera_common::BlockId;
use tessera_proto::pb;

use crate::{MetaConn, Result};

const BATCH: u32 = 256;

pub(crate) struct BlockIds {
    meta: MetaConn,
    range: Mutex<(u64, u64)>,
}

impl BlockIds {
    pub fn new(meta: MetaConn) -> Self {
        BlockIds {
            meta,
            range: Mutex::new((0, 0)),
        }
    }

    pub async fn next(&self) -> Result<BlockId> {
        let mut r = self.range.lock().await;
        if r.0 == r.1 {
            let resp = self
                .meta
                .clone()
                .alloc_blocks(pb::AllocBlocksRequest { count: BATCH })
                .await?
                .into_inner();
            *r = (resp.first, resp.first + u64::from(resp.count));
        }
        let id = r.0;
        r.0 += 1;
        Ok(id)
    }
}
