//! `DATA/node.id`: the id the metadata service gave this node, in decimal.

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
};

use crate::{
    error::{Error, Result},
    segment::fsync_dir,
};

fn path(dir: &Path) -> PathBuf {
    dir.join("node.id")
}

/// The stored node id, or `None` before the first registration.
pub fn load(dir: &Path) -> Result<Option<u64>> {
    let p = path(dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(p, e)),
    };
    match text.trim().parse::<u64>() {
        Ok(0) => Err(Error::CorruptNodeId {
            path: p,
            why: "id 0 is not a node id".into(),
        }),
        Ok(id) => Ok(Some(id)),
        Err(e) => Err(Error::CorruptNodeId {
            path: p,
            why: e.to_string(),
        }),
    }
}

/// Stores `id` so that it survives a crash at any point: the old file (or
/// none) stays until the new one is complete.
pub fn save(dir: &Path, id: u64) -> Result<()> {
    let p = path(dir);
    let tmp = dir.join("node.id.tmp");
    let io = |at: &Path, e| Error::io(at, e);
    // Write and fsync the content under a temporary name first, so a crash
    // never leaves a half-written node.id.
    let mut f = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    f.write_all(format!("{id}\n").as_bytes())
        .map_err(|e| io(&tmp, e))?;
    f.sync_all().map_err(|e| io(&tmp, e))?;
    // Atomically replace the old name...
    std::fs::rename(&tmp, &p).map_err(|e| io(&p, e))?;
    // ...and make the rename itself durable.
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(super::load(dir.path()).unwrap(), None);
        super::save(dir.path(), 42).unwrap();
        assert_eq!(super::load(dir.path()).unwrap(), Some(42));
        std::fs::write(dir.path().join("node.id"), "forty-two").unwrap();
        assert!(super::load(dir.path()).is_err());
    }
}
