//! The metadata service's listener: gRPC and lean RPC (see
//! `tessera_proto::lean`) on one port, told apart by a connection's first
//! four bytes. A lean call goes through the same generated gRPC router as
//! an HTTP/2 one, so both reach the same handlers, checks and errors.

use std::{io, time::Duration};

use bytes::Bytes;
use futures::Stream;
use http_body_util::{BodyExt, Full};
use tessera_proto::{
    errno,
    lean::{self, Answer},
    pb::meta_server::MetaServer,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
};
use tonic::{
    codegen::{http, Service},
    Code, Status,
};
use tracing::{debug, warn};

use crate::MetaService;

pub(crate) type Router = MetaServer<MetaService>;

/// How long a new connection may take to send its first four bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts connections on `listener` until `stop` turns true: lean ones
/// are served here, the rest go to the returned stream, for tonic.
pub(crate) fn accept(
    listener: TcpListener,
    router: Router,
    stop: watch::Receiver<bool>,
) -> impl Stream<Item = io::Result<TcpStream>> {
    let (grpc_tx, grpc_rx) = mpsc::channel::<io::Result<TcpStream>>(16);
    tokio::spawn(async move {
        let mut stopped = stop.clone();
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors, say: wait, don't spin.
                        warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stopped.changed() => return,
            };
            // Answers are small and written in several pieces, which
            // Nagle would hold back.
            let _ = stream.set_nodelay(true);
            let (router, grpc_tx, stop) = (router.clone(), grpc_tx.clone(), stop.clone());
            tokio::spawn(async move {
                match first_bytes(&stream).await {
                    Ok(b) if b == lean::MAGIC => {
                        if let Err(e) = serve(stream, router, stop).await {
                            debug!(%peer, error = %e, "lean RPC connection ended");
                        }
                    }
                    Ok(_) => {
                        let _ = grpc_tx.send(Ok(stream)).await;
                    }
                    Err(e) => debug!(%peer, error = %e, "connection sent nothing"),
                }
            });
        }
    });
    futures::stream::unfold(
        grpc_rx,
        |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
    )
}

/// The first four bytes the client sent, still unread.
async fn first_bytes(stream: &TcpStream) -> io::Result<[u8; 4]> {
    let mut b = [0u8; 4];
    tokio::time::timeout(FIRST_BYTES_TIMEOUT, async {
        loop {
            match stream.peek(&mut b).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                4 => return Ok(b),
                // Rare: the bytes came in pieces.
                _ => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// Serves one lean connection: calls one at a time, until the client
/// closes it, sends something that is not lean RPC, or `stop` turns true
/// between two calls.
async fn serve(
    stream: TcpStream,
    mut router: Router,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut hello = [0u8; lean::HELLO_LEN];
    stream.read_exact(&mut hello).await?;
    let version = lean::hello_version(&hello)?;
    // Answered before checking: the client learns which version we speak.
    stream.get_mut().write_all(&lean::hello()).await?;
    if version != lean::VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("client speaks lean RPC version {version}"),
        ));
    }
    let mut frame = Vec::new();
    loop {
        let mut head = [0u8; 4];
        tokio::select! {
            r = stream.read_exact(&mut head) => match r {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            },
            _ = stop.changed() => return Ok(()),
        }
        let len = lean::frame_len(head)?;
        // Grown as bytes arrive: a frame that only announces 64 MiB
        // costs nothing.
        frame.clear();
        (&mut stream)
            .take(len as u64)
            .read_to_end(&mut frame)
            .await?;
        if frame.len() != len {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (path, message) = lean::decode_request(&frame)?;
        let answer = call(&mut router, path, message).await;
        stream.get_mut().write_all(&answer).await?;
    }
}

/// Runs one call through the gRPC router; the encoded response frame.
async fn call(router: &mut Router, path: &str, message: &[u8]) -> Vec<u8> {
    match grpc_call(router, path, message).await {
        Ok(answer) => lean::encode_response(&Answer {
            code: 0,
            errno: 0,
            status: "",
            message: &answer,
        }),
        Err(s) => lean::encode_response(&Answer {
            code: s.code() as u32,
            errno: errno::of(&s)
                .and_then(|e| u32::try_from(e).ok())
                .unwrap_or(0),
            status: s.message(),
            message: b"",
        }),
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
