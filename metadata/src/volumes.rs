//! Volumes: create, inspect, list, delete.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera_common::{validate, Protection, VolumeId, ROOT_INO};
use tracing::info;

use crate::{
    blocks, keys,
    meta::{now_ns, Meta},
    records::{decode, load, store, Inode, Slice, VolumeRecord},
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

impl Meta {
    pub fn create_volume(
        &self,
        name: &str,
        size: u64,
        protection: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<VolumeRecord> {
        self.create_volume_with(name, size, protection, labels, VolumeSettings::default())
    }

    /// [`Meta::create_volume`] with settings.
    pub fn create_volume_with(
        &self,
        name: &str,
        size: u64,
        protection: &str,
        labels: BTreeMap<String, String>,
        settings: VolumeSettings,
    ) -> Result<VolumeRecord> {
        validate::volume_name(name)?;
        if !(validate::MIN_VOLUME_SIZE..=validate::MAX_VOLUME_SIZE).contains(&size) {
            return Err(MetaError::Invalid(format!(
                "volume size {size} must be between {} and {} bytes",
                validate::MIN_VOLUME_SIZE,
                validate::MAX_VOLUME_SIZE
            )));
        }
        let protection: Protection = protection.parse()?;
        if settings.min_durable != 0 {
            protection.check_min_durable(usize::from(settings.min_durable))?;
        }
        if labels.len() > MAX_LABELS
            || labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_LABEL_LEN || v.len() > MAX_LABEL_LEN)
        {
            return Err(MetaError::Invalid(format!(
                "at most {MAX_LABELS} labels with non-empty keys of at most {MAX_LABEL_LEN} bytes"
            )));
        }
        if self.store.begin().get(&keys::volume_name(name))?.is_some() {
            return Err(MetaError::Exists {
                what: format!("volume {name}"),
            });
        }
        // Fails with a clear error if the cluster cannot hold this class.
        self.placement(protection)?;
        let id = self.volume_ids.alloc(self.store.as_ref(), 1)?;
        let now = now_ns();
        let record = VolumeRecord {
            id,
            name: name.to_string(),
            size,
            protection,
            labels,
            created_ms: now / 1_000_000,
        };
        let root = Inode {
            kind: 2,
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
        transact(self.store.as_ref(), |txn| {
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
        self.account(id, 0, 1);
        info!(volume = name, id, %protection, size, "volume created");
        Ok(record)
    }

    pub fn get_volume(&self, name: &str) -> Result<VolumeRecord> {
        validate::volume_name(name)?;
        let not_found = || MetaError::not_found(format!("volume {name}"));
        let id = transact(self.store.as_ref(), |txn| {
            let v = txn.get(&keys::volume_name(name))?.ok_or_else(not_found)?;
            let bytes: [u8; 8] = v.as_slice().try_into().map_err(|_| MetaError::Corrupt {
                key: keys::volume_name(name),
                why: "volume id is not 8 bytes".into(),
            })?;
            Ok(u64::from_be_bytes(bytes))
        })?;
        self.volume_by_id(id)
    }

    /// A volume's settings (the defaults for a volume created without).
    pub fn volume_settings(&self, id: VolumeId) -> Result<VolumeSettings> {
        let key = keys::volume_settings(id);
        match self.store.begin().get(&key)? {
            Some(v) => decode(&key, &v),
            None => Ok(VolumeSettings::default()),
        }
    }

    pub fn list_volumes(&self) -> Result<Vec<VolumeRecord>> {
        let (start, end) = keys::prefix_range(&[keys::VOLUME]);
        let rows = self.store.begin().scan(&start, &end, usize::MAX)?;
        rows.iter().map(|(k, v)| decode(k, v)).collect()
    }

    /// Deletes a volume and its whole file tree.
    pub fn delete_volume(&self, name: &str) -> Result<()> {
        let vol = self.begin_delete(name)?;
        self.purge_tree(vol.id)?;
        info!(volume = name, id = vol.id, "volume deleted");
        Ok(())
    }

    /// Removes the volume's name and record, and marks its tree for
    /// deletion (`Z`), in one transaction: from here on nothing new can
    /// reach the tree, and a restart finishes the deletion.
    pub(crate) fn begin_delete(&self, name: &str) -> Result<VolumeRecord> {
        let vol = self.get_volume(name)?;
        transact(self.store.as_ref(), |txn| {
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

    /// Deletes the tree of a removed volume in batches, so no transaction
    /// grows without bound; each batch of slices drops its block references
    /// (queueing blocks left without any for GC) in the transaction that
    /// deletes them. Idempotent: safe to run again after a crash.
    pub(crate) fn purge_tree(&self, vol: VolumeId) -> Result<()> {
        for prefix in [
            keys::CHUNK,
            keys::INODE,
            keys::DENTRY,
            keys::XATTR,
            keys::ORPHAN,
        ] {
            let (start, end) = keys::prefix_range(&keys::in_volume(prefix, vol));
            loop {
                let done = transact(self.store.as_ref(), |txn| {
                    let rows = txn.scan(&start, &end, 1024)?;
                    for (k, v) in &rows {
                        if prefix == keys::CHUNK {
                            blocks::drop_refs(txn, &decode::<Vec<Slice>>(k, v)?)?;
                        }
                        txn.delete(k)?;
                    }
                    Ok(rows.is_empty())
                })?;
                if done {
                    break;
                }
            }
        }
        transact(self.store.as_ref(), |txn| {
            txn.delete(&keys::volume_purge(vol))
                .map_err(MetaError::from)
        })?;
        self.usage.lock().expect("usage lock").remove(&vol);
        Ok(())
    }

    /// Finishes the deletions a crash interrupted.
    pub(crate) fn resume_purges(&self) -> Result<()> {
        let (start, end) = keys::prefix_range(&[keys::VOLUME_PURGE]);
        for (k, _) in self.store.begin().scan(&start, &end, usize::MAX)? {
            let vol = keys::block_of(&k, keys::VOLUME_PURGE)?;
            info!(volume = vol, "finishing the deletion of a removed volume");
            self.purge_tree(vol)?;
        }
        Ok(())
    }
}
