//! Metadata calls run on the calling thread.
//!
//! A FUSE worker thread blocks on each request. Driving a metadata call on
//! the shared runtime hands it to a runtime thread and the answer back:
//! two thread wake-ups, about 30 of the 90 µs a lookup takes on a small
//! machine, and a create needs two calls. `ThreadMeta` gives each calling
//! thread its own single-threaded runtime and its own connection to the
//! metadata service instead, so the thread that waits is the one that
//! reads the answer off the socket.
//!
//! Only for calls on names and attributes: they make metadata calls and
//! nothing else. A call that starts background work (stores of blocks,
//! read-ahead) belongs on the shared runtime, which keeps running when
//! the thread does not.

use std::{cell::RefCell, future::Future, time::Duration};

use tessera_proto::{pb::meta_client::MetaClient, MAX_MESSAGE};
use tokio::runtime::{Builder, Runtime};

use crate::{meta::endpoint_without_keep_alive, ClientError, MetaConn, Result};

/// A thread-local connection is idle between calls and nobody polls it
/// then, so it has no keep-alive pings (an unanswered one would close it);
/// a call that gets no answer fails after this instead.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

struct ThreadMeta {
    addr: String,
    rt: Runtime,
    conn: MetaConn,
}

thread_local! {
    static THREAD_META: RefCell<Option<ThreadMeta>> = const { RefCell::new(None) };
    /// Set while `block_on` runs: metadata calls use this connection.
    static ACTIVE: RefCell<Option<MetaConn>> = const { RefCell::new(None) };
}

/// This thread's connection while `block_on` runs on it.
pub(crate) fn active_conn() -> Option<MetaConn> {
    ACTIVE.with_borrow(|c| c.clone())
}

/// Runs `f` to completion on this thread, its metadata calls going to
/// `addr` over this thread's own connection (made on first use, and again
/// after a call fails to reach the service).
pub(crate) fn block_on<T>(addr: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    THREAD_META.with_borrow_mut(|slot| -> Result<()> {
        if slot.as_ref().is_some_and(|t| t.addr == addr) {
            return Ok(());
        }
        *slot = None;
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Invalid(format!("starting a thread runtime: {e}")))?;
        let channel = endpoint_without_keep_alive(addr)?.timeout(CALL_TIMEOUT);
        let channel = rt
            .block_on(channel.connect())
            .map_err(|e| ClientError::Connect {
                what: "metadata service",
                addr: addr.to_string(),
                why: e.to_string(),
            })?;
        let conn = MetaClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        *slot = Some(ThreadMeta {
            addr: addr.to_string(),
            rt,
            conn,
        });
        Ok(())
    })?;
    // Taken out while it runs: a nested call (there is none) could not
    // borrow it twice.
    let t = THREAD_META.take().expect("thread runtime was just made");
    // Nothing polls the connection between calls: let it see what came
    // meanwhile first (a closed socket, after the service restarted), so
    // the call goes out on a fresh connection rather than fail on the old.
    t.rt.block_on(async {
        // Each yield lets the runtime poll the socket once and run what
        // that woke: the connection's task, then the channel's, which
        // starts a new connection if the old one closed.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
    });
    ACTIVE.set(Some(t.conn.clone()));
    let out = t.rt.block_on(f);
    ACTIVE.set(None);
    // A connection that failed is made again by the next call.
    if !matches!(&out, Err(e) if e.is_unreachable()) {
        THREAD_META.set(Some(t));
    }
    out
}
