//! One lock per volume name: requests on one volume (a Mount and a Remove,
//! say) never overlap, and requests on different volumes never wait for
//! each other, however slow one of them is (a mount process starting, a
//! metadata service that does not answer).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

#[derive(Default)]
pub(super) struct VolumeLocks {
    held: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Volume `name` is ours until this is dropped.
pub(super) struct VolumeGuard<'a> {
    locks: &'a VolumeLocks,
    name: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl VolumeLocks {
    pub async fn lock(&self, name: &str) -> VolumeGuard<'_> {
        let lock = self
            .held
            .lock()
            .expect("volume locks")
            .entry(name.to_string())
            .or_default()
            .clone();
        VolumeGuard {
            locks: self,
            name: name.to_string(),
            guard: Some(lock.lock_owned().await),
        }
    }
}

impl Drop for VolumeGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.locks.held.lock().expect("volume locks");
        // Nobody else holds or waits for it: forget it, so names come and
        // go without the map growing.
        if held
            .get(&self.name)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            held.remove(&self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_volume_waits_for_itself_only() {
        let locks = Arc::new(VolumeLocks::default());
        let a = locks.lock("a").await;
        // Another volume goes ahead at once.
        let b = tokio::time::timeout(Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok(), "volume b waited for volume a");
        drop(b);
        // The same volume waits until the first holder is done.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _second = locks.lock("a").await;
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
        assert!(locks.held.lock().unwrap().is_empty(), "locks are forgotten");
    }
}
