//! How Tessera's processes reach each other: every TCP connection is made
//! and accepted here, for gRPC and lean RPC alike, with the settings of
//! [`settings`]. This is the one place that knows tonic's transport and
//! HTTP/2, and the one place TLS and connection metrics will change.
//!
//! - [`grpc`]: client channels and the server builder.
//! - [`lean_client`]: lean RPC calls, from tasks or from blocking threads.
//! - [`lean_server`]: lean RPC serving, on tasks or on threads.
//! - [`serve`]: both protocols on one listener, told apart by a
//!   connection's first four bytes (the lean hello's `TSRM`, where HTTP/2
//!   starts with `PRI `).

pub mod frames;
pub mod grpc;
pub mod lean_client;
pub mod lean_server;
pub mod settings;

use std::{future::Future, io, time::Duration};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::JoinSet,
};
use tonic::transport::server::Router;
use tracing::{debug, info, warn};

pub use lean_server::{BlockingHandler, Handler, OnTasks, OnThreads, Reply, ServeLean};

use crate::lean::MAGIC;

/// A peer could not be reached.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot connect to {addr}: {why}")]
pub struct ConnectError {
    pub addr: String,
    pub why: String,
}

/// How long a stopping server lets gRPC clients close their connections:
/// a mount's connections may be idle with nobody reading the goodbye, and
/// every answered call is durable already, so after this they are dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// How long a lean connection stuck in the middle of a frame may take to
/// end once the server stops.
const LEAN_GRACE: Duration = Duration::from_millis(200);

/// Serves `grpc` and lean RPC on `listener` until `shutdown` resolves.
/// Then no connection is accepted any more, lean connections end between
/// calls (one stuck mid-frame is cut after a moment), and gRPC ones get
/// [`SHUTDOWN_GRACE`] to finish.
pub async fn serve(
    listener: TcpListener,
    grpc: Router,
    lean: impl ServeLean,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop, stopped) = watch::channel(false);
    let (grpc_tx, grpc_rx) = mpsc::channel::<io::Result<TcpStream>>(16);
    let accepting = tokio::spawn(accept(listener, lean, grpc_tx, stopped));
    let incoming =
        futures::stream::unfold(
            grpc_rx,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        );
    let (stopping, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let served = grpc.serve_with_incoming_shutdown(incoming, async move {
        shutdown.await;
        let _ = stop.send(true);
        let _ = stopping.send(());
    });
    let grace = async {
        match stopping_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        r = served => r,
        () = grace => {
            info!(grace = ?SHUTDOWN_GRACE, "closing the connections still open");
            Ok(())
        }
    };
    // Every lean connection holds what its handler holds: wait for them.
    let _ = accepting.await;
    result
}

/// Accepts connections until `stop` turns true: lean ones are served with
/// `lean`, the others go to gRPC through `grpc`. Returns once every lean
/// connection has ended.
async fn accept(
    listener: TcpListener,
    lean: impl ServeLean,
    grpc: mpsc::Sender<io::Result<TcpStream>>,
    stop: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
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
            _ = stopped.changed() => break,
        };
        while conns.try_join_next().is_some() {}
        // Answers are written in pieces, which Nagle would hold back.
        let _ = stream.set_nodelay(true);
        keepalive(&stream);
        let (lean, grpc, stop) = (lean.clone(), grpc.clone(), stop.clone());
        conns.spawn(async move {
            match first_bytes(&stream).await {
                Ok(b) if b == MAGIC => lean_server::ended(peer, lean.serve(stream, stop).await),
                Ok(_) => {
                    let _ = grpc.send(Ok(stream)).await;
                }
                Err(e) => debug!(%peer, error = %e, "connection sent nothing"),
            }
        });
    }
    drop(grpc);
    // Idle connections saw `stop` and ended; one stuck mid-frame is cut.
    let grace = tokio::time::sleep(LEAN_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { return },
            () = &mut grace => break,
        }
    }
    conns.shutdown().await;
}

/// Probes an idle connection, so one whose peer vanished (a host lost,
/// no goodbye) ends instead of holding what serves it for ever.
fn keepalive(stream: &TcpStream) {
    let probes = socket2::TcpKeepalive::new()
        .with_time(settings::KEEPALIVE_IDLE)
        .with_interval(settings::KEEPALIVE_PROBE_EVERY)
        .with_retries(settings::KEEPALIVE_PROBES);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&probes) {
        debug!(error = %e, "setting TCP keep-alive failed");
    }
}

/// The first four bytes the client sent, still unread.
async fn first_bytes(stream: &TcpStream) -> io::Result<[u8; 4]> {
    let mut b = [0u8; 4];
    tokio::time::timeout(settings::FIRST_BYTES_TIMEOUT, async {
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
