//! Lean RPC on the metadata service (see `tessera_proto::lean`): a lean
//! call goes through the same generated gRPC router as an HTTP/2 one, so
//! both reach the same handlers, checks and errors.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tessera_proto::{
    lean::{
        self,
        server::{Handler, Reply},
    },
    pb::meta_server::MetaServer,
};
use tonic::{
    codegen::{http, Service},
    Code, Status,
};

use crate::MetaService;

pub(crate) type Router = MetaServer<MetaService>;

/// Answers lean calls through the gRPC router.
#[derive(Clone)]
pub(crate) struct LeanMeta(pub Router);

impl Handler for LeanMeta {
    async fn call(&mut self, path: &str, message: Bytes) -> Reply {
        match grpc_call(&mut self.0, path, &message).await {
            Ok(answer) => Reply::ok(Vec::new(), answer),
            Err(s) => Reply::status(&s),
        }
    }
}

async fn grpc_call(router: &mut Router, path: &str, message: &[u8]) -> Result<Bytes, Status> {
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(lean::grpc_frame(message)))
        .map_err(|e| Status::invalid_argument(format!("method path {path:?}: {e}")))?;
    let Ok(()) =
        std::future::poll_fn(|cx| Service::<http::Request<Full<Bytes>>>::poll_ready(router, cx))
            .await;
    let Ok(response) = router.call(request).await;
    let (parts, body) = response.into_parts();
    // An error before any message comes as headers only.
    if let Some(s) = Status::from_header_map(&parts.headers) {
        if s.code() != Code::Ok {
            return Err(s);
        }
    }
    let collected = body.collect().await?;
    if let Some(s) = collected.trailers().and_then(Status::from_header_map) {
        if s.code() != Code::Ok {
            return Err(s);
        }
    }
    lean::grpc_message(&collected.to_bytes())
        .ok_or_else(|| Status::internal(format!("{path}: the answer is not one gRPC message")))
}
