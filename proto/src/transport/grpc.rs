//! gRPC endpoints: client channels and the server builder, with the
//! settings of `settings.rs`.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint, Server};

use super::{settings::*, ConnectError};

/// A channel to `addr` (`host:port`) that connects on first use and again
/// after a failure. `call_timeout` bounds each call (None: unbounded).
/// Made on a runtime, whose tasks carry the connection.
pub fn lazy_channel(addr: &str, call_timeout: Option<Duration>) -> Result<Channel, ConnectError> {
    Ok(endpoint(addr, call_timeout)?.connect_lazy())
}

/// A channel to `addr`, connected before it is returned.
pub async fn channel(addr: &str, call_timeout: Option<Duration>) -> Result<Channel, ConnectError> {
    endpoint(addr, call_timeout)?
        .connect()
        .await
        .map_err(|e| ConnectError {
            addr: addr.to_string(),
            why: e.to_string(),
        })
}

fn endpoint(addr: &str, call_timeout: Option<Duration>) -> Result<Endpoint, ConnectError> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("http://{addr}")
    };
    let e = Endpoint::from_shared(url).map_err(|e| ConnectError {
        addr: addr.to_string(),
        why: format!("not an address: {e}"),
    })?;
    let e = e
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT);
    Ok(match call_timeout {
        Some(t) => e.timeout(t),
        None => e,
    })
}

/// A gRPC server with Tessera's windows and frame size.
pub fn server() -> Server {
    Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_H2_FRAME)
        .tcp_nodelay(true)
}
