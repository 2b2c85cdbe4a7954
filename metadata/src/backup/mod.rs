//! Online backup and restore of the whole metadata store, on either
//! backend.
//!
//! `tessera meta backup` asks the running service for a snapshot
//! (`snapshot.rs`): one transaction reads every key at one moment and
//! hands it out a page at a time, while writers carry on. The caller
//! writes the pages in the backup format (`file.rs`): the records, then a
//! manifest (format version, cluster id, time, key count, CRC32).
//!
//! `tessera meta restore` reads a backup whole and checks it before it
//! writes anything, then loads it into an empty store as a migration does
//! (`store::copy`: marked unfinished until every key is read back), and
//! moves the block and inode id allocators far past anything they may
//! have handed out after the backup: blocks written since still have
//! shards on the storage nodes, and a new block must never take one of
//! their ids. (Nodes that joined since keep their ids: registering moves
//! the node id allocator past them.)

mod file;
mod snapshot;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use file::{read, verify, BackupWriter, Manifest, FORMAT, MANIFEST, RECORDS};
pub use snapshot::{Backups, End, Page};

use crate::{
    ids,
    store::{copy::Loader, MetaStore, StoreError, Txn},
};

/// How far a restore moves the block and inode id allocators: more than a
/// cluster hands out in its life between a backup and its restore.
pub const ID_JUMP: u64 = 1 << 40;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("backup {}: {why}", dir.display())]
    Refused { dir: PathBuf, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Restores the backup in `dir`, whose `manifest` [`verify`] returned,
/// into `to`, which must be empty.
pub fn restore(dir: &Path, manifest: &Manifest, to: &dyn MetaStore) -> Result<(), BackupError> {
    let mut load = Loader::start(to)?;
    // Read and checked again as it is loaded: a backup changed since
    // `verify` fails here, and the store keeps its unfinished mark.
    if read(dir, |k, v| Ok(load.put(k, v)?))? != *manifest {
        return Err(BackupError::Refused {
            dir: dir.to_path_buf(),
            why: "it changed while it was restored".into(),
        });
    }
    load.finish(manifest.summary, jump_ids)?;
    Ok(())
}

/// Moves the block and inode id allocators `ID_JUMP` past the backup's
/// high-water marks: ids handed out after the backup must not come again
/// (blocks: their shards are on the nodes; inodes: a mount's kernel may
/// still know them).
fn jump_ids(t: &mut dyn Txn) -> Result<(), StoreError> {
    for name in [ids::BLOCK, ids::INODE] {
        let key = crate::keys::counter(name);
        let hwm = match t.get(&key)? {
            None => 0,
            Some(v) => u64::from_be_bytes(v.as_slice().try_into().map_err(|_| {
                StoreError::Backend(format!("the {name} id counter is not 8 bytes"))
            })?),
        };
        t.put(&key, &hwm.saturating_add(ID_JUMP).to_be_bytes())?;
    }
    Ok(())
}
