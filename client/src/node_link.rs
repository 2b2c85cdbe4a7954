//! A mount's link to one storage node. Shards are put and fetched over
//! lean RPC (see `tessera_proto::lean`), each call on a connection of its
//! own taken from a small pool, with the shard's bytes written from the
//! caller's buffer and read into the one the caller keeps. A node that
//! does not speak lean RPC (an older version) is called over gRPC.

use std::{
    io,
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use prost::Message;
use tessera_proto::{
    lean::{self, io::read_frame, node},
    pb::{self, node_client::NodeClient},
    MAX_MESSAGE,
};
use tokio::{io::AsyncReadExt, net::TcpStream};
use tonic::{transport::Channel, Status};
use tracing::info;

use crate::{lean::closed, meta::endpoint, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept per node; more are opened while calls pile up,
/// and closed after.
const IDLE_KEPT: usize = 16;
/// How long a node that refused lean RPC is called over gRPC before lean
/// RPC is tried again (it may have been upgraded).
const GRPC_FOR: Duration = Duration::from_secs(60);

pub(crate) struct NodeLink {
    addr: String,
    grpc: NodeClient<Channel>,
    idle: Mutex<Vec<TcpStream>>,
    /// Set when the node refused lean RPC: calls go over gRPC until then.
    grpc_until: Mutex<Option<Instant>>,
}

/// Why a lean call did not get an answer.
enum Failed {
    /// The node does not speak lean RPC version 1.
    NotLean(String),
    /// The connection failed.
    Io(io::Error),
}

impl From<io::Error> for Failed {
    fn from(e: io::Error) -> Self {
        Failed::Io(e)
    }
}

impl NodeLink {
    /// A link to the node at `addr`; it connects on first use.
    pub fn new(addr: &str) -> Result<NodeLink> {
        let grpc = NodeClient::new(endpoint(addr)?.connect_lazy())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        Ok(NodeLink {
            addr: addr.to_string(),
            grpc,
            idle: Mutex::new(Vec::new()),
            grpc_until: Mutex::new(None),
        })
    }

    pub async fn put_shard(&self, req: pb::PutShardRequest) -> Result<(), Status> {
        if self.grpc_only() {
            return self.grpc.clone().put_shard(req).await.map(drop);
        }
        let rest = pb::PutShardRequest {
            data: Bytes::new(),
            ..req.clone()
        };
        let head = lean::message_with_bytes_head(&rest, node::PUT_DATA_TAG, req.data.len());
        match self.call(node::PUT_SHARD, &head, &req.data).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(status),
            Err(why) => {
                let answer = self.grpc.clone().put_shard(req).await;
                self.grpc_answered(answer.is_ok(), &why);
                answer.map(drop)
            }
        }
    }

    pub async fn get_shard(
        &self,
        req: pb::GetShardRequest,
    ) -> Result<pb::GetShardResponse, Status> {
        if self.grpc_only() {
            return Ok(self.grpc.clone().get_shard(req).await?.into_inner());
        }
        match self
            .call(node::GET_SHARD, &req.encode_to_vec(), &Bytes::new())
            .await
        {
            Ok(Ok(answer)) => pb::GetShardResponse::decode(answer).map_err(|e| {
                Status::internal(format!(
                    "storage node at {}: malformed GetShard answer: {e}",
                    self.addr
                ))
            }),
            Ok(Err(status)) => Err(status),
            Err(why) => {
                let answer = self.grpc.clone().get_shard(req).await;
                self.grpc_answered(answer.is_ok(), &why);
                Ok(answer?.into_inner())
            }
        }
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
            info!(node = %self.addr, why, "storage node does not speak lean RPC; calling it over gRPC");
            *self.grpc_until.lock().expect("link lock") = Some(Instant::now() + GRPC_FOR);
        }
    }

    /// One call: the node's answer (`Ok(Err)` when the call failed on the
    /// node), or `Err` with why the node does not speak lean RPC. A
    /// connection that breaks fails the call as unavailable, after one
    /// more try on a new connection if a pooled one broke (every Node call
    /// is idempotent).
    async fn call(
        &self,
        path: &str,
        message: &[u8],
        payload: &Bytes,
    ) -> Result<Result<Bytes, Status>, String> {
        let pooled = self.take_idle();
        let retry = pooled.is_some();
        let failed = match self.call_on(pooled, path, message, payload).await {
            Ok(answer) => return Ok(answer),
            Err(Failed::NotLean(why)) => return Err(why),
            Err(Failed::Io(e)) if retry => {
                tracing::debug!(node = %self.addr, error = %e, "pooled connection broke; retrying");
                match self.call_on(None, path, message, payload).await {
                    Ok(answer) => return Ok(answer),
                    Err(Failed::NotLean(why)) => return Err(why),
                    Err(Failed::Io(e)) => e,
                }
            }
            Err(Failed::Io(e)) => e,
        };
        Ok(Err(Status::unavailable(format!(
            "storage node at {}: {failed}",
            self.addr
        ))))
    }

    /// One call on `pooled`, or on a new connection.
    async fn call_on(
        &self,
        pooled: Option<TcpStream>,
        path: &str,
        message: &[u8],
        payload: &Bytes,
    ) -> Result<Result<Bytes, Status>, Failed> {
        let fresh = pooled.is_none();
        let mut stream = match pooled {
            Some(s) => s,
            None => self.connect().await?,
        };
        let mut head = Vec::with_capacity(lean::HELLO_LEN + 64 + message.len());
        if fresh {
            head.extend_from_slice(&lean::hello());
        }
        lean::request_head(path, message.len() + payload.len(), &mut head)
            .map_err(io::Error::from)?;
        head.extend_from_slice(message);
        lean::io::write_parts(&mut stream, &head, payload.clone()).await?;
        if fresh {
            let mut hello = [0u8; lean::HELLO_LEN];
            if let Err(e) = stream.read_exact(&mut hello).await {
                // A gRPC-only node hangs up on bytes that are not HTTP/2.
                return Err(Failed::NotLean(format!("no lean hello: {e}")));
            }
            lean::check_hello(&hello).map_err(|e| Failed::NotLean(e.to_string()))?;
        }
        let frame = read_frame(&mut stream)
            .await?
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let a = lean::decode_response(&frame).map_err(io::Error::from)?;
        let answer = match a.failure() {
            None => Ok(frame.slice(frame.len() - a.message.len()..)),
            Some(status) => Err(status),
        };
        self.put_idle(stream);
        Ok(answer)
    }

    async fn connect(&self) -> io::Result<TcpStream> {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// An idle connection the node has not closed, if there is one.
    fn take_idle(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().expect("link lock");
        while let Some(s) = idle.pop() {
            if !closed(&s) {
                return Some(s);
            }
        }
        None
    }

    fn put_idle(&self, s: TcpStream) {
        let mut idle = self.idle.lock().expect("link lock");
        if idle.len() < IDLE_KEPT {
            idle.push(s);
        }
    }
}

#[cfg(test)]
mod tests;
