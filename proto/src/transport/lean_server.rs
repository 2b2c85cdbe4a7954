//! The serving half of lean RPC: reading requests and writing answers,
//! either on tasks of the runtime ([`OnTasks`], for handlers that hand
//! their blocking work on, like a storage node's) or one thread per
//! connection ([`OnThreads`], for handlers that block: the metadata
//! service's store transactions then never run on a runtime worker, and a
//! call costs no hand-off between threads).

use std::{future::Future, io, sync::Arc};

use bytes::Bytes;
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::{oneshot, watch, Semaphore},
};
use tonic::Status;
use tracing::{debug, warn};

use super::{
    frames::{read_body, read_frame_blocking, write_parts, write_parts_blocking},
    settings::LEAN_MAX_THREADS,
};
use crate::{
    errno,
    lean::{decode_request, frame_len, hello, hello_version, response_head, HELLO_LEN, VERSION},
};

/// Answers the calls of lean connections served on tasks (each connection
/// has its own clone).
pub trait Handler: Clone + Send + Sync + 'static {
    /// Answers a call of the method `path` (`/tessera.v1.Node/PutShard`)
    /// with the protobuf `message`.
    fn call(&mut self, path: &str, message: Bytes) -> impl Future<Output = Reply> + Send;
}

/// Answers the calls of lean connections served on threads of their own.
pub trait BlockingHandler: Send + Sync + 'static {
    /// [`Handler::call`], on the connection's thread.
    fn call(&self, path: &str, message: Bytes) -> Reply;
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
    /// `tag` (see [`crate::lean::message_with_bytes_head`]).
    pub fn message_with_bytes(m: &impl Message, tag: u32, payload: Bytes) -> Reply {
        Reply::ok(
            crate::lean::message_with_bytes_head(m, tag, payload.len()),
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

    /// A call of a method this service does not have.
    pub fn unknown_method(service: &str, path: &str) -> Reply {
        Reply::status(&Status::unimplemented(format!(
            "the {service} has no method {path:?}"
        )))
    }
}

/// Checks a client's hello and answers with ours (before refusing a
/// version we do not speak, so the client learns which one we do).
fn greet(hello_in: &[u8; HELLO_LEN]) -> io::Result<[u8; HELLO_LEN]> {
    hello_version(hello_in)?;
    Ok(hello())
}

fn check_version(hello_in: &[u8; HELLO_LEN]) -> io::Result<()> {
    match hello_version(hello_in)? {
        VERSION => Ok(()),
        v => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("client speaks lean RPC version {v}"),
        )),
    }
}

/// A way of serving lean connections; see [`OnTasks`] and [`OnThreads`].
pub trait ServeLean: Clone + Send + Sync + 'static {
    /// Serves one connection, calls one at a time, until the client closes
    /// it, sends something that is not lean RPC, or `stop` turns true
    /// between two calls.
    fn serve(
        &self,
        stream: TcpStream,
        stop: watch::Receiver<bool>,
    ) -> impl Future<Output = io::Result<()>> + Send;
}

/// Lean connections served on tasks of the runtime.
#[derive(Clone)]
pub struct OnTasks<H>(pub H);

impl<H: Handler> ServeLean for OnTasks<H> {
    async fn serve(&self, stream: TcpStream, mut stop: watch::Receiver<bool>) -> io::Result<()> {
        let mut handler = self.0.clone();
        let mut stream = BufReader::new(stream);
        let mut hello_in = [0u8; HELLO_LEN];
        stream.read_exact(&mut hello_in).await?;
        stream.get_mut().write_all(&greet(&hello_in)?).await?;
        check_version(&hello_in)?;
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
            let frame = read_body(&mut stream, frame_len(head)?).await?;
            let (path, message) = decode_request(&frame)?;
            let message = frame.slice(frame.len() - message.len()..);
            let reply = handler.call(path, message).await;
            write_parts(stream.get_mut(), &reply.head, reply.payload).await?;
        }
    }
}

/// Lean connections served on threads of their own, at most
/// [`LEAN_MAX_THREADS`] at once.
pub struct OnThreads<H> {
    handler: Arc<H>,
    slots: Arc<Semaphore>,
}

impl<H> Clone for OnThreads<H> {
    fn clone(&self) -> Self {
        OnThreads {
            handler: self.handler.clone(),
            slots: self.slots.clone(),
        }
    }
}

impl<H: BlockingHandler> OnThreads<H> {
    pub fn new(handler: Arc<H>) -> Self {
        OnThreads {
            handler,
            slots: Arc::new(Semaphore::new(LEAN_MAX_THREADS)),
        }
    }
}

impl<H: BlockingHandler> ServeLean for OnThreads<H> {
    async fn serve(&self, stream: TcpStream, mut stop: watch::Receiver<bool>) -> io::Result<()> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            warn!(
                limit = LEAN_MAX_THREADS,
                "too many lean RPC connections; refusing one"
            );
            return Ok(());
        };
        let stream = stream.into_std()?;
        stream.set_nonblocking(false)?;
        // Shut down at `stop` to end a thread waiting for the next call.
        let ender = stream.try_clone()?;
        let (done, finished) = oneshot::channel();
        let handler = self.handler.clone();
        std::thread::Builder::new()
            .name("lean-conn".into())
            .spawn(move || {
                let r = serve_blocking(stream, &*handler);
                drop(slot);
                let _ = done.send(r);
            })?;
        tokio::pin!(finished);
        tokio::select! {
            r = &mut finished => return r.unwrap_or(Ok(())),
            _ = stop.changed() => {}
        }
        let _ = ender.shutdown(std::net::Shutdown::Read);
        finished.await.unwrap_or(Ok(()))
    }
}

fn serve_blocking(stream: std::net::TcpStream, handler: &impl BlockingHandler) -> io::Result<()> {
    let mut reader = io::BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut hello_in = [0u8; HELLO_LEN];
    io::Read::read_exact(&mut reader, &mut hello_in)?;
    io::Write::write_all(&mut writer, &greet(&hello_in)?)?;
    check_version(&hello_in)?;
    while let Some(frame) = read_frame_blocking(&mut reader)? {
        let (path, message) = decode_request(&frame)?;
        let message = frame.slice(frame.len() - message.len()..);
        let reply = handler.call(path, message);
        write_parts_blocking(&mut writer, &reply.head, &reply.payload)?;
    }
    Ok(())
}

/// Logs how a lean connection ended, if not cleanly.
pub(super) fn ended(peer: std::net::SocketAddr, r: io::Result<()>) {
    if let Err(e) = r {
        debug!(%peer, error = %e, "lean RPC connection ended");
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
            let a = crate::lean::decode_response(&r.head[4..]).unwrap();
            let back = a.failure().unwrap();
            assert_eq!((back.code(), back.message()), (s.code(), s.message()));
            assert_eq!(errno::of(&back), errno::of(&s));
        }
        let ok = Reply::ok(b"m".to_vec(), Bytes::from_static(b"!"));
        let mut frame = ok.head[4..].to_vec();
        frame.extend_from_slice(&ok.payload);
        let a = crate::lean::decode_response(&frame).unwrap();
        assert!(a.failure().is_none());
        assert_eq!(a.message, b"m!");
    }
}
