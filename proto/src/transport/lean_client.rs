//! The calling half of lean RPC, once for both ways of waiting: a
//! [`LeanClient`] for tasks on a runtime (a mount's shard traffic) and a
//! [`BlockingLeanClient`] for threads that have nothing else to do while a
//! call runs (a FUSE worker thread's calls on names: the thread that waits
//! is the one that reads the answer, with no runtime in between).
//!
//! Both keep idle connections in a pool, peek one before reuse (a socket
//! the service closed meanwhile, say by a restart, is replaced before the
//! call goes out), send the hello on a new connection and check the
//! peer's, and read answers the same way (`frames.rs`, [`crate::lean`]).

use std::{
    io::{self, BufReader, Write},
    net::ToSocketAddrs,
    os::fd::{AsRawFd, RawFd},
    sync::Mutex,
    time::Duration,
};

use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tonic::Status;

use super::{
    frames::{read_frame, read_frame_blocking, write_parts, write_parts_blocking},
    settings::{CONNECT_TIMEOUT, LEAN_CALL_TIMEOUT, LEAN_IDLE_KEPT},
};
use crate::lean;

/// What a call brings back: the answer's message, or the status the call
/// failed with on the service.
pub type Answer = Result<Bytes, Status>;

/// Why a lean call brought no answer back.
#[derive(Debug)]
pub enum CallError {
    /// The peer does not speak lean RPC version 1 (it hung up at the
    /// hello, or named another version).
    NotLean(String),
    /// The connection failed; the call may or may not have been applied.
    Io(io::Error),
    /// No connection could be made: nothing was sent, and the call may go
    /// to another peer.
    Unsent(io::Error),
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        CallError::Io(e)
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotLean(why) => write!(f, "no lean RPC: {why}"),
            CallError::Io(e) => e.fmt(f),
            CallError::Unsent(e) => write!(f, "cannot connect: {e}"),
        }
    }
}

/// Whether a call may be sent again after its connection broke: only if
/// applying it twice is the same as once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Tried once more on a new connection if a pooled one broke.
    Idempotent,
    /// Never sent twice (a create may have been applied).
    Once,
}

/// The bytes that go out before a call's payload: the hello on a new
/// connection, the frame head and the message.
fn request(fresh: bool, path: &str, message: &[u8], payload_len: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(lean::HELLO_LEN + 64 + message.len());
    if fresh {
        out.extend_from_slice(&lean::hello());
    }
    lean::request_head(path, message.len() + payload_len, &mut out)?;
    out.extend_from_slice(message);
    Ok(out)
}

/// The answer a response frame carries.
fn answer(frame: Bytes) -> io::Result<Answer> {
    let a = lean::decode_response(&frame)?;
    Ok(match a.failure() {
        None => Ok(frame.slice(frame.len() - a.message.len()..)),
        Some(status) => Err(status),
    })
}

/// The peer's hello, read on a new connection: anything else means it
/// does not speak lean RPC. A peer that sends nothing in time is not
/// answering at all, which says nothing about what it speaks.
fn check_hello(got: io::Result<[u8; lean::HELLO_LEN]>) -> Result<(), CallError> {
    // A gRPC-only peer hangs up on bytes that are not HTTP/2.
    let hello = got.map_err(|e| match timed_out(&e) {
        true => CallError::Io(e),
        false => CallError::NotLean(format!("no lean hello: {e}")),
    })?;
    lean::check_hello(&hello).map_err(|e| CallError::NotLean(e.to_string()))
}

/// Whether `e` is a socket's timeout running out (a blocking read or
/// write reports it as `WouldBlock`).
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

fn ended() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the peer closed the connection",
    )
}

/// A connection a pool keeps: its socket can be peeked.
trait Pooled {
    fn fd(&self) -> RawFd;
}

impl Pooled for tokio::net::TcpStream {
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
}

impl Pooled for BufReader<std::net::TcpStream> {
    fn fd(&self) -> RawFd {
        self.get_ref().as_raw_fd()
    }
}

/// Idle connections to one peer.
struct Idle<C> {
    conns: Mutex<Vec<C>>,
}

impl<C: Pooled> Idle<C> {
    fn new() -> Self {
        Idle {
            conns: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection the peer has not closed, if there is one.
    fn take(&self) -> Option<C> {
        let mut conns = self.conns.lock().expect("lean pool lock");
        while let Some(c) = conns.pop() {
            if !closed(c.fd()) {
                return Some(c);
            }
        }
        None
    }

    fn put(&self, c: C) {
        let mut conns = self.conns.lock().expect("lean pool lock");
        if conns.len() < LEAN_IDLE_KEPT {
            conns.push(c);
        }
    }
}

/// Whether the peer closed `s` (or sent bytes nobody asked for) while it
/// was idle. One non-blocking peek: no bytes waiting is the healthy case.
fn closed(fd: RawFd) -> bool {
    let mut b = 0u8;
    // SAFETY: a one-byte peek into a live local, on a socket we own.
    let n = unsafe {
        libc::recv(
            fd,
            (&mut b as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock
}

/// Lean RPC calls to one peer from tasks on a runtime.
pub struct LeanClient {
    addr: String,
    idle: Idle<tokio::net::TcpStream>,
}

impl LeanClient {
    /// A client of the peer at `addr` (`host:port`); it connects on first use.
    pub fn new(addr: &str) -> Self {
        LeanClient {
            addr: addr.to_string(),
            idle: Idle::new(),
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Calls `path` with `message` followed by `payload` (sent from where
    /// it is, see [`lean::message_with_bytes_head`]).
    pub async fn call(
        &self,
        path: &str,
        message: &[u8],
        payload: &Bytes,
        retry: Retry,
    ) -> Result<Answer, CallError> {
        let pooled = self.idle.take();
        let again = pooled.is_some() && retry == Retry::Idempotent;
        match self.call_on(pooled, path, message, payload).await {
            Err(CallError::Io(e)) if again => {
                tracing::debug!(peer = %self.addr, error = %e, "pooled connection broke; retrying");
                self.call_on(None, path, message, payload).await
            }
            r => r,
        }
    }

    async fn call_on(
        &self,
        pooled: Option<tokio::net::TcpStream>,
        path: &str,
        message: &[u8],
        payload: &Bytes,
    ) -> Result<Answer, CallError> {
        let fresh = pooled.is_none();
        let mut stream = match pooled {
            Some(s) => s,
            None => self.connect().await.map_err(CallError::Unsent)?,
        };
        let head = request(fresh, path, message, payload.len())?;
        write_parts(&mut stream, &head, payload.clone()).await?;
        if fresh {
            let mut hello = [0u8; lean::HELLO_LEN];
            check_hello(stream.read_exact(&mut hello).await.map(|_| hello))?;
        }
        let frame = read_frame(&mut stream).await?.ok_or_else(ended)?;
        let a = answer(frame)?;
        self.idle.put(stream);
        Ok(a)
    }

    async fn connect(&self) -> io::Result<tokio::net::TcpStream> {
        let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&self.addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        Ok(s)
    }
}

/// Lean RPC calls to one peer that block the calling thread.
pub struct BlockingLeanClient {
    addr: String,
    idle: Idle<BufReader<std::net::TcpStream>>,
    /// Longest a send or a wait for answer bytes may block.
    timeout: Duration,
}

impl BlockingLeanClient {
    /// A client of the peer at `addr` (`host:port`); it connects on first use.
    pub fn new(addr: &str) -> Self {
        Self::with_timeout(addr, LEAN_CALL_TIMEOUT)
    }

    /// A client whose calls give up when the peer sends nothing (or takes
    /// nothing) for `timeout`.
    pub fn with_timeout(addr: &str, timeout: Duration) -> Self {
        BlockingLeanClient {
            addr: addr.to_string(),
            idle: Idle::new(),
            timeout,
        }
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// [`LeanClient::call`], on this thread. A call that timed out is not
    /// tried again: the peer is slow or gone, not the pooled connection.
    pub fn call(&self, path: &str, message: &[u8], retry: Retry) -> Result<Answer, CallError> {
        let pooled = self.idle.take();
        let again = pooled.is_some() && retry == Retry::Idempotent;
        match self.call_on(pooled, path, message) {
            Err(CallError::Io(e)) if again && !timed_out(&e) => {
                tracing::debug!(peer = %self.addr, error = %e, "pooled connection broke; retrying");
                self.call_on(None, path, message)
            }
            r => r,
        }
    }

    fn call_on(
        &self,
        pooled: Option<BufReader<std::net::TcpStream>>,
        path: &str,
        message: &[u8],
    ) -> Result<Answer, CallError> {
        let fresh = pooled.is_none();
        let mut stream = match pooled {
            Some(s) => s,
            None => BufReader::new(self.connect().map_err(CallError::Unsent)?),
        };
        let head = request(fresh, path, message, 0)?;
        write_parts_blocking(stream.get_mut(), &head, &[])?;
        stream.get_mut().flush()?;
        if fresh {
            let mut hello = [0u8; lean::HELLO_LEN];
            check_hello(io::Read::read_exact(&mut stream, &mut hello).map(|()| hello))?;
        }
        let frame = read_frame_blocking(&mut stream)?.ok_or_else(ended)?;
        let a = answer(frame)?;
        if stream.buffer().is_empty() {
            self.idle.put(stream);
        }
        Ok(a)
    }

    fn connect(&self) -> io::Result<std::net::TcpStream> {
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("{} names no address", self.addr),
        );
        for a in self.addr.to_socket_addrs()? {
            match std::net::TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(self.timeout))?;
                    s.set_write_timeout(Some(self.timeout))?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpListener,
        sync::mpsc,
        thread,
    };

    use tonic::Code;

    use super::*;
    use crate::errno;

    /// What a fake service does with the one call of a connection.
    enum Then {
        /// Answers with the method path as the message, then hangs up.
        Answer,
        /// Fails the call with NotFound and ENOENT, then hangs up.
        Fail,
        /// Hangs up without an answer.
        CutOff,
        /// Hangs up at the hello, as a service without lean RPC does.
        NoHello,
        /// Answers one call, then hangs up on the next one.
        AnswerThenCut,
        /// Reads the hello and sends nothing back (hangs up after 5 s).
        SilentHello,
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
                if matches!(then, Then::SilentHello) {
                    thread::sleep(Duration::from_secs(5));
                }
                if matches!(then, Then::NoHello | Then::SilentHello) {
                    drop(s);
                    tx.send(()).unwrap();
                    continue;
                }
                s.write_all(&lean::hello()).unwrap();
                let frame = read_frame_blocking(&mut s).unwrap().unwrap();
                let (path, _) = lean::decode_request(&frame).unwrap();
                let answer = |code, errno, status| lean::Answer {
                    code,
                    errno,
                    status,
                    message: path.as_bytes(),
                };
                match then {
                    Then::Answer => s.write_all(&lean::encode_response(&answer(0, 0, ""))),
                    Then::AnswerThenCut => {
                        s.write_all(&lean::encode_response(&answer(0, 0, "")))
                            .unwrap();
                        read_frame_blocking(&mut s).map(drop)
                    }
                    Then::Fail => s.write_all(&lean::encode_response(&answer(
                        Code::NotFound as u32,
                        libc::ENOENT as u32,
                        "no such name",
                    ))),
                    Then::CutOff | Then::NoHello | Then::SilentHello => Ok(()),
                }
                .unwrap();
                drop(s);
                tx.send(()).unwrap();
            }
        });
        (addr, rx)
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_before_the_call() {
        let (addr, closed) = fake_service(vec![Then::Answer, Then::Answer]);
        let c = BlockingLeanClient::new(&addr);
        let a = c.call("/x/A", b"", Retry::Once).unwrap().unwrap();
        assert_eq!(&a[..], b"/x/A");
        closed.recv().unwrap();
        // The service hung up (as a restarted one would have): the call
        // must not fail on the dead socket, even one never sent twice.
        let a = c.call("/x/B", b"", Retry::Once).unwrap().unwrap();
        assert_eq!(&a[..], b"/x/B");
    }

    #[test]
    fn a_call_cut_off_fails_and_the_next_reconnects() {
        let (addr, closed) = fake_service(vec![Then::CutOff, Then::Fail]);
        let c = BlockingLeanClient::new(&addr);
        assert!(matches!(
            c.call("/x/A", b"", Retry::Once),
            Err(CallError::Io(_))
        ));
        closed.recv().unwrap();
        // The service's failure comes back as its status, errno included.
        let e = c.call("/x/B", b"", Retry::Once).unwrap().unwrap_err();
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "no such name");
        assert_eq!(errno::of(&e), Some(libc::ENOENT));
    }

    #[test]
    fn a_blocking_call_to_a_peer_that_stops_answering_gives_up_once() {
        // A peer that answers one call, reads the next and never answers
        // it; then it counts the connections made to it meanwhile.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peer = thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut hello = [0u8; lean::HELLO_LEN];
            s.read_exact(&mut hello).unwrap();
            s.write_all(&lean::hello()).unwrap();
            read_frame_blocking(&mut s).unwrap().unwrap();
            let answer = lean::Answer {
                code: 0,
                errno: 0,
                status: "",
                message: b"A",
            };
            s.write_all(&lean::encode_response(&answer)).unwrap();
            read_frame_blocking(&mut s).unwrap().unwrap();
            thread::sleep(Duration::from_secs(1));
            listener.set_nonblocking(true).unwrap();
            std::iter::from_fn(|| listener.accept().ok()).count()
        });
        let c = BlockingLeanClient::with_timeout(&addr, Duration::from_millis(200));
        let a = c.call("/x/A", b"", Retry::Idempotent).unwrap().unwrap();
        assert_eq!(&a[..], b"A");
        let asked = std::time::Instant::now();
        let e = c.call("/x/B", b"", Retry::Idempotent);
        assert!(matches!(e, Err(CallError::Io(_))), "{e:?}");
        assert!(
            asked.elapsed() < Duration::from_secs(3),
            "{:?}",
            asked.elapsed()
        );
        // A timeout is the peer's, not the pooled connection's: the call
        // was not sent again on a new connection.
        assert_eq!(peer.join().unwrap(), 0, "the call was sent again");
    }

    #[test]
    fn a_peer_silent_at_the_hello_is_not_taken_for_one_without_lean_rpc() {
        let (addr, _closed) = fake_service(vec![Then::SilentHello]);
        let c = BlockingLeanClient::with_timeout(&addr, Duration::from_millis(200));
        let e = c.call("/x/A", b"", Retry::Idempotent);
        assert!(matches!(e, Err(CallError::Io(_))), "{e:?}");
    }

    #[test]
    fn nobody_listening_or_no_hello_is_told_apart() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let c = BlockingLeanClient::new(&addr);
        assert!(matches!(
            c.call("/x/A", b"", Retry::Once),
            Err(CallError::Unsent(_))
        ));
        let (addr, _closed) = fake_service(vec![Then::NoHello]);
        let c = BlockingLeanClient::new(&addr);
        assert!(matches!(
            c.call("/x/A", b"", Retry::Once),
            Err(CallError::NotLean(_))
        ));
    }

    #[tokio::test]
    async fn a_pooled_connection_cut_mid_call_is_retried_only_if_idempotent() {
        let (addr, closed) =
            fake_service(vec![Then::AnswerThenCut, Then::Answer, Then::AnswerThenCut]);
        let c = LeanClient::new(&addr);
        let none = Bytes::new();
        let a = c.call("/x/A", b"", &none, Retry::Idempotent).await.unwrap();
        assert_eq!(&a.unwrap()[..], b"/x/A");
        // The pooled connection breaks under the call: sent again on a new one.
        let a = c.call("/x/B", b"", &none, Retry::Idempotent).await.unwrap();
        assert_eq!(&a.unwrap()[..], b"/x/B");
        // Both connections are gone before the next call.
        closed.recv().unwrap();
        closed.recv().unwrap();
        let a = c.call("/x/C", b"", &none, Retry::Once).await.unwrap();
        assert_eq!(&a.unwrap()[..], b"/x/C");
        // The same break under a call that must not be sent twice fails it.
        let e = c.call("/x/D", b"", &none, Retry::Once).await;
        assert!(matches!(e, Err(CallError::Io(_))), "{e:?}");
    }
}
