//! The client half of lean RPC (see `tessera_proto::lean`): a transport
//! for the generated gRPC client that makes each call with one write and
//! one blocking read on its own socket.
//!
//! Blocking is the point: the calling thread is the one that waits for
//! the answer, with no runtime or connection task in between. So a
//! `LeanChannel` belongs on a thread that has nothing else to do while a
//! call runs (a FUSE worker thread, see `local`), never on a shared
//! runtime's worker.

use std::{
    io::{self, BufReader, Read, Write},
    net::{TcpStream, ToSocketAddrs},
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tessera_proto::{errno, lean};
use tonic::{
    body::BoxBody,
    codegen::{http, BoxFuture, Service, StdError},
    Code, Status,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A call that gets no answer in this long fails (as unreachable).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct LeanChannel {
    conn: Arc<Mutex<Conn>>,
}

struct Conn {
    addr: String,
    /// Made on first use, and again after a call fails on it.
    stream: Option<BufReader<TcpStream>>,
    out: Vec<u8>,
}

impl LeanChannel {
    /// A channel to `addr` (`host:port`); it connects on its first call.
    pub fn new(addr: &str) -> LeanChannel {
        LeanChannel {
            conn: Arc::new(Mutex::new(Conn {
                addr: addr.to_string(),
                stream: None,
                out: Vec::new(),
            })),
        }
    }
}

impl Service<http::Request<BoxBody>> for LeanChannel {
    type Response = http::Response<BoxBody>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<BoxBody>) -> Self::Future {
        let conn = self.conn.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let body = request.into_body().collect().await?.to_bytes();
            let message = match body.get(..5) {
                Some(&[0, a, b, c, d])
                    if body.len() - 5 == u32::from_be_bytes([a, b, c, d]) as usize =>
                {
                    body.slice(5..)
                }
                _ => {
                    return Err(Status::internal(format!(
                        "{path}: not one uncompressed gRPC message"
                    ))
                    .into())
                }
            };
            let answer = conn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .call(&path, &message)
                .map_err(|s| s as StdError)?;
            let mut framed = Vec::with_capacity(5 + answer.len());
            framed.push(0);
            framed.extend_from_slice(&(answer.len() as u32).to_be_bytes());
            framed.extend_from_slice(&answer);
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(tonic::body::boxed(Full::new(Bytes::from(framed))))
                .map_err(Into::into)
        })
    }
}

impl Conn {
    /// Makes one call; the answer's message, or the status it failed with.
    fn call(&mut self, path: &str, message: &[u8]) -> Result<Vec<u8>, Box<Status>> {
        match self.try_call(path, message) {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(status)) => Err(status),
            Err(e) => {
                // The next call starts on a new connection.
                self.stream = None;
                Err(Box::new(Status::unavailable(format!(
                    "metadata service at {}: {e}",
                    self.addr
                ))))
            }
        }
    }

    /// An `Err` is a failure of the connection; `Ok(Err)` the service's
    /// answer that the call failed.
    fn try_call(&mut self, path: &str, message: &[u8]) -> io::Result<Result<Vec<u8>, Box<Status>>> {
        if self
            .stream
            .as_ref()
            .is_some_and(|s| !s.buffer().is_empty() || closed(s.get_ref()))
        {
            // Closed while idle (the service restarted, say): nothing was
            // sent on it yet, so the call goes out on a new one.
            self.stream = None;
        }
        self.out.clear();
        let fresh = self.stream.is_none();
        if fresh {
            self.stream = Some(BufReader::new(connect(&self.addr)?));
            self.out.extend_from_slice(&lean::hello());
        }
        lean::encode_request(path, message, &mut self.out).map_err(invalid)?;
        let stream = self.stream.as_mut().expect("connected above");
        stream.get_mut().write_all(&self.out)?;
        if fresh {
            let mut hello = [0u8; lean::HELLO_LEN];
            stream.read_exact(&mut hello)?;
            let version = lean::hello_version(&hello).map_err(invalid)?;
            if version != lean::VERSION {
                return Err(invalid(format!(
                    "the service speaks lean RPC version {version}, this client {}",
                    lean::VERSION
                )));
            }
        }
        let mut head = [0u8; 4];
        stream.read_exact(&mut head)?;
        let mut frame = vec![0u8; lean::frame_len(head).map_err(invalid)?];
        stream.read_exact(&mut frame)?;
        let a = lean::decode_response(&frame).map_err(invalid)?;
        Ok(match a.code {
            0 => Ok(a.message.to_vec()),
            code => {
                let code = Code::from(code as i32);
                Err(Box::new(match i32::try_from(a.errno) {
                    Ok(e) if e != 0 => errno::status(code, e, a.status),
                    _ => Status::new(code, a.status),
                }))
            }
        })
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, format!("{addr} names no address"));
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(CALL_TIMEOUT))?;
                s.set_write_timeout(Some(CALL_TIMEOUT))?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Whether the peer closed `s` (or sent bytes nobody asked for) while it
/// was idle. One non-blocking peek: no bytes waiting is the healthy case.
fn closed(s: &TcpStream) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a live local, on a socket we own.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
}
