//! The serving half of lean RPC: reading requests and writing answers,
//! either on tasks of the runtime ([`OnTasks`], for handlers that hand
//! their blocking work on, like a storage node's) or one thread per
//! connection ([`OnThreads`], for handlers that block: the metadata
//! service's store transactions then never run on a runtime worker, and a
//! call costs no hand-off between threads).

use std::{future::Future, io, sync::Arc, time::Duration};

use bytes::Bytes;
use prost::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    sync::{oneshot, watch, Semaphore},
};
use tonic::Status;
use tracing::debug;

use super::{
    frames::{read_body, read_frame_blocking, write_parts, write_parts_blocking},
    settings::{LEAN_CALL_TIMEOUT, LEAN_MAX_THREADS, LEAN_THREAD_IDLE},
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

/// Lean connections served on threads of their own while they make calls:
/// at most `max_threads` at once (a call past that waits for a thread); a
/// connection idle for `idle` lets its thread go and waits on the runtime.
pub struct OnThreads<H> {
    handler: Arc<H>,
    slots: Arc<Semaphore>,
    max_threads: usize,
    idle: Duration,
}

impl<H> Clone for OnThreads<H> {
    fn clone(&self) -> Self {
        OnThreads {
            handler: self.handler.clone(),
            slots: self.slots.clone(),
            max_threads: self.max_threads,
            idle: self.idle,
        }
    }
}

impl<H: BlockingHandler> OnThreads<H> {
    /// With [`LEAN_MAX_THREADS`] and [`LEAN_THREAD_IDLE`].
    pub fn new(handler: Arc<H>) -> Self {
        Self::with_limits(handler, LEAN_MAX_THREADS, LEAN_THREAD_IDLE)
    }

    pub fn with_limits(handler: Arc<H>, max_threads: usize, idle: Duration) -> Self {
        OnThreads {
            handler,
            slots: Arc::new(Semaphore::new(max_threads)),
            max_threads,
            idle,
        }
    }
}

impl<H: BlockingHandler> ServeLean for OnThreads<H> {
    async fn serve(&self, stream: TcpStream, mut stop: watch::Receiver<bool>) -> io::Result<()> {
        let mut stream = stream;
        let mut greeted = false;
        loop {
            // Between bursts of calls the connection waits here, on the
            // runtime, not on a thread.
            tokio::select! {
                r = stream.readable() => r?,
                _ = stop.changed() => return Ok(()),
            }
            // Past `max_threads` connections in use, a call waits for a
            // thread rather than fail.
            let slot = match self.slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    debug!(
                        limit = self.max_threads,
                        "every lean RPC thread is busy; waiting"
                    );
                    tokio::select! {
                        s = self.slots.clone().acquire_owned() => s.expect("the semaphore is never closed"),
                        _ = stop.changed() => return Ok(()),
                    }
                }
            };
            let conn = stream.into_std()?;
            conn.set_nonblocking(false)?;
            // Shut down at `stop` to end a thread waiting for the next call.
            let ender = conn.try_clone()?;
            let (done, finished) = oneshot::channel();
            let (handler, idle) = (self.handler.clone(), self.idle);
            std::thread::Builder::new()
                .name("lean-conn".into())
                .spawn(move || {
                    let r = serve_until_idle(conn, &*handler, greeted, idle);
                    drop(slot);
                    let _ = done.send(r);
                })?;
            tokio::pin!(finished);
            let outcome = tokio::select! {
                r = &mut finished => r,
                _ = stop.changed() => {
                    let _ = ender.shutdown(std::net::Shutdown::Read);
                    finished.await
                }
            };
            match outcome {
                Ok(Ok(Some(idle))) => {
                    idle.set_nonblocking(true)?;
                    stream = TcpStream::from_std(idle)?;
                    greeted = true;
                }
                Ok(Ok(None)) | Err(_) => return Ok(()),
                Ok(Err(e)) => return Err(e),
            }
        }
    }
}

/// Serves calls on this thread until the client closes the connection
/// (`None`) or sends nothing for `idle` (the connection, with nothing of it
/// read, to wait elsewhere).
fn serve_until_idle(
    stream: std::net::TcpStream,
    handler: &impl BlockingHandler,
    greeted: bool,
    idle: Duration,
) -> io::Result<Option<std::net::TcpStream>> {
    // Waiting for a call longer than `idle` hands the connection back; a
    // call's own bytes must come within it too (a sender that stalls
    // mid-call is cut off).
    stream.set_read_timeout(Some(idle))?;
    stream.set_write_timeout(Some(LEAN_CALL_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = io::BufReader::new(stream);
    if !greeted {
        let mut hello_in = [0u8; HELLO_LEN];
        io::Read::read_exact(&mut reader, &mut hello_in)?;
        io::Write::write_all(&mut writer, &greet(&hello_in)?)?;
        check_version(&hello_in)?;
    }
    loop {
        match io::BufRead::fill_buf(&mut reader) {
            Ok([]) => return Ok(None),
            Ok(_) => {}
            // Nothing came: the buffer is empty, nothing is lost.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(Some(reader.into_inner()));
            }
            Err(e) => return Err(e),
        }
        let Some(frame) = read_frame_blocking(&mut reader)? else {
            return Ok(None);
        };
        let (path, message) = decode_request(&frame)?;
        let message = frame.slice(frame.len() - message.len()..);
        let reply = handler.call(path, message);
        write_parts_blocking(&mut writer, &reply.head, &reply.payload)?;
    }
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
    use crate::transport::lean_client::{BlockingLeanClient, Retry};

    /// Echoes the method path back.
    struct Echo;

    impl BlockingHandler for Echo {
        fn call(&self, path: &str, _: Bytes) -> Reply {
            Reply::ok(path.as_bytes().to_vec(), Bytes::new())
        }
    }

    /// A connection that stops calling lets its thread go: with one thread
    /// for the whole service, two connections take turns, and the first
    /// is served again when it calls again. A call while the thread is
    /// taken waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_hold_no_thread() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let lean = OnThreads::with_limits(Arc::new(Echo), 1, Duration::from_millis(100));
        let grpc = crate::transport::grpc::server().add_routes(Default::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(crate::transport::serve(listener, grpc, lean, async move {
            let _ = stopped.await;
        }));
        let calls = tokio::task::spawn_blocking(move || {
            let (a, b) = (
                BlockingLeanClient::new(&addr),
                BlockingLeanClient::new(&addr),
            );
            let call = |c: &BlockingLeanClient, path: &str| {
                let answer = c.call(path, b"", Retry::Once).expect("an answer");
                answer.map(|m| m.to_vec()).map_err(|s| s.to_string())
            };
            assert_eq!(call(&a, "/a/1").unwrap(), b"/a/1");
            std::thread::sleep(Duration::from_millis(400));
            assert_eq!(call(&b, "/b/1").unwrap(), b"/b/1", "a kept its thread");
            std::thread::sleep(Duration::from_millis(400));
            assert_eq!(call(&a, "/a/2").unwrap(), b"/a/2");
            // b's connection still holds the thread: this call waits.
            let start = std::time::Instant::now();
            assert_eq!(call(&b, "/b/2").unwrap(), b"/b/2");
            assert_eq!(call(&a, "/a/3").unwrap(), b"/a/3");
            assert!(
                start.elapsed() >= Duration::from_millis(90),
                "two threads served at once"
            );
        });
        calls.await.unwrap();
        stop.send(()).unwrap();
        served.await.unwrap().unwrap();
    }

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
