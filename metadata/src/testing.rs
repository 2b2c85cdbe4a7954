//! What the unit tests share: a service over each backend with six nodes
//! and a volume, and short ways to call the production entry points.

use std::sync::Arc;

use tessera_common::{
    Attr, BlockId, Commit, Committed, DegradedBlock, FileKind, FileWrite, InlineBlock, Ino,
    NewNode, Slice, VolumeId, VolumeSpec,
};

use crate::{
    cluster::Registration,
    fs::{Holder, MakeNode, Rename, Unlink},
    store::{MemoryStore, MetaStore, RocksStore},
    Meta, MetaOptions, Result,
};

/// Runs `test` over every backend: in memory, RocksDB in a temporary
/// directory, and a real etcd member (their scans and conflicts are not
/// the same code).
pub fn each_store(test: impl Fn(Arc<dyn MetaStore>)) {
    test(Arc::new(MemoryStore::new()));
    let dir = tempfile::tempdir().unwrap();
    test(Arc::new(RocksStore::open(dir.path()).unwrap()));
    test(Arc::new(crate::store::test_etcd::store()));
}

/// A service over `store` with six nodes registered (one host each).
pub fn open(store: Arc<dyn MetaStore>, options: MetaOptions) -> Meta {
    let m = Meta::open(store, options).unwrap();
    for i in 0..6 {
        m.cluster()
            .register(&Registration {
                id: 0,
                addr: format!("127.0.0.1:{}", 9000 + i),
                labels: Default::default(),
            })
            .unwrap();
    }
    m
}

pub fn spec(name: &str, size: u64, protection: &str) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        size,
        protection: protection.parse().unwrap(),
        labels: Default::default(),
        min_durable: 0,
    }
}

pub fn slice(offset: u64, len: u32, block: BlockId) -> Slice {
    Slice {
        offset,
        len,
        block,
        block_offset: 0,
        block_len: len,
    }
}

/// A service with an `ec:4+2` volume `v` of `size` bytes.
pub struct Fx {
    pub m: Meta,
    pub v: VolumeId,
}

impl Fx {
    pub fn new(store: Arc<dyn MetaStore>, size: u64) -> Fx {
        Self::with(store, size, MetaOptions::default())
    }

    pub fn with(store: Arc<dyn MetaStore>, size: u64, options: MetaOptions) -> Fx {
        let m = open(store, options);
        let v = m.volumes().create(&spec("v", size, "ec:4+2")).unwrap().id;
        Fx { m, v }
    }

    pub fn make(&self, parent: Ino, name: &[u8], kind: FileKind) -> Result<Attr> {
        let made = self.m.tree().make_node(&MakeNode {
            vol: self.v,
            parent,
            name,
            node: NewNode {
                kind,
                perm: 0o644,
                uid: 1,
                gid: 2,
                rdev: 0,
                target: b"",
            },
        })?;
        Ok(made.node)
    }

    pub fn file(&self, parent: Ino, name: &[u8]) -> Attr {
        self.make(parent, name, FileKind::File).unwrap()
    }

    pub fn dir(&self, parent: Ino, name: &[u8]) -> Attr {
        self.make(parent, name, FileKind::Dir).unwrap()
    }

    pub fn unlink(&self, parent: Ino, name: &[u8], dir: bool) -> Result<Option<Ino>> {
        self.unlink_held(parent, name, dir, Holder::NONE)
    }

    pub fn unlink_held(
        &self,
        parent: Ino,
        name: &[u8],
        dir: bool,
        holder: Holder<'_>,
    ) -> Result<Option<Ino>> {
        self.m.tree().unlink(&Unlink {
            vol: self.v,
            parent,
            name,
            dir,
            holder,
        })
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        flags: u32,
    ) -> Result<Option<Ino>> {
        self.m.tree().rename(&Rename {
            vol: self.v,
            parent,
            name,
            new_parent,
            new_name,
            flags,
            holder: Holder::NONE,
        })
    }

    pub fn commit(&self, ino: Ino, slices: Vec<Slice>) -> Result<Committed> {
        self.commit_all(&[write(ino, slices)], &[], &[])
    }

    pub fn commit_all(
        &self,
        files: &[FileWrite],
        degraded: &[DegradedBlock],
        inline: &[InlineBlock],
    ) -> Result<Committed> {
        self.m.files().commit(&Commit {
            vol: self.v,
            files: files.to_vec(),
            degraded: degraded.to_vec(),
            inline: inline.to_vec(),
            placement_epoch: 0,
            session: 0,
        })
    }

    pub fn attr(&self, ino: Ino) -> Result<Attr> {
        self.m.tree().get_attr(self.v, ino)
    }

    pub fn slices(&self, ino: Ino) -> Vec<Slice> {
        self.m.files().read(self.v, ino).unwrap().slices
    }

    /// Blocks waiting for GC, in order.
    pub fn gc(&self) -> Vec<BlockId> {
        let mut b: Vec<BlockId> = self
            .m
            .gc()
            .pending(100_000)
            .unwrap()
            .iter()
            .map(|(b, _)| *b)
            .collect();
        b.sort();
        b
    }
}

pub fn write(ino: Ino, slices: Vec<Slice>) -> FileWrite {
    FileWrite {
        ino,
        slices,
        mtime_ns: 1,
        replaces: vec![],
    }
}
