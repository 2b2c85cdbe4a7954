//! The serving half of lean RPC. One listener takes both protocols: a
//! connection whose first four bytes are the lean hello's is served here,
//! one call at a time, by a [`Handler`]; any other goes to tonic.

use std::{future::Future, io, time::Duration};

use bytes::Bytes;
use futures::Stream;
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::{mpsc, watch},
    task::{JoinHandle, JoinSet},
};
use tonic::Status;
use tracing::{debug, warn};

use super::{decode_request, hello, hello_version, io::read_body, response_head, MAGIC, VERSION};
use crate::errno;

/// How long a new connection may take to send its first four bytes.
const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers the calls of one lean connection (each connection has its own
/// clone).
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers a call of the method `path` (`/tessera.v1.Node/PutShard`)
    /// with the protobuf `message`.
    fn call(&mut self, path: &str, message: Bytes) -> impl Future<Output = Reply> + Send;
}

/// One answer, ready to send: the frame up to `payload`, then `payload`,
/// which is sent from where it is.
pub struct Reply {
    head: Vec<u8>,
    payload: Bytes,
}

impl Reply {
    /// Success, with `m` as the answer.
    pub fn message(m: &impl Message) -> Reply {
        Reply::ok(m.encode_to_vec(), Bytes::new())
    }

    /// Success, with `m` as the answer and `payload` as its `bytes` field
    /// `tag` (see [`super::message_with_bytes_head`]).
    pub fn message_with_bytes(m: &impl Message, tag: u32, payload: Bytes) -> Reply {
        Reply::ok(
            super::message_with_bytes_head(m, tag, payload.len()),
            payload,
        )
    }

    /// Success, with the answer `message` then `payload`.
    pub fn ok(message: Vec<u8>, payload: Bytes) -> Reply {
        let mut head = response_head(0, 0, "", message.len() + payload.len());
        head.extend_from_slice(&message);
        Reply { head, payload }
    }

    /// The call failed with `s` (and its errno, when it carries one).
    pub fn status(s: &Status) -> Reply {
        let errno = errno::of(s)
            .and_then(|e| u32::try_from(e).ok())
            .unwrap_or(0);
        Reply {
            head: response_head(s.code() as u32, errno, s.message(), 0),
            payload: Bytes::new(),
        }
    }
}

/// Accepts connections on `listener` until `stop` turns true. Lean ones
/// are served here; the rest come out of the returned stream, for tonic.
/// The returned task ends once every lean connection has ended: at `stop`
/// they end between calls, and a call still running is cut off.
pub fn accept<H: Handler>(
    listener: TcpListener,
    handler: H,
    stop: watch::Receiver<bool>,
) -> (impl Stream<Item = io::Result<TcpStream>>, JoinHandle<()>) {
    let (grpc_tx, grpc_rx) = mpsc::channel::<io::Result<TcpStream>>(16);
    let task = tokio::spawn(async move {
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
            let (handler, grpc_tx, stop) = (handler.clone(), grpc_tx.clone(), stop.clone());
            conns.spawn(async move {
                match first_bytes(&stream).await {
                    Ok(b) if b == MAGIC => {
                        if let Err(e) = serve(stream, handler, stop).await {
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
        drop(grpc_tx);
        // Idle connections saw `stop` and ended; one stuck mid-frame is cut.
        let grace = tokio::time::sleep(Duration::from_millis(200));
        tokio::pin!(grace);
        loop {
            tokio::select! {
                next = conns.join_next() => if next.is_none() { return },
                () = &mut grace => break,
            }
        }
        conns.shutdown().await;
    });
    let incoming =
        futures::stream::unfold(
            grpc_rx,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        );
    (incoming, task)
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
async fn serve<H: Handler>(
    stream: TcpStream,
    mut handler: H,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut stream = BufReader::new(stream);
    let mut hello_in = [0u8; super::HELLO_LEN];
    stream.read_exact(&mut hello_in).await?;
    let version = hello_version(&hello_in)?;
    // Answered before checking: the client learns which version we speak.
    stream.get_mut().write_all(&hello()).await?;
    if version != VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("client speaks lean RPC version {version}"),
        ));
    }
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
        let frame = read_body(&mut stream, super::frame_len(head)?).await?;
        let (path, message) = decode_request(&frame)?;
        let message = frame.slice(frame.len() - message.len()..);
        let reply = handler.call(path, message).await;
        super::io::write_parts(stream.get_mut(), &reply.head, reply.payload).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_crosses_with_its_code_and_errno() {
        for s in [
            errno::status(tonic::Code::NotFound, 2, "no such name"),
            Status::invalid_argument("malformed PutShardRequest"),
        ] {
            let r = Reply::status(&s);
            let a = super::super::decode_response(&r.head[4..]).unwrap();
            let back = a.failure().unwrap();
            assert_eq!((back.code(), back.message()), (s.code(), s.message()));
            assert_eq!(errno::of(&back), errno::of(&s));
        }
        let ok = Reply::ok(b"m".to_vec(), Bytes::from_static(b"!"));
        let mut frame = ok.head[4..].to_vec();
        frame.extend_from_slice(&ok.payload);
        let a = super::super::decode_response(&frame).unwrap();
        assert!(a.failure().is_none());
        assert_eq!(a.message, b"m!");
    }
}
