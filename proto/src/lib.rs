//! Tessera's wire: the gRPC APIs (version 1, package `tessera.v1`), lean
//! RPC's framing, and the transport every process connects and accepts
//! through.
//!
//! - `pb`: the generated code. Only the edges use it: the services'
//!   handlers and the client's calls. Everything else speaks the domain
//!   types of `tessera-common`; [`convert`] turns one into the other and
//!   validates what comes from the wire.
//! - [`lean`]: lean RPC's frames (the same calls without HTTP/2).
//! - [`transport`]: connecting, accepting, endpoint settings; the one
//!   place that knows tonic's transport.
//!
//! This crate depends only on tessera-common.

pub mod codec;
pub mod convert;
pub mod errno;
pub mod lean;
pub mod transport;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("tessera.v1");
}

pub use convert::shard_key;

/// How a metadata process that does not lead begins its answer to every
/// call (as Unavailable), followed by why: a client with other addresses
/// tries them, and one with none waits for the election.
pub const STANDBY: &str = "metadata standby";
