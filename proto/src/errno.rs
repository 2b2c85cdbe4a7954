//! File-system errors travel as a gRPC status plus the errno in the `x-errno`
//! metadata key, so a client can hand the kernel exactly ENOTEMPTY or EXDEV.

use tonic::{metadata::MetadataValue, Code, Status};

const KEY: &str = "x-errno";

/// A status that carries `errno`.
pub fn status(code: Code, errno: i32, message: impl Into<String>) -> Status {
    let mut s = Status::new(code, message);
    s.metadata_mut().insert(KEY, MetadataValue::from(errno));
    s
}

/// The errno a status carries, if any.
pub fn of(status: &Status) -> Option<i32> {
    status.metadata().get(KEY)?.to_str().ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let s = super::status(tonic::Code::FailedPrecondition, 39, "dir not empty");
        assert_eq!(super::of(&s), Some(39));
        assert_eq!(super::of(&tonic::Status::internal("x")), None);
    }
}
