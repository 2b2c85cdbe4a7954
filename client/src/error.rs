use tessera_common::ShardKey;
use tonic::{Code, Status};

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error, Clone)]
pub enum ClientError {
    #[error("metadata service: {message}")]
    Meta {
        code: Code,
        errno: Option<i32>,
        message: String,
    },
    #[error("cannot connect to {what} at {addr}: {why}")]
    Connect {
        what: &'static str,
        addr: String,
        why: String,
    },
    #[error("block {block:#x}: only {got} of the {needed} shards needed could be read")]
    NotEnoughShards {
        block: u64,
        needed: usize,
        got: usize,
    },
    #[error("block {block:#x}: only {durable} shards durable, {needed} required")]
    NotDurable {
        block: u64,
        durable: usize,
        needed: usize,
    },
    #[error("{key} on node {node}: {why}")]
    Shard {
        key: ShardKey,
        node: u64,
        why: String,
    },
    /// The caller asked for something that cannot be done (EINVAL).
    #[error("{0}")]
    Invalid(String),
    /// The metadata service answered with something that makes no sense:
    /// a value that does not parse, an inline block without its bytes.
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("inode {ino}: a write at {offset} ends past the largest file")]
    TooLarge { ino: u64, offset: u64 },
    /// SEEK_DATA or SEEK_HOLE from the end of the file or past it, or
    /// SEEK_DATA with no data after the offset (ENXIO).
    #[error("inode {ino}: no data or hole at or after {offset}")]
    NoSuchData { ino: u64, offset: u64 },
    /// A lock wait ended by a signal pending for the waiting thread, or by
    /// the mount going away (EINTR).
    #[error("inode {ino}: the wait for a lock was given up")]
    LockWaitEnded { ino: u64 },
    /// Too many processes of this mount wait for locks (ENOLCK).
    #[error("inode {ino}: {waiting} lock waits already; at most {max}")]
    TooManyLockWaits {
        ino: u64,
        waiting: usize,
        max: usize,
    },
    #[error("volume {volume} is shutting down")]
    ShuttingDown { volume: String },
    #[error("the write pipeline of inode {ino} went away before the write was stored")]
    PipelineDropped { ino: u64 },
    /// A write that was buffered earlier failed; the error sticks until the
    /// file is flushed, like the kernel's writeback errors.
    #[error("an earlier write to inode {ino} failed: {why}")]
    EarlierWrite { ino: u64, errno: i32, why: String },
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        ClientError::Meta {
            code: s.code(),
            errno: tessera_proto::errno::of(&s),
            message: s.message().to_string(),
        }
    }
}

impl From<tessera_common::Error> for ClientError {
    fn from(e: tessera_common::Error) -> Self {
        ClientError::Invalid(e.to_string())
    }
}

impl From<tessera_proto::transport::ConnectError> for ClientError {
    fn from(e: tessera_proto::transport::ConnectError) -> Self {
        ClientError::Connect {
            what: "metadata service",
            addr: e.addr,
            why: e.why,
        }
    }
}

/// An answer from the wire that does not convert.
pub(crate) fn malformed(e: tessera_common::Error) -> ClientError {
    ClientError::Malformed(e.to_string())
}

impl ClientError {
    /// The service could not be reached or did not answer (as opposed to
    /// answering with an error).
    pub fn is_unreachable(&self) -> bool {
        match self {
            ClientError::Connect { .. } => true,
            ClientError::Meta { code, .. } => matches!(
                code,
                Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown
            ),
            _ => false,
        }
    }

    /// The errno a file system call should fail with: the one place client
    /// errors become errnos.
    pub fn errno(&self) -> i32 {
        match self {
            ClientError::Meta { errno: Some(e), .. } => *e,
            ClientError::Meta {
                code: Code::NotFound,
                ..
            } => libc::ENOENT,
            ClientError::Meta {
                code: Code::AlreadyExists,
                ..
            } => libc::EEXIST,
            ClientError::Meta {
                code: Code::InvalidArgument,
                ..
            } => libc::EINVAL,
            ClientError::Meta {
                code: Code::ResourceExhausted,
                ..
            } => libc::ENOSPC,
            ClientError::Invalid(_) => libc::EINVAL,
            ClientError::TooLarge { .. } => libc::EFBIG,
            ClientError::NoSuchData { .. } => libc::ENXIO,
            ClientError::LockWaitEnded { .. } => libc::EINTR,
            ClientError::TooManyLockWaits { .. } => libc::ENOLCK,
            ClientError::EarlierWrite { errno, .. } => *errno,
            _ => libc::EIO,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_of_the_system_are_eio_and_only_bad_requests_einval() {
        for e in [
            ClientError::Malformed("inline block 0x8000000000000005 missing".into()),
            ClientError::ShuttingDown { volume: "v".into() },
            ClientError::PipelineDropped { ino: 5 },
            malformed(tessera_common::Error::invalid("file kind", "9", "unknown")),
        ] {
            assert_eq!(e.errno(), libc::EIO, "{e}");
        }
        assert_eq!(
            ClientError::Invalid("write past the largest file".into()).errno(),
            libc::EINVAL
        );
    }
}
