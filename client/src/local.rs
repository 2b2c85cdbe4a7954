//! Metadata calls run on the calling thread.
//!
//! A FUSE worker thread blocks on each request. Driving a metadata call on
//! the shared runtime hands it to a runtime thread and the answer back:
//! two thread wake-ups, about 30 of the 90 µs a lookup took on a small
//! machine, and a create needs two calls. `ThreadMeta` gives each calling
//! thread its own single-threaded runtime and its own lean RPC connection
//! to the metadata service instead, so the thread that waits is the one
//! that reads the answer off the socket, and HTTP/2 is not in the way.
//!
//! Only for calls on names and attributes: they make metadata calls and
//! nothing else. A call that starts background work (stores of blocks,
//! read-ahead) belongs on the shared runtime, which keeps running when
//! the thread does not.

use std::{cell::RefCell, future::Future};

use tokio::runtime::{Builder, Runtime};

use crate::{meta::lean_meta, ClientError, MetaConn, Result};

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
/// `addr` over this thread's own lean RPC connection (see `lean`).
pub(crate) fn block_on<T>(addr: &str, f: impl Future<Output = Result<T>>) -> Result<T> {
    THREAD_META.with_borrow_mut(|slot| -> Result<()> {
        if slot.as_ref().is_some_and(|t| t.addr == addr) {
            return Ok(());
        }
        let rt = Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ClientError::Invalid(format!("starting a thread runtime: {e}")))?;
        *slot = Some(ThreadMeta {
            addr: addr.to_string(),
            rt,
            conn: lean_meta(addr),
        });
        Ok(())
    })?;
    // Taken out while it runs: a nested call (there is none) could not
    // borrow it twice.
    let t = THREAD_META.take().expect("thread runtime was just made");
    ACTIVE.set(Some(t.conn.clone()));
    let out = t.rt.block_on(f);
    ACTIVE.set(None);
    THREAD_META.set(Some(t));
    out
}
