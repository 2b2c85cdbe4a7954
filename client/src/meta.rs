//! Connection to the metadata service.

use std::{
    task::{Context, Poll},
    time::Duration,
};

use tessera_proto::{pb::meta_client::MetaClient, CONNECTION_WINDOW, MAX_MESSAGE, STREAM_WINDOW};
use tonic::{
    body::BoxBody,
    codegen::{http, BoxFuture, Service, StdError},
    transport::{Channel, Endpoint},
};

use crate::{lean::LeanChannel, ClientError, Result};

pub type MetaConn = MetaClient<MetaChannel>;

/// How a `MetaConn` reaches the metadata service.
#[derive(Clone)]
pub enum MetaChannel {
    /// gRPC over HTTP/2: shared by tasks, with keep-alives.
    Grpc(Channel),
    /// Lean RPC: one call at a time, blocking its thread (see `lean`).
    Lean(LeanChannel),
}

impl Service<http::Request<BoxBody>> for MetaChannel {
    type Response = http::Response<BoxBody>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            MetaChannel::Grpc(c) => c.poll_ready(cx).map_err(Into::into),
            MetaChannel::Lean(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        match self {
            MetaChannel::Grpc(c) => {
                let call = c.call(request);
                Box::pin(async move { call.await.map_err(Into::into) })
            }
            MetaChannel::Lean(c) => c.call(request),
        }
    }
}

fn meta_client(channel: MetaChannel) -> MetaConn {
    MetaClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// A connection to the metadata service at `addr` over lean RPC, for one
/// thread's calls (see `lean`); it connects on its first call.
pub(crate) fn lean_meta(addr: &str) -> MetaConn {
    meta_client(MetaChannel::Lean(LeanChannel::new(addr)))
}

/// Connects to the metadata service at `addr` (`host:port`).
pub async fn connect_meta(addr: &str) -> Result<MetaConn> {
    let channel = endpoint(addr)?
        .connect()
        .await
        .map_err(|e| ClientError::Connect {
            what: "metadata service",
            addr: addr.to_string(),
            why: e.to_string(),
        })?;
    Ok(meta_client(MetaChannel::Grpc(channel)))
}

/// An HTTP/2 endpoint with Tessera's timeouts.
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .initial_stream_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
        })
        .map_err(|e| ClientError::Invalid(format!("address {addr:?}: {e}")))
}
