//! Every way the storage node can fail, and its one mapping to gRPC.

use std::{io, net::SocketAddr, path::PathBuf};

use tessera_common::ShardKey;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{key}: shard not found")]
    ShardNotFound { key: ShardKey },
    #[error("{key}: corrupt on disk (segment {segment}, offset {offset}): {why}")]
    CorruptShard {
        key: ShardKey,
        segment: u32,
        offset: u64,
        why: String,
    },
    #[error("{key}: data has CRC {got:#010x} but the request says {expected:#010x}")]
    CrcMismatch {
        key: ShardKey,
        expected: u32,
        got: u32,
    },
    #[error("{key}: already stored with CRC {stored:#010x}, refusing different bytes with CRC {offered:#010x}")]
    AlreadyExists {
        key: ShardKey,
        stored: u32,
        offered: u32,
    },
    #[error("{key}: range {offset}+{len} is beyond the shard's {shard_len} bytes")]
    RangeOutOfBounds {
        key: ShardKey,
        offset: u32,
        len: u32,
        shard_len: u32,
    },
    #[error("{key}: {len} bytes is more than the {max} bytes a shard may hold")]
    ShardTooLarge { key: ShardKey, len: usize, max: u32 },
    #[error("GetShards: {why}")]
    BadBatch { why: String },
    #[error(transparent)]
    InvalidRequest(#[from] tessera_common::Error),
    #[error("{}: disk full", path.display())]
    DiskFull { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("shard index at {}: {source}", path.display())]
    Index {
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("shard index entry {entry}: {why}")]
    CorruptIndex { entry: String, why: &'static str },
    #[error("{}: node id file is corrupt: {why}", path.display())]
    CorruptNodeId { path: PathBuf, why: String },
    #[error("writes disabled after a failed fsync ({reason}); restart the node")]
    WritesDisabled { reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("gRPC server on {addr}: {source}")]
    Serve {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("background task {task} failed: {why}")]
    Task { task: &'static str, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`; ENOSPC becomes [`Error::DiskFull`] so clients
    /// see it as "try another node", not as a server bug.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if source.raw_os_error() == Some(libc::ENOSPC)
            || source.kind() == io::ErrorKind::StorageFull
        {
            Error::DiskFull { path }
        } else {
            Error::Io { path, source }
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Code;
        let code = match &e {
            Error::ShardNotFound { .. } => Code::NotFound,
            Error::CorruptShard { .. } => Code::DataLoss,
            Error::CrcMismatch { .. }
            | Error::RangeOutOfBounds { .. }
            | Error::ShardTooLarge { .. }
            | Error::BadBatch { .. }
            | Error::InvalidRequest(_) => Code::InvalidArgument,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::DiskFull { .. } => Code::ResourceExhausted,
            Error::WritesDisabled { .. } => Code::Unavailable,
            Error::Io { .. }
            | Error::Index { .. }
            | Error::CorruptIndex { .. }
            | Error::CorruptNodeId { .. }
            | Error::Listen { .. }
            | Error::Serve { .. }
            | Error::Task { .. } => Code::Internal,
        };
        tonic::Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes() {
        let key = ShardKey { block: 7, index: 1 };
        let code = |e: Error| tonic::Status::from(e).code();
        assert_eq!(code(Error::ShardNotFound { key }), tonic::Code::NotFound);
        let corrupt = Error::CorruptShard {
            key,
            segment: 1,
            offset: 0,
            why: "x".into(),
        };
        assert_eq!(code(corrupt), tonic::Code::DataLoss);
        let crc = Error::CrcMismatch {
            key,
            expected: 1,
            got: 2,
        };
        assert_eq!(code(crc), tonic::Code::InvalidArgument);
        let full = Error::io("/x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(full, Error::DiskFull { .. }));
        assert_eq!(code(full), tonic::Code::ResourceExhausted);
    }
}
