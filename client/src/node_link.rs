//! A mount's link to one storage node. Shards are put and fetched over
//! lean RPC (`transport::lean_client`), each call on a pooled connection
//! of its own, with the shard's bytes written from the caller's buffer
//! and read into the one the caller keeps. A small read can also be made
//! on the calling thread (a FUSE worker's), which then reads the answer
//! itself, with no runtime in between. A node that does not speak lean RPC
//! (an older version) is called over gRPC.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message;
use tessera_common::ShardKey;
use tessera_proto::{
    lean::{self, node},
    pb::{self, node_client::NodeClient},
    transport::{
        grpc,
        lean_client::{Answer, BlockingLeanClient, CallError, LeanClient, Retry},
        settings::MAX_MESSAGE,
    },
};
use tonic::{transport::Channel, Status};
use tracing::info;

use crate::{stripe::SLOW_READ, Result};

/// How long a node that refused lean RPC is called over gRPC before lean
/// RPC is tried again (it may have been upgraded).
const GRPC_FOR: Duration = Duration::from_secs(60);

/// Bytes read from a shard, with the whole shard's CRC and length.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub data: Bytes,
    pub shard_crc: u32,
    pub shard_len: u32,
}

impl Fetched {
    /// Why these are not the `asked` bytes of a range, if they are not.
    pub fn short_of(&self, asked: u32) -> Option<String> {
        let got = self.data.len();
        (got != asked as usize).then(|| format!("returned {got} bytes, asked {asked}"))
    }
}

impl From<pb::GetShardResponse> for Fetched {
    fn from(r: pb::GetShardResponse) -> Self {
        Fetched {
            data: r.data,
            shard_crc: r.shard_crc,
            shard_len: r.shard_len,
        }
    }
}

pub(crate) struct NodeLink {
    lean: LeanClient,
    /// The same node for callers on threads of their own.
    lean_now: BlockingLeanClient,
    grpc: NodeClient<Channel>,
    /// Set when the node refused lean RPC: calls go over gRPC until then.
    grpc_until: Mutex<Option<Instant>>,
}

impl NodeLink {
    /// A link to the node at `addr`; it connects on first use.
    pub fn new(addr: &str) -> Result<NodeLink> {
        let grpc = NodeClient::new(grpc::lazy_channel(addr, None)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(NodeLink {
            lean: LeanClient::new(addr),
            lean_now: BlockingLeanClient::with_timeout(addr, SLOW_READ),
            grpc,
            grpc_until: Mutex::new(None),
        })
    }

    pub fn addr(&self) -> &str {
        self.lean.addr()
    }

    /// Stores shard `key`, whose bytes have CRC `crc`, placed with the
    /// table of `epoch`.
    pub async fn put_shard(
        &self,
        key: ShardKey,
        data: Bytes,
        crc: u32,
        epoch: u64,
    ) -> Result<(), Status> {
        let req = pb::PutShardRequest {
            key: Some(key.into()),
            data,
            crc,
            epoch,
        };
        if self.grpc_only() {
            return self.grpc.clone().put_shard(req).await.map(drop);
        }
        let rest = pb::PutShardRequest {
            data: Bytes::new(),
            ..req.clone()
        };
        let head = lean::message_with_bytes_head(&rest, node::PUT_DATA_TAG, req.data.len());
        match self.call(node::PUT_SHARD, &head, &req.data).await {
            Ok(answer) => answer.map(drop),
            Err(why) => {
                let answer = self.grpc.clone().put_shard(req).await;
                self.grpc_answered(answer.is_ok(), &why);
                answer.map(drop)
            }
        }
    }

    /// `len` bytes at `offset` of shard `key` (0: to its end).
    pub async fn get_shard(&self, key: ShardKey, offset: u32, len: u32) -> Result<Fetched, Status> {
        let req = pb::GetShardRequest {
            key: Some(key.into()),
            offset,
            len,
        };
        self.get(req).await.map(Fetched::from)
    }

    /// Several ranges (`(key, offset, len)`, each `len` > 0) in one call,
    /// in the order asked. A node older than GetShards answers
    /// `Unimplemented`.
    pub async fn get_shards(&self, reads: &[(ShardKey, u32, u32)]) -> Result<Vec<Fetched>, Status> {
        let req = pb::GetShardsRequest {
            reads: reads
                .iter()
                .map(|&(key, offset, len)| pb::GetShardRequest {
                    key: Some(key.into()),
                    offset,
                    len,
                })
                .collect(),
        };
        let answer = if self.grpc_only() {
            self.grpc.clone().get_shards(req).await?.into_inner()
        } else {
            match self
                .call(node::GET_SHARDS, &req.encode_to_vec(), &Bytes::new())
                .await
            {
                Ok(answer) => pb::GetShardsResponse::decode(answer?)
                    .map_err(|e| self.malformed("GetShards", e))?,
                Err(why) => {
                    let answer = self.grpc.clone().get_shards(req).await;
                    self.grpc_answered(answer.is_ok(), &why);
                    answer?.into_inner()
                }
            }
        };
        if answer.shards.len() != reads.len() {
            return Err(Status::internal(format!(
                "storage node at {}: {} ranges answered, {} asked",
                self.lean.addr(),
                answer.shards.len(),
                reads.len()
            )));
        }
        Ok(answer.shards.into_iter().map(Fetched::from).collect())
    }

    /// [`NodeLink::get_shard`] on this thread, which waits for the answer
    /// (at most [`SLOW_READ`] between bytes). None when the node
    /// is called over gRPC, or did not speak lean RPC just now: the caller
    /// asks again with `get_shard`, which finds out which it speaks.
    pub fn get_shard_now(
        &self,
        key: ShardKey,
        offset: u32,
        len: u32,
    ) -> Option<Result<Fetched, Status>> {
        if self.grpc_only() {
            return None;
        }
        let req = pb::GetShardRequest {
            key: Some(key.into()),
            offset,
            len,
        };
        let answer =
            match self
                .lean_now
                .call(node::GET_SHARD, &req.encode_to_vec(), Retry::Idempotent)
            {
                Ok(answer) => answer,
                Err(CallError::NotLean(_)) => return None,
                Err(CallError::Io(e) | CallError::Unsent(e)) => {
                    return Some(Err(self.unavailable(e)))
                }
            };
        Some(match answer {
            Ok(a) => pb::GetShardResponse::decode(a)
                .map(Fetched::from)
                .map_err(|e| self.malformed("GetShard", e)),
            Err(s) => Err(s),
        })
    }

    async fn get(&self, req: pb::GetShardRequest) -> Result<pb::GetShardResponse, Status> {
        if self.grpc_only() {
            return Ok(self.grpc.clone().get_shard(req).await?.into_inner());
        }
        match self
            .call(node::GET_SHARD, &req.encode_to_vec(), &Bytes::new())
            .await
        {
            Ok(answer) => {
                pb::GetShardResponse::decode(answer?).map_err(|e| self.malformed("GetShard", e))
            }
            Err(why) => {
                let answer = self.grpc.clone().get_shard(req).await;
                self.grpc_answered(answer.is_ok(), &why);
                Ok(answer?.into_inner())
            }
        }
    }

    fn malformed(&self, method: &str, e: prost::DecodeError) -> Status {
        Status::internal(format!(
            "storage node at {}: malformed {method} answer: {e}",
            self.lean.addr()
        ))
    }

    fn unavailable(&self, e: std::io::Error) -> Status {
        Status::unavailable(format!("storage node at {}: {e}", self.lean.addr()))
    }

    fn grpc_only(&self) -> bool {
        let mut until = self.grpc_until.lock().expect("link lock");
        match *until {
            Some(t) if t > Instant::now() => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// After lean RPC got no hello: if gRPC then answered, the node is an
    /// older version, and is called over gRPC for a while. If it did not,
    /// the node is down or restarting (it hangs up at the hello too), and
    /// lean RPC is tried again next time.
    fn grpc_answered(&self, answered: bool, why: &str) {
        if answered {
            info!(node = %self.lean.addr(), why, "storage node does not speak lean RPC; calling it over gRPC");
            *self.grpc_until.lock().expect("link lock") = Some(Instant::now() + GRPC_FOR);
        }
    }

    /// One call: the node's answer, or `Err` with why the node does not
    /// speak lean RPC. A broken connection fails the call as unavailable,
    /// after one more try on a new connection if a pooled one broke
    /// (every Node call is idempotent).
    async fn call(&self, path: &str, message: &[u8], payload: &Bytes) -> Result<Answer, String> {
        match self
            .lean
            .call(path, message, payload, Retry::Idempotent)
            .await
        {
            Ok(answer) => Ok(answer),
            Err(CallError::NotLean(why)) => Err(why),
            Err(CallError::Io(e) | CallError::Unsent(e)) => Ok(Err(self.unavailable(e))),
        }
    }
}

#[cfg(test)]
mod tests;
