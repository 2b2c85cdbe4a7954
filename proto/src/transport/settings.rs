//! Endpoint settings: message and frame sizes, windows, timeouts. Every
//! connection Tessera makes or accepts takes its numbers from here.

use std::time::Duration;

/// Largest gRPC message either side accepts: a 4 MiB replica shard plus
/// framing, or a large slice list.
pub const MAX_MESSAGE: usize = 64 << 20;

/// HTTP/2 flow-control windows of shard traffic: large enough that a
/// stream of 1 MiB shards never waits for a window update.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// Largest HTTP/2 frame a server accepts, instead of h2's 16 KiB: a 1 MiB
/// shard then crosses in one frame rather than 64, each decoded,
/// flow-controlled and woken for on its own (sequential writes through a
/// mount +19% on 2 cores).
pub const MAX_H2_FRAME: u32 = 1 << 20;

/// How long making a TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// HTTP/2 keep-alive pings of a client channel, and how long it waits for
/// their answer before it calls the connection dead.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A lean RPC call that gets no answer in this long fails (as
/// unreachable): the socket's read and write timeout.
pub const LEAN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new connection may take to send its first four bytes (which
/// tell lean RPC from gRPC).
pub const FIRST_BYTES_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle lean RPC connections a client keeps per peer; more are opened
/// while calls pile up, and closed after.
pub const LEAN_IDLE_KEPT: usize = 16;

/// Lean RPC connections a threaded service (the metadata service) serves
/// at once, each on a thread of its own while it makes calls; more are
/// refused.
pub const LEAN_MAX_THREADS: usize = 4096;

/// How long a lean connection served on a thread may wait for its next
/// call before the thread lets it go: it then waits on the runtime, and
/// gets a thread again when a call arrives. Threads are thus as many as
/// the connections in use, not as the connections open.
pub const LEAN_THREAD_IDLE: Duration = Duration::from_secs(30);

/// TCP keep-alive of accepted connections: a peer that vanished without a
/// goodbye (a host lost) is found after the idle time plus the probes.
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
pub const KEEPALIVE_PROBE_EVERY: Duration = Duration::from_secs(10);
pub const KEEPALIVE_PROBES: u32 = 3;

/// Most ranges one GetShards call may read, and most bytes it may return:
/// a merge's window of small runs per node, with an answer well under
/// [`MAX_MESSAGE`].
pub const GET_SHARDS_MAX_READS: usize = 1024;
pub const GET_SHARDS_MAX_BYTES: u64 = 4 << 20;
/// Largest GetShards request a node decodes: its most ranges, each at
/// most 36 bytes encoded (a key of two varints, an offset, a length).
pub const GET_SHARDS_MAX_MESSAGE: usize = GET_SHARDS_MAX_READS * 64;
