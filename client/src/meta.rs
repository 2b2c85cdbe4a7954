//! Connection to the metadata service.

use std::time::Duration;

use tessera_proto::{pb::meta_client::MetaClient, MAX_MESSAGE};
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, Result};

pub type MetaConn = MetaClient<Channel>;

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
    Ok(MetaClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// An HTTP/2 endpoint with Tessera's timeouts.
pub(crate) fn endpoint(addr: &str) -> Result<Endpoint> {
    Ok(endpoint_without_keep_alive(addr)?
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// For a connection only polled while a call is running on it.
pub(crate) fn endpoint_without_keep_alive(addr: &str) -> Result<Endpoint> {
    Endpoint::from_shared(format!("http://{addr}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .tcp_nodelay(true)
                .initial_stream_window_size(Some(8 << 20))
                .initial_connection_window_size(Some(32 << 20))
        })
        .map_err(|e| ClientError::Invalid(format!("address {addr:?}: {e}")))
}
