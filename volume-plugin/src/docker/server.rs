//! HTTP/1.1 on a unix socket: each `POST /ENDPOINT` is handed to the
//! [`Driver`] and its answer (or `{"Err": ...}`) sent back as JSON.

use std::{
    convert::Infallible, future::Future, os::unix::fs::PermissionsExt, path::Path, sync::Arc,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Incoming, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixListener;
use tracing::{debug, info, warn, Instrument};

use super::{protocol, Driver};
use crate::{PluginError, Result};

/// Serves `driver` on the unix socket `socket` until `shutdown` resolves.
/// The socket is replaced if a stale one is there, and only root (and the
/// socket's group) may connect.
pub async fn serve(
    socket: &Path,
    driver: Arc<Driver>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let io = |what: String| move |e| PluginError::io(what, e);
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    }
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(PluginError::io(
                format!("removing stale socket {}", socket.display()),
                e,
            ))
        }
    }
    let listener =
        UnixListener::bind(socket).map_err(io(format!("listening on {}", socket.display())))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))
        .map_err(io(format!("restricting {}", socket.display())))?;
    info!(socket = %socket.display(), "docker volume plugin listening");
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!(error = %e, "accepting a connection");
                    continue;
                }
            },
        };
        let driver = driver.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let driver = driver.clone();
                async move { Ok::<_, Infallible>(answer(driver, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "plugin connection ended");
            }
        });
    }
    let _ = std::fs::remove_file(socket);
    Ok(())
}

async fn answer(driver: Arc<Driver>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let endpoint = req.uri().path().trim_start_matches('/').to_string();
    let span = tracing::info_span!("docker", endpoint = %endpoint);
    async {
        let result = if req.method() != Method::POST {
            Err(PluginError::Invalid(format!(
                "{} is not POST",
                req.method()
            )))
        } else {
            match Limited::new(req.into_body(), protocol::MAX_BODY)
                .collect()
                .await
            {
                Ok(body) => {
                    let mut body = body.to_bytes();
                    // Docker sends no body, or `null`, for argument-less calls.
                    if body.is_empty() {
                        body = Bytes::from_static(b"null");
                    }
                    debug!(request = %String::from_utf8_lossy(&body), "request");
                    // On a task of its own: Docker hanging up (dockerd
                    // restarting, say) drops this future, and a request cut
                    // off half-way (a mount process started, its record not
                    // yet written) must not let the next request on the
                    // volume in before it is done.
                    let endpoint = endpoint.clone();
                    let task = async move { driver.handle(&endpoint, &body).await };
                    tokio::spawn(task.in_current_span())
                        .await
                        .unwrap_or_else(|e| {
                            Err(PluginError::Invalid(format!("request failed: {e}")))
                        })
                }
                Err(e) => Err(PluginError::Invalid(format!(
                    "reading the request body: {e}"
                ))),
            }
        };
        match result {
            Ok(v) => reply(StatusCode::OK, &v),
            Err(e) => {
                warn!(error = %e, "request failed");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &json!({ "Err": e.to_string() }),
                )
            }
        }
    }
    .instrument(span)
    .await
}

fn reply(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, protocol::CONTENT_TYPE)
        .body(Full::new(Bytes::from(v.to_string())))
        .expect("a static header and a status always build a response")
}
