//! Every key prefix of the metadata store, in one place. Integers are
//! big-endian so keys sort numerically. A retired prefix is never reused.

use tessera_common::{BlockId, Ino, NodeId, VolumeId};

/// Id allocators' high-water marks: `C` + name.
pub const COUNTER: u8 = b'C';
/// Storage nodes: `N` + node id.
pub const NODE: u8 = b'N';
/// Placement tables: `P` + K + M.
pub const PLACEMENT: u8 = b'P';
/// Volumes by id: `V` + volume id.
pub const VOLUME: u8 = b'V';
/// Volume ids by name: `v` + name.
pub const VOLUME_NAME: u8 = b'v';
/// Inodes: `I` + volume + ino.
pub const INODE: u8 = b'I';
/// Directory entries: `D` + volume + parent ino + name.
pub const DENTRY: u8 = b'D';
/// Retired: the slices of one chunk as one list (`S` + volume + ino +
/// chunk index -> Vec<Slice>), before slices had a key each. Read only to
/// convert them to `E` (`data/migrate.rs`).
pub const CHUNK_LIST: u8 = b'S';
/// A file's extent map: `E` + volume + ino + file offset -> Slice, the
/// extents never overlapping (`data/slices.rs`).
pub const SLICE: u8 = b'E';
/// Extended attributes: `X` + volume + ino + name.
pub const XATTR: u8 = b'X';
/// Blocks waiting for their shards to be deleted: `G` + block id.
pub const GC: u8 = b'G';
/// Blocks with shards waiting for repair: `R` + block id.
pub const REPAIR: u8 = b'R';
/// Volume settings added after the volume record (min_durable): `Q` + volume id.
pub const VOLUME_SETTINGS: u8 = b'Q';
/// Volumes removed whose file tree is still being deleted: `Z` + volume id.
pub const VOLUME_PURGE: u8 = b'Z';
/// Live blocks (class, length, references): `B` + block id.
pub const BLOCK: u8 = b'B';
/// Membership of a node (active, draining, out, removed): `M` + node id.
pub const MEMBER: u8 = b'M';
/// Placement tables replaced by a newer epoch: `H` + K + M + epoch.
pub const PLACEMENT_HISTORY: u8 = b'H';
/// Remap jobs (blocks of moved PG slots still to be queued): `J` + K + M + epoch.
pub const REMAP_JOB: u8 = b'J';
/// Files without a name kept for the clients that have them open:
/// `O` + volume + ino -> OrphanRecord.
pub const ORPHAN: u8 = b'O';
/// Bytes of inline blocks (kept here, not on storage nodes): `L` + block id.
pub const INLINE: u8 = b'L';
/// Removed files whose rows are still being deleted (`fs/release.rs`):
/// `F` + volume + ino -> (empty).
pub const RELEASE: u8 = b'F';
/// Files whose slices past a truncation are still being cut
/// (`fs/release.rs`): `T` + volume + ino -> TrimRecord.
pub const TRIM: u8 = b'T';

/// Advisory locks on a file (`fs/locks.rs`): `K` + volume + ino ->
/// LockTable.
pub const LOCK: u8 = b'K';
/// Mounts holding locks, and when their locks lapse unless renewed:
/// `Y` + session -> SessionRecord.
pub const LOCK_SESSION: u8 = b'Y';
/// The cluster's identity: `U` + "id" -> a random id, written when the
/// store is first opened; backups carry it (`backup/`).
pub const CLUSTER: u8 = b'U';

/// Every prefix keyed by volume first: what a volume's deletion deletes.
pub const VOLUME_TREE: [u8; 8] = [SLICE, INODE, DENTRY, XATTR, ORPHAN, RELEASE, TRIM, LOCK];

fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + parts.iter().map(|p| p.len()).sum::<usize>());
    k.push(prefix);
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub fn cluster_id() -> Vec<u8> {
    key(CLUSTER, &[b"id"])
}

pub fn counter(name: &str) -> Vec<u8> {
    key(COUNTER, &[name.as_bytes()])
}

pub fn node(id: NodeId) -> Vec<u8> {
    key(NODE, &[&id.to_be_bytes()])
}

pub fn placement(k: u8, m: u8) -> Vec<u8> {
    key(PLACEMENT, &[&[k, m]])
}

pub fn volume(id: VolumeId) -> Vec<u8> {
    key(VOLUME, &[&id.to_be_bytes()])
}

pub fn volume_name(name: &str) -> Vec<u8> {
    key(VOLUME_NAME, &[name.as_bytes()])
}

pub fn inode(vol: VolumeId, ino: Ino) -> Vec<u8> {
    key(INODE, &[&vol.to_be_bytes(), &ino.to_be_bytes()])
}

pub fn dentry(vol: VolumeId, parent: Ino, name: &[u8]) -> Vec<u8> {
    key(DENTRY, &[&vol.to_be_bytes(), &parent.to_be_bytes(), name])
}

pub fn chunk_list(vol: VolumeId, ino: Ino, index: u64) -> Vec<u8> {
    key(
        CHUNK_LIST,
        &[&vol.to_be_bytes(), &ino.to_be_bytes(), &index.to_be_bytes()],
    )
}

/// The extent of `ino` that starts at `offset`.
pub fn extent(vol: VolumeId, ino: Ino, offset: u64) -> Vec<u8> {
    key(
        SLICE,
        &[
            &vol.to_be_bytes(),
            &ino.to_be_bytes(),
            &offset.to_be_bytes(),
        ],
    )
}

pub fn xattr(vol: VolumeId, ino: Ino, name: &[u8]) -> Vec<u8> {
    key(XATTR, &[&vol.to_be_bytes(), &ino.to_be_bytes(), name])
}

pub fn gc(block: BlockId) -> Vec<u8> {
    key(GC, &[&block.to_be_bytes()])
}

pub fn volume_settings(id: VolumeId) -> Vec<u8> {
    key(VOLUME_SETTINGS, &[&id.to_be_bytes()])
}

pub fn volume_purge(id: VolumeId) -> Vec<u8> {
    key(VOLUME_PURGE, &[&id.to_be_bytes()])
}

pub fn block(id: BlockId) -> Vec<u8> {
    key(BLOCK, &[&id.to_be_bytes()])
}

pub fn inline(block: BlockId) -> Vec<u8> {
    key(INLINE, &[&block.to_be_bytes()])
}

pub fn member(id: NodeId) -> Vec<u8> {
    key(MEMBER, &[&id.to_be_bytes()])
}

pub fn placement_history(k: u8, m: u8, epoch: u64) -> Vec<u8> {
    key(PLACEMENT_HISTORY, &[&[k, m], &epoch.to_be_bytes()])
}

pub fn remap_job(k: u8, m: u8, epoch: u64) -> Vec<u8> {
    key(REMAP_JOB, &[&[k, m], &epoch.to_be_bytes()])
}

pub fn repair(block: BlockId) -> Vec<u8> {
    key(REPAIR, &[&block.to_be_bytes()])
}

pub fn release(vol: VolumeId, ino: Ino) -> Vec<u8> {
    under(RELEASE, vol, ino)
}

pub fn trim(vol: VolumeId, ino: Ino) -> Vec<u8> {
    under(TRIM, vol, ino)
}

pub fn lock_session(session: u64) -> Vec<u8> {
    key(LOCK_SESSION, &[&session.to_be_bytes()])
}

pub fn orphan(vol: VolumeId, ino: Ino) -> Vec<u8> {
    under(ORPHAN, vol, ino)
}

/// The id (block, node or volume) of a `G`, `R`, `M` or `Z` key.
pub fn id_of(k: &[u8], prefix: u8) -> crate::Result<u64> {
    suffix(k, &[prefix])
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| crate::MetaError::Corrupt {
            key: k.to_vec(),
            why: "the key holds one id".into(),
        })
}

/// The (volume, ino) of an `O`, `F` or `T` key.
pub fn volume_ino_of(k: &[u8]) -> crate::Result<(VolumeId, Ino)> {
    match k {
        [_, vol @ ..] if vol.len() == 16 => Ok((
            u64::from_be_bytes(vol[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(vol[8..].try_into().expect("8 bytes")),
        )),
        _ => Err(crate::MetaError::Corrupt {
            key: k.to_vec(),
            why: "the key holds a volume and an inode".into(),
        }),
    }
}

/// `[start, end)` of every key that starts with `prefix`.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let start = prefix.to_vec();
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (start, end);
        }
    }
    (start, vec![0xff; 9])
}

/// The prefix shared by all keys of one kind under (volume, ino), e.g. all
/// entries of a directory.
pub fn under(prefix: u8, vol: VolumeId, ino: Ino) -> Vec<u8> {
    key(prefix, &[&vol.to_be_bytes(), &ino.to_be_bytes()])
}

/// The prefix of every key of one kind in a volume.
pub fn in_volume(prefix: u8, vol: VolumeId) -> Vec<u8> {
    key(prefix, &[&vol.to_be_bytes()])
}

/// The bytes after `prefix` in `key` (a name or an index).
pub fn suffix<'a>(key: &'a [u8], prefix: &[u8]) -> &'a [u8] {
    &key[prefix.len().min(key.len())..]
}
