//! Tessera's gRPC APIs (wire format version 1, package `tessera.v1`).
//!
//! `pb` is the generated code. Receivers validate every field once, at the
//! edge, with the helpers in `convert` before calling a domain function.
//! This crate depends only on tessera-common.

pub mod codec;
pub mod convert;
pub mod errno;
pub mod lean;

#[allow(clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("tessera.v1");
}

pub use convert::{shard_key, FileKind, CONNECTION_WINDOW, MAX_FRAME, MAX_MESSAGE, STREAM_WINDOW};
