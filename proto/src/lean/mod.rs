//! Lean RPC, version 1: unary gRPC calls without HTTP/2, on the same port
//! as gRPC, with the same messages, method names and status codes.
//!
//! - A FUSE worker thread makes the metadata service's calls one at a time
//!   on its own connection. A lookup over HTTP/2 spends most of its time in
//!   stream bookkeeping, HPACK and task hand-offs; here it is one write and
//!   one read on each side.
//! - A mount sends and fetches shards from storage nodes this way. tonic
//!   copies each shard into its send buffer on one side and into its
//!   receive buffer on the other, and HTTP/2 cuts it into frames. Here a
//!   shard's bytes go from the client's buffer to the socket, and from the
//!   socket into the buffer the node keeps (see
//!   [`message_with_bytes_head`]).
//!
//! ```text
//! client hello   "TSRM" | version u16 | 0u16
//! server hello   "TSRM" | version u16 | 0u16         (then closes if it
//!                                                      does not speak it)
//! request        len u32 | path_len u16 | path | message
//! response       len u32 | code u32 | errno u32 | status_len u32 | status | message
//! ```
//! Integers are little-endian; `len` counts the bytes after it. `path` is
//! the gRPC method path (`/tessera.v1.Meta/Lookup`), `message` the
//! protobuf message without gRPC's 5-byte prefix. `code` is the gRPC
//! status code: 0 carries the answer, anything else the status message
//! and, when not 0, the errno of the failure (see [`crate::errno`]).
//! Calls are answered in order, one at a time. [`crate::transport`]
//! makes and serves the connections.

use bytes::Bytes;
use prost::{
    encoding::{encode_key, encode_varint, WireType},
    Message,
};

use crate::transport::settings::MAX_MESSAGE;

/// The Node service's methods, and where a shard's bytes sit in the
/// messages that carry them (sent apart from the rest of the message, see
/// [`message_with_bytes_head`]).
pub mod node {
    pub const PUT_SHARD: &str = "/tessera.v1.Node/PutShard";
    pub const GET_SHARD: &str = "/tessera.v1.Node/GetShard";
    pub const GET_SHARDS: &str = "/tessera.v1.Node/GetShards";
    pub const DELETE_SHARDS: &str = "/tessera.v1.Node/DeleteShards";
    pub const LIST_SHARDS: &str = "/tessera.v1.Node/ListShards";
    pub const STAT: &str = "/tessera.v1.Node/Stat";
    /// Field numbers of the shard bytes in PutShardRequest and
    /// GetShardResponse.
    pub const PUT_DATA_TAG: u32 = 2;
    pub const GET_DATA_TAG: u32 = 1;
}

/// The Meta service's methods.
pub mod meta {
    pub const REGISTER_NODE: &str = "/tessera.v1.Meta/RegisterNode";
    pub const HEARTBEAT: &str = "/tessera.v1.Meta/Heartbeat";
    pub const LIST_NODES: &str = "/tessera.v1.Meta/ListNodes";
    pub const GET_PLACEMENT: &str = "/tessera.v1.Meta/GetPlacement";
    pub const CLUSTER_STATUS: &str = "/tessera.v1.Meta/ClusterStatus";
    pub const DRAIN_NODE: &str = "/tessera.v1.Meta/DrainNode";
    pub const REMOVE_NODE: &str = "/tessera.v1.Meta/RemoveNode";
    pub const REPORT_CORRUPT: &str = "/tessera.v1.Meta/ReportCorrupt";
    pub const BACKUP_PAGE: &str = "/tessera.v1.Meta/BackupPage";
    pub const CREATE_VOLUME: &str = "/tessera.v1.Meta/CreateVolume";
    pub const GET_VOLUME: &str = "/tessera.v1.Meta/GetVolume";
    pub const LIST_VOLUMES: &str = "/tessera.v1.Meta/ListVolumes";
    pub const DELETE_VOLUME: &str = "/tessera.v1.Meta/DeleteVolume";
    pub const ALLOC_BLOCKS: &str = "/tessera.v1.Meta/AllocBlocks";
    pub const GET_SLICES: &str = "/tessera.v1.Meta/GetSlices";
    pub const COMMIT_WRITES: &str = "/tessera.v1.Meta/CommitWrites";
    pub const SYNC: &str = "/tessera.v1.Meta/Sync";
    pub const LOOKUP: &str = "/tessera.v1.Meta/Lookup";
    pub const LOOKUP_PAGE: &str = "/tessera.v1.Meta/LookupPage";
    pub const GET_ATTR: &str = "/tessera.v1.Meta/GetAttr";
    pub const SET_ATTR: &str = "/tessera.v1.Meta/SetAttr";
    pub const MAKE_NODE: &str = "/tessera.v1.Meta/MakeNode";
    pub const LINK: &str = "/tessera.v1.Meta/Link";
    pub const UNLINK: &str = "/tessera.v1.Meta/Unlink";
    pub const RENAME: &str = "/tessera.v1.Meta/Rename";
    pub const RELEASE_ORPHAN: &str = "/tessera.v1.Meta/ReleaseOrphan";
    pub const RENEW_ORPHANS: &str = "/tessera.v1.Meta/RenewOrphans";
    pub const READ_DIR: &str = "/tessera.v1.Meta/ReadDir";
    pub const READ_LINK: &str = "/tessera.v1.Meta/ReadLink";
    pub const GET_XATTR: &str = "/tessera.v1.Meta/GetXattr";
    pub const SET_XATTR: &str = "/tessera.v1.Meta/SetXattr";
    pub const LIST_XATTR: &str = "/tessera.v1.Meta/ListXattr";
    pub const REMOVE_XATTR: &str = "/tessera.v1.Meta/RemoveXattr";
    pub const STAT_FS: &str = "/tessera.v1.Meta/StatFs";
    pub const SET_LOCK: &str = "/tessera.v1.Meta/SetLock";
    pub const TEST_LOCK: &str = "/tessera.v1.Meta/TestLock";
    pub const RENEW_LOCKS: &str = "/tessera.v1.Meta/RenewLocks";
}

pub const MAGIC: [u8; 4] = *b"TSRM";
pub const VERSION: u16 = 1;
pub const HELLO_LEN: usize = 8;
/// Largest `len` of a frame: a message and its path or status.
pub const MAX_FRAME: usize = MAX_MESSAGE + 64 * 1024;

/// A frame or hello that is not lean RPC version 1.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("lean RPC: {0}")]
pub struct BadFrame(pub String);

impl From<BadFrame> for std::io::Error {
    fn from(e: BadFrame) -> Self {
        std::io::Error::new(std::io::ErrorKind::InvalidData, e)
    }
}

fn bad(why: impl Into<String>) -> BadFrame {
    BadFrame(why.into())
}

pub fn hello() -> [u8; HELLO_LEN] {
    let mut h = [0u8; HELLO_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks that a hello answered ours names our version.
pub fn check_hello(h: &[u8; HELLO_LEN]) -> Result<(), BadFrame> {
    match hello_version(h)? {
        VERSION => Ok(()),
        v => Err(bad(format!(
            "the service speaks lean RPC version {v}, this client {VERSION}"
        ))),
    }
}

/// The version a hello names (any version: the caller decides).
pub fn hello_version(h: &[u8; HELLO_LEN]) -> Result<u16, BadFrame> {
    if h[..4] != MAGIC {
        return Err(bad("not a lean RPC hello"));
    }
    Ok(u16::from_le_bytes([h[4], h[5]]))
}

/// The `len` of a frame from its first four bytes, checked against
/// [`MAX_FRAME`].
pub fn frame_len(head: [u8; 4]) -> Result<usize, BadFrame> {
    let len = u32::from_le_bytes(head) as usize;
    if len > MAX_FRAME {
        return Err(bad(format!("frame of {len} bytes, limit {MAX_FRAME}")));
    }
    Ok(len)
}

/// Appends a request frame (with its length prefix) to `out`.
pub fn encode_request(path: &str, message: &[u8], out: &mut Vec<u8>) -> Result<(), BadFrame> {
    request_head(path, message.len(), out)?;
    out.extend_from_slice(message);
    Ok(())
}

/// Appends the part of a request frame that comes before its message of
/// `message_len` bytes, for a caller that sends the message from where it
/// already is.
pub fn request_head(path: &str, message_len: usize, out: &mut Vec<u8>) -> Result<(), BadFrame> {
    let path_len = u16::try_from(path.len()).map_err(|_| bad("method path too long"))?;
    let len = 2 + path.len() + message_len;
    if len > MAX_FRAME {
        return Err(bad(format!("request of {len} bytes, limit {MAX_FRAME}")));
    }
    out.reserve(4 + len - message_len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&path_len.to_le_bytes());
    out.extend_from_slice(path.as_bytes());
    Ok(())
}

/// `m` encoded, followed by the key and length of its `bytes` field `tag`
/// holding `len` bytes, which the caller sends right after. Protobuf lets
/// a field come after the others, so the two make one message, and a
/// shard goes out without being copied into it. `m`'s own field `tag`
/// must be empty.
pub fn message_with_bytes_head(m: &impl Message, tag: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.encoded_len() + 16);
    m.encode_raw(&mut out);
    encode_key(tag, WireType::LengthDelimited, &mut out);
    encode_varint(len as u64, &mut out);
    out
}

/// Splits a request frame (without its length prefix) into path and message.
pub fn decode_request(frame: &[u8]) -> Result<(&str, &[u8]), BadFrame> {
    let (n, rest) = frame
        .split_first_chunk::<2>()
        .ok_or_else(|| bad("short request"))?;
    let n = u16::from_le_bytes(*n) as usize;
    if rest.len() < n {
        return Err(bad("method path past the end of the request"));
    }
    let (path, message) = rest.split_at(n);
    let path = std::str::from_utf8(path).map_err(|_| bad("method path is not UTF-8"))?;
    Ok((path, message))
}

/// The answer to one call.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer<'a> {
    /// gRPC status code; 0 is success.
    pub code: u32,
    /// 0 when the failure carries no errno.
    pub errno: u32,
    pub status: &'a str,
    pub message: &'a [u8],
}

impl Answer<'_> {
    /// The failure this answer reports, with its errno; `None` for
    /// success. The inverse of [`crate::transport::Reply::status`].
    pub fn failure(&self) -> Option<tonic::Status> {
        let code = tonic::Code::from(i32::try_from(self.code).unwrap_or(i32::MAX));
        (self.code != 0).then(|| match i32::try_from(self.errno) {
            Ok(e) if e != 0 => crate::errno::status(code, e, self.status),
            _ => tonic::Status::new(code, self.status),
        })
    }
}

/// A response frame (with its length prefix).
pub fn encode_response(a: &Answer<'_>) -> Vec<u8> {
    let mut out = response_head(a.code, a.errno, a.status, a.message.len());
    out.extend_from_slice(a.message);
    out
}

/// The part of a response frame that comes before its message of
/// `message_len` bytes.
pub fn response_head(code: u32, errno: u32, status: &str, message_len: usize) -> Vec<u8> {
    let len = 12 + status.len() + message_len;
    let mut out = Vec::with_capacity(4 + len - message_len);
    out.extend_from_slice(&(len as u32).to_le_bytes());
    out.extend_from_slice(&code.to_le_bytes());
    out.extend_from_slice(&errno.to_le_bytes());
    out.extend_from_slice(&(status.len() as u32).to_le_bytes());
    out.extend_from_slice(status.as_bytes());
    out
}

/// Decodes a response frame (without its length prefix).
pub fn decode_response(frame: &[u8]) -> Result<Answer<'_>, BadFrame> {
    let short = || bad("short response");
    let (code, rest) = frame.split_first_chunk::<4>().ok_or_else(short)?;
    let (errno, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let (n, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let n = u32::from_le_bytes(*n) as usize;
    if rest.len() < n {
        return Err(bad("status past the end of the response"));
    }
    let (status, message) = rest.split_at(n);
    Ok(Answer {
        code: u32::from_le_bytes(*code),
        errno: u32::from_le_bytes(*errno),
        status: std::str::from_utf8(status).map_err(|_| bad("status is not UTF-8"))?,
        message,
    })
}

/// `message` as a gRPC body: uncompressed flag, big-endian length, bytes.
/// The generated client and router speak this; lean RPC carries only the
/// message.
pub fn grpc_frame(message: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + message.len());
    out.push(0);
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    Bytes::from(out)
}

/// The message of a gRPC body holding exactly one uncompressed message.
pub fn grpc_message(body: &Bytes) -> Option<Bytes> {
    match body.get(..5) {
        Some(&[0, a, b, c, d]) if body.len() - 5 == u32::from_be_bytes([a, b, c, d]) as usize => {
            Some(body.slice(5..))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trip() {
        let mut out = Vec::new();
        encode_request("/tessera.v1.Meta/Lookup", b"\x08\x01", &mut out).unwrap();
        let len = frame_len(out[..4].try_into().unwrap()).unwrap();
        assert_eq!(len, out.len() - 4);
        assert_eq!(
            decode_request(&out[4..]).unwrap(),
            ("/tessera.v1.Meta/Lookup", &b"\x08\x01"[..])
        );
    }

    #[test]
    fn response_round_trip() {
        for a in [
            Answer {
                code: 0,
                errno: 0,
                status: "",
                message: b"abc",
            },
            Answer {
                code: 9,
                errno: 39,
                status: "directory /a is not empty",
                message: b"",
            },
        ] {
            let out = encode_response(&a);
            assert_eq!(
                frame_len(out[..4].try_into().unwrap()).unwrap(),
                out.len() - 4
            );
            assert_eq!(decode_response(&out[4..]).unwrap(), a);
        }
    }

    #[test]
    fn hostile_frames_are_refused() {
        assert!(frame_len(u32::MAX.to_le_bytes()).is_err());
        assert!(frame_len(((MAX_FRAME + 1) as u32).to_le_bytes()).is_err());
        assert!(decode_request(b"").is_err());
        assert!(decode_request(b"\x05\x00abc").is_err());
        assert!(decode_request(b"\x02\x00\xff\xfe").is_err());
        assert!(decode_response(b"\x00\x00\x00\x00\x00\x00").is_err());
        assert!(decode_response(b"\x00\x00\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00ab").is_err());
        assert!(encode_request(&"x".repeat(70_000), b"", &mut Vec::new()).is_err());
        // Every truncation of a valid response is refused or decodes to a
        // shorter message, never past the end.
        let full = encode_response(&Answer {
            code: 5,
            errno: 2,
            status: "no such file",
            message: b"",
        });
        for cut in 4..full.len() {
            assert!(decode_response(&full[4..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn grpc_bodies_round_trip_and_odd_ones_are_refused() {
        for m in [&b""[..], b"\x08\x01", &[7u8; 70_000]] {
            assert_eq!(grpc_message(&grpc_frame(m)).as_deref(), Some(m));
        }
        let framed = grpc_frame(b"abc");
        let mut compressed = framed.to_vec();
        compressed[0] = 1;
        assert_eq!(grpc_message(&Bytes::from(compressed)), None);
        assert_eq!(grpc_message(&framed.slice(..7)), None);
        let mut two = framed.to_vec();
        two.extend_from_slice(&framed);
        assert_eq!(grpc_message(&Bytes::from(two)), None);
        assert_eq!(grpc_message(&Bytes::from_static(b"\0\0")), None);
    }

    #[test]
    fn hello_names_its_version() {
        assert_eq!(hello_version(&hello()), Ok(VERSION));
        assert!(hello_version(b"PRI * HT").is_err());
        assert_eq!(check_hello(&hello()), Ok(()));
        let mut other = hello();
        other[4] = 2;
        assert!(check_hello(&other).unwrap_err().0.contains("version 2"));
    }

    #[test]
    fn a_bytes_field_sent_after_the_rest_decodes_as_one_message() {
        use crate::pb;
        for len in [0usize, 1, 127, 128, 300_000] {
            let data = Bytes::from((0..len).map(|i| i as u8).collect::<Vec<_>>());
            let whole = pb::PutShardRequest {
                key: Some(pb::ShardKey { block: 7, index: 3 }),
                data: data.clone(),
                crc: 42,
                epoch: 9,
            };
            let rest = pb::PutShardRequest {
                data: Bytes::new(),
                ..whole.clone()
            };
            let mut wire = message_with_bytes_head(&rest, 2, data.len());
            wire.extend_from_slice(&data);
            assert_eq!(pb::PutShardRequest::decode(&wire[..]).unwrap(), whole);

            let answer = pb::GetShardResponse {
                data: data.clone(),
                shard_crc: 5,
                shard_len: len as u32,
            };
            let mut wire = message_with_bytes_head(
                &pb::GetShardResponse {
                    data: Bytes::new(),
                    ..answer.clone()
                },
                1,
                len,
            );
            wire.extend_from_slice(&data);
            assert_eq!(pb::GetShardResponse::decode(&wire[..]).unwrap(), answer);
        }
    }

    #[test]
    fn heads_match_whole_frames() {
        let mut whole = Vec::new();
        encode_request("/tessera.v1.Node/PutShard", b"abcdef", &mut whole).unwrap();
        let mut head = Vec::new();
        request_head("/tessera.v1.Node/PutShard", 6, &mut head).unwrap();
        head.extend_from_slice(b"abcdef");
        assert_eq!(head, whole);
        let a = Answer {
            code: 0,
            errno: 0,
            status: "",
            message: b"xyz",
        };
        let mut head = response_head(0, 0, "", 3);
        head.extend_from_slice(b"xyz");
        assert_eq!(head, encode_response(&a));
        assert!(request_head("/x", MAX_FRAME, &mut Vec::new()).is_err());
    }
}
