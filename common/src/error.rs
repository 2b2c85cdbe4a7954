use crate::ShardKey;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("invalid protection {spec:?}: {why}")]
    InvalidProtection { spec: String, why: String },
    #[error("invalid {what} {value:?}: {why}")]
    InvalidInput {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("not enough shards to rebuild block {block:#x}: needed {needed}, got {got}")]
    NotEnoughShards {
        block: u64,
        needed: usize,
        got: usize,
    },
    #[error("{key}: CRC mismatch (expected {expected:#010x}, got {got:#010x})")]
    CorruptShard {
        key: ShardKey,
        expected: u32,
        got: u32,
    },
    #[error("placement needs {needed} failure domains, only {available} available")]
    NotEnoughDomains { needed: usize, available: usize },
}

impl Error {
    pub fn invalid(what: &'static str, value: impl Into<String>, why: impl Into<String>) -> Self {
        Error::InvalidInput {
            what,
            value: value.into(),
            why: why.into(),
        }
    }
}
