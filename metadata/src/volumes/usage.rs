//! Bytes and inodes each volume uses, kept in memory: computed from the
//! inodes at start and updated by every change that commits. The inodes
//! are the durable truth.
//!
//! Growth is reserved before its transaction commits, against the volume's
//! size and what other writers have reserved meanwhile, so two writers
//! racing for the last bytes of a volume can never both get them. A
//! reservation that does not commit (conflict, failure) is given back.

use std::{
    collections::HashMap,
    sync::{Mutex, MutexGuard},
};

use tessera_common::VolumeId;

use crate::{MetaError, Result};

/// What one volume uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    pub bytes: u64,
    pub inodes: u64,
}

#[derive(Default)]
struct Counts {
    used: Used,
    /// Bytes reserved by transactions still running.
    reserved: u64,
}

#[derive(Default)]
pub(crate) struct Usage {
    volumes: Mutex<HashMap<VolumeId, Counts>>,
}

impl Usage {
    fn lock(&self) -> MutexGuard<'_, HashMap<VolumeId, Counts>> {
        self.volumes.lock().expect("usage lock")
    }

    pub fn get(&self, vol: VolumeId) -> Used {
        self.lock().get(&vol).map(|c| c.used).unwrap_or_default()
    }

    /// Replaces every volume's figures (at start).
    pub fn load(&self, all: HashMap<VolumeId, Used>) {
        *self.lock() = all
            .into_iter()
            .map(|(v, used)| (v, Counts { used, reserved: 0 }))
            .collect();
    }

    pub fn forget(&self, vol: VolumeId) {
        self.lock().remove(&vol);
    }

    /// Applies a committed change that frees or adds without a quota
    /// check (a shrink, a new inode).
    pub fn account(&self, vol: VolumeId, bytes: i64, inodes: i64) {
        let mut all = self.lock();
        let c = all.entry(vol).or_default();
        c.used.bytes = c.used.bytes.saturating_add_signed(bytes);
        c.used.inodes = c.used.inodes.saturating_add_signed(inodes);
    }

    /// Reserves `bytes` of growth of volume `vol` (`name`, `size` bytes),
    /// or fails with [`MetaError::Quota`] if used and reserved bytes leave
    /// no room for them.
    pub fn reserve(
        &self,
        vol: VolumeId,
        name: &str,
        size: u64,
        bytes: u64,
    ) -> Result<Reservation<'_>> {
        if bytes > 0 {
            let mut all = self.lock();
            let c = all.entry(vol).or_default();
            let taken = c.used.bytes.saturating_add(c.reserved);
            if taken.saturating_add(bytes) > size {
                return Err(MetaError::Quota {
                    volume: name.to_string(),
                    used: taken,
                    size,
                });
            }
            c.reserved += bytes;
        }
        Ok(Reservation {
            usage: self,
            vol,
            bytes,
        })
    }
}

/// Growth reserved for a transaction: counted as used once the transaction
/// committed ([`Reservation::commit`]), given back if it is dropped.
#[must_use = "a reservation is given back when dropped"]
pub(crate) struct Reservation<'u> {
    usage: &'u Usage,
    vol: VolumeId,
    bytes: u64,
}

impl Reservation<'_> {
    /// The transaction committed: the reserved bytes are used now.
    pub fn commit(mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        if bytes > 0 {
            let mut all = self.usage.lock();
            let c = all.entry(self.vol).or_default();
            c.reserved = c.reserved.saturating_sub(bytes);
            c.used.bytes = c.used.bytes.saturating_add(bytes);
        }
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            if let Some(c) = self.usage.lock().get_mut(&self.vol) {
                c.reserved = c.reserved.saturating_sub(self.bytes);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn racing_reservations_never_pass_the_size() {
        let u = Usage::default();
        u.account(1, 60, 1);
        let a = u.reserve(1, "v", 100, 30).unwrap();
        // 60 used + 30 reserved: 20 more would pass 100.
        assert!(matches!(
            u.reserve(1, "v", 100, 20),
            Err(MetaError::Quota { used: 90, .. })
        ));
        drop(a);
        assert_eq!(u.get(1).bytes, 60);
        let b = u.reserve(1, "v", 100, 40).unwrap();
        b.commit();
        assert_eq!(
            u.get(1),
            Used {
                bytes: 100,
                inodes: 1
            }
        );
        assert!(u.reserve(1, "v", 100, 1).is_err());
        // Nothing to reserve always fits.
        u.reserve(1, "v", 100, 0).unwrap().commit();
    }
}
