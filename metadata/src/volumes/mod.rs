//! Volumes: create, inspect, list, delete; their settings and usage.

pub(crate) mod usage;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tessera_common::{
    validate, FileKind, Protection, StatFs, VolumeId, VolumeInfo, VolumeSpec, ROOT_INO,
};
use tracing::info;

pub use usage::Used;

use crate::{
    fs, keys,
    meta::{now_ns, Meta},
    records::{decode, load, store, Inode, VolumeRecord},
    store::transact,
    MetaError, Result,
};

/// Most labels a volume may carry, and their sizes.
const MAX_LABELS: usize = 64;
const MAX_LABEL_LEN: usize = 256;

/// Settings of a volume kept beside its record (`Q`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSettings {
    /// Shards that must be durable before a write is acknowledged; 0: the
    /// protection's default (K+1 when M >= 1).
    pub min_durable: u8,
}

impl VolumeSettings {
    /// The effective minimum for `p`.
    pub fn min_durable_for(&self, p: Protection) -> usize {
        match self.min_durable {
            0 => p.min_durable(),
            n => usize::from(n),
        }
    }
}

/// The volumes domain of a [`Meta`].
#[derive(Clone, Copy)]
pub struct Volumes<'m> {
    pub(crate) meta: &'m Meta,
}

impl Volumes<'_> {
    pub fn create(&self, spec: &VolumeSpec) -> Result<VolumeRecord> {
        let name = spec.name.as_str();
        validate::volume_name(name)?;
        if !(validate::MIN_VOLUME_SIZE..=validate::MAX_VOLUME_SIZE).contains(&spec.size) {
            return Err(MetaError::Invalid(format!(
                "volume size {} must be between {} and {} bytes",
                spec.size,
                validate::MIN_VOLUME_SIZE,
                validate::MAX_VOLUME_SIZE
            )));
        }
        let protection = spec.protection;
        if spec.min_durable != 0 {
            protection.check_min_durable(usize::from(spec.min_durable))?;
        }
        if spec.labels.len() > MAX_LABELS
            || spec
                .labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
        {
            return Err(MetaError::Invalid(format!(
                "at most {MAX_LABELS} labels with non-empty keys of at most {MAX_LABEL_LEN} bytes"
            )));
        }
        let store_ = self.meta.store();
        if store_.begin().get(&keys::volume_name(name))?.is_some() {
            return Err(MetaError::Exists {
                what: format!("volume {name}"),
            });
        }
        // Fails with a clear error if the cluster cannot hold this class.
        self.meta.cluster().placement(protection)?;
        let id = self.meta.ids.volume.alloc(store_, 1)?;
        let now = now_ns();
        let record = VolumeRecord {
            id,
            name: name.to_string(),
            size: spec.size,
            protection,
            labels: spec.labels.clone(),
            created_ms: now / 1_000_000,
        };
        let root = Inode {
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            atime_ns: now,
            mtime_ns: now,
            ctime_ns: now,
            parent: ROOT_INO,
            target: Vec::new(),
        };
        let settings = VolumeSettings {
            min_durable: spec.min_durable,
        };
        transact(store_, |txn| {
            let name_key = keys::volume_name(name);
            if txn.get(&name_key)?.is_some() {
                return Err(MetaError::Exists {
                    what: format!("volume {name}"),
                });
            }
            txn.put(&name_key, &id.to_be_bytes())?;
            store(txn, &keys::volume(id), &record)?;
            store(txn, &keys::volume_settings(id), &settings)?;
            store(txn, &keys::inode(id, ROOT_INO), &root)
        })?;
        self.meta.usage.account(id, 0, 1);
        info!(volume = name, id, %protection, size = spec.size, "volume created");
        Ok(record)
    }

    pub fn get(&self, name: &str) -> Result<VolumeRecord> {
        validate::volume_name(name)?;
        let not_found = || MetaError::not_found(format!("volume {name}"));
        let id = transact(self.meta.store(), |txn| {
            let v = txn.get(&keys::volume_name(name))?.ok_or_else(not_found)?;
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| MetaError::Corrupt {
                key: keys::volume_name(name),
                why: "volume id is not 8 bytes".into(),
            })?;
            Ok(u64::from_be_bytes(bytes))
        })?;
        self.by_id(id)
    }

    pub fn by_id(&self, vol: VolumeId) -> Result<VolumeRecord> {
        let key = keys::volume(vol);
        match self.meta.store().begin().get(&key)? {
            Some(v) => decode(&key, &v),
            None => Err(MetaError::not_found(format!("volume {vol}"))),
        }
    }

    /// A volume as clients see it: with its usage and settings.
    pub fn info(&self, v: VolumeRecord) -> Result<VolumeInfo> {
        let used = self.usage(v.id);
        let min_durable = self.settings(v.id)?.min_durable_for(v.protection);
        Ok(VolumeInfo {
            id: v.id,
            name: v.name,
            size: v.size,
            protection: v.protection,
            labels: v.labels,
            created_ms: v.created_ms,
            min_durable,
            used_bytes: used.bytes,
            inodes: used.inodes,
            inline_blocks: true,
            merges: true,
            deferred_writes: true,
        })
    }

    /// A volume's settings (the defaults for a volume created without).
    pub fn settings(&self, id: VolumeId) -> Result<VolumeSettings> {
        let key = keys::volume_settings(id);
        match self.meta.store().begin().get(&key)? {
            Some(v) => decode(&key, &v),
            None => Ok(VolumeSettings::default()),
        }
    }

    pub fn usage(&self, id: VolumeId) -> Used {
        self.meta.usage.get(id)
    }

    /// Capacity figures of a volume, for statfs.
    pub fn stat_fs(&self, vol: VolumeId) -> Result<StatFs> {
        let volume = self.by_id(vol)?;
        let used = self.usage(vol);
        Ok(StatFs {
            size: volume.size,
            used: used.bytes,
            inodes: used.inodes,
        })
    }

    pub fn list(&self) -> Result<Vec<VolumeRecord>> {
        let (start, end) = keys::prefix_range(&[keys::VOLUME]);
        let rows = self.meta.store().begin().scan(&start, &end, usize::MAX)?;
        rows.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Deletes a volume: its name and record at once, its file tree (and
    /// with it the references that keep its blocks) in the background
    /// ([`crate::gc::GcQueue::finish_deferred`]), so removing a large
    /// volume answers at once.
    pub fn delete(&self, name: &str) -> Result<()> {
        let vol = self.begin_delete(name)?;
        info!(
            volume = name,
            id = vol.id,
            "volume deleted; its tree goes in the background"
        );
        self.meta.gc_wanted.notify_one();
        Ok(())
    }

    /// Removes the volume's name and record, and marks its tree for
    /// deletion (`Z`), in one transaction: from here on nothing new can
    /// reach the tree, and a restart finishes the deletion.
    pub(crate) fn begin_delete(&self, name: &str) -> Result<VolumeRecord> {
        let vol = self.get(name)?;
        transact(self.meta.store(), |txn| {
            txn.delete(&keys::volume_name(name))?;
            if load::<VolumeRecord>(txn, &keys::volume(vol.id))?.is_none() {
                return Err(MetaError::not_found(format!("volume {name}")));
            }
            txn.delete(&keys::volume_settings(vol.id))?;
            txn.put(&keys::volume_purge(vol.id), b"")?;
            txn.delete(&keys::volume(vol.id)).map_err(MetaError::from)
        })?;
        Ok(vol)
    }

    /// Deletes the tree of a removed volume in steps (`fs/release.rs`), so
    /// no transaction grows without bound; each step's slices drop their
    /// block references (queueing blocks left without any for GC) in the
    /// transaction that deletes them. Idempotent: safe to run again after
    /// a crash.
    pub(crate) fn purge_tree(&self, vol: VolumeId) -> Result<()> {
        for prefix in keys::VOLUME_TREE {
            let (start, end) = keys::prefix_range(&keys::in_volume(prefix, vol));
            let slices = prefix == keys::SLICE;
            while transact(self.meta.store(), |txn| {
                fs::release::delete_rows(txn, &start, &end, slices, None)
            })? {}
        }
        transact(self.meta.store(), |txn| {
            txn.delete(&keys::volume_purge(vol))
                .map_err(MetaError::from)
        })?;
        self.meta.usage.forget(vol);
        Ok(())
    }

    /// Finishes the deletions of removed volumes' trees.
    pub(crate) fn resume_purges(&self) -> Result<()> {
        let (start, end) = keys::prefix_range(&[keys::VOLUME_PURGE]);
        for (k, _) in self.meta.store().begin().scan(&start, &end, usize::MAX)? {
            let vol = keys::id_of(&k, keys::VOLUME_PURGE)?;
            info!(volume = vol, "deleting the tree of a removed volume");
            self.purge_tree(vol)?;
        }
        Ok(())
    }

    /// Computes every volume's usage from its inodes (at open).
    pub(crate) fn load_usage(&self) -> Result<()> {
        let mut all = HashMap::new();
        for vol in self.list()? {
            let mut u = Used::default();
            let prefix = keys::in_volume(keys::INODE, vol.id);
            let (mut start, end) = keys::prefix_range(&prefix);
            loop {
                let batch = self.meta.store().begin().scan(&start, &end, 4096)?;
                let Some(last) = batch.last() else { break };
                start = last.0.clone();
                start.push(0);
                for (k, v) in &batch {
                    let inode: Inode = decode(k, v)?;
                    u.inodes += 1;
                    u.bytes += inode.size;
                }
            }
            all.insert(vol.id, u);
        }
        self.meta.usage.load(all);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
