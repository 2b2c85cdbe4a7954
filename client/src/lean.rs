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
use tessera_proto::lean;
use tonic::{
    body::BoxBody,
    codegen::{http, BoxFuture, Service, StdError},
    Status,
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
            let Some(message) = lean::grpc_message(&body) else {
                return Err(
                    Status::internal(format!("{path}: not one uncompressed gRPC message")).into(),
                );
            };
            let answer = conn
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .call(&path, &message)
                .map_err(|s| s as StdError)?;
            http::Response::builder()
                .header("content-type", "application/grpc")
                .body(tonic::body::boxed(Full::new(answer)))
                .map_err(Into::into)
        })
    }
}

impl Conn {
    /// Makes one call; the answer as a gRPC body, or the status it failed
    /// with.
    fn call(&mut self, path: &str, message: &[u8]) -> Result<Bytes, Box<Status>> {
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
    fn try_call(&mut self, path: &str, message: &[u8]) -> io::Result<Result<Bytes, Box<Status>>> {
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
        lean::encode_request(path, message, &mut self.out)?;
        let stream = self.stream.as_mut().expect("connected above");
        stream.get_mut().write_all(&self.out)?;
        if fresh {
            let mut hello = [0u8; lean::HELLO_LEN];
            stream.read_exact(&mut hello)?;
            lean::check_hello(&hello)?;
        }
        let mut head = [0u8; 4];
        stream.read_exact(&mut head)?;
        let mut frame = vec![0u8; lean::frame_len(head)?];
        stream.read_exact(&mut frame)?;
        let a = lean::decode_response(&frame)?;
        Ok(match a.failure() {
            None => Ok(lean::grpc_frame(a.message)),
            Some(status) => Err(Box::new(status)),
        })
    }
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
pub(crate) fn closed(s: &impl AsRawFd) -> bool {
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

#[cfg(test)]
mod tests {
    use std::{net::TcpListener, sync::mpsc, thread};

    use tessera_proto::errno;
    use tonic::Code;

    use super::*;

    /// What a fake service does with the one call of a connection.
    enum Then {
        /// Answers with the method path as the message, then hangs up.
        Answer,
        /// Fails the call with NotFound and ENOENT, then hangs up.
        Fail,
        /// Hangs up without an answer.
        CutOff,
    }

    /// Serves one connection per entry of `script`; each hang-up is
    /// reported on the returned channel once the socket is closed.
    fn fake_service(script: Vec<Then>) -> (String, mpsc::Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for then in script {
                let (mut s, _) = listener.accept().unwrap();
                let mut hello = [0u8; lean::HELLO_LEN];
                s.read_exact(&mut hello).unwrap();
                s.write_all(&lean::hello()).unwrap();
                let mut head = [0u8; 4];
                s.read_exact(&mut head).unwrap();
                let mut frame = vec![0u8; lean::frame_len(head).unwrap()];
                s.read_exact(&mut frame).unwrap();
                let (path, _) = lean::decode_request(&frame).unwrap();
                let answer = |code, errno, status| lean::Answer {
                    code,
                    errno,
                    status,
                    message: path.as_bytes(),
                };
                match then {
                    Then::Answer => s.write_all(&lean::encode_response(&answer(0, 0, ""))),
                    Then::Fail => s.write_all(&lean::encode_response(&answer(
                        Code::NotFound as u32,
                        libc::ENOENT as u32,
                        "no such name",
                    ))),
                    Then::CutOff => Ok(()),
                }
                .unwrap();
                drop(s);
                tx.send(()).unwrap();
            }
        });
        (addr, rx)
    }

    fn conn(addr: &str) -> Conn {
        Conn {
            addr: addr.to_string(),
            stream: None,
            out: Vec::new(),
        }
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_before_the_call() {
        let (addr, closed) = fake_service(vec![Then::Answer, Then::Answer]);
        let mut c = conn(&addr);
        assert_eq!(c.call("/x/A", b"").unwrap(), lean::grpc_frame(b"/x/A"));
        closed.recv().unwrap();
        // The service hung up (as a restarted one would have): the call
        // must not fail on the dead socket.
        assert_eq!(c.call("/x/B", b"").unwrap(), lean::grpc_frame(b"/x/B"));
    }

    #[test]
    fn a_call_cut_off_fails_as_unreachable_and_the_next_reconnects() {
        let (addr, closed) = fake_service(vec![Then::CutOff, Then::Fail]);
        let mut c = conn(&addr);
        let e = c.call("/x/A", b"").unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
        assert!(e.message().contains(&addr), "{e}");
        closed.recv().unwrap();
        // The service's failure comes back as its status, errno included.
        let e = c.call("/x/B", b"").unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "no such name");
        assert_eq!(errno::of(&e), Some(libc::ENOENT));
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = conn(&addr).call("/x/A", b"").unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{e}");
    }
}
