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
    #[error("{0}")]
    Invalid(String),
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
            ClientError::EarlierWrite { errno, .. } => *errno,
            _ => libc::EIO,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.errno() == libc::ENOENT
    }
}
