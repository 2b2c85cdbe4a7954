//! Directory attributes that came with this mount's own changes.
//!
//! The kernel drops a directory's cached attributes whenever a name in it
//! is created, and with `default_permissions` it then asks for them again
//! before the next lookup there: one more metadata round trip per create.
//! The metadata service answers a create with the parent as the change
//! left it; kept here for as long as the kernel itself may cache
//! attributes, it answers that getattr. Any other change this mount makes
//! to a directory forgets it; a change by another client shows within
//! `TTL`, as with the kernel's own cache.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tessera_common::{Attr, Ino};

/// How long attributes and names may be cached: by the kernel (the FUSE
/// mount's TTL) and here.
pub const TTL: Duration = Duration::from_secs(1);

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 1024;

#[derive(Default)]
pub struct DirAttrs {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    attrs: HashMap<Ino, (Attr, Instant)>,
    /// Bumped by every `forget`: an answer to a request sent before it may
    /// predate the change that forgot, so it is not kept.
    epoch: u64,
}

impl DirAttrs {
    /// To pass to `put` with the answer of a request sent after this.
    pub fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// Keeps `dir` as a change sent at `epoch` left it.
    pub fn put(&self, dir: Attr, epoch: u64) {
        let mut inner = self.lock();
        if inner.epoch != epoch {
            return;
        }
        let now = Instant::now();
        if inner.attrs.len() >= SWEEP_AT {
            inner
                .attrs
                .retain(|_, (_, at)| now.duration_since(*at) < TTL);
        }
        match inner.attrs.get(&dir.ino) {
            // Answers of concurrent creates may arrive out of order.
            Some((kept, _)) if kept.ctime_ns > dir.ctime_ns => {}
            _ => {
                inner.attrs.insert(dir.ino, (dir, now));
            }
        }
    }

    pub fn get(&self, ino: Ino) -> Option<Attr> {
        let inner = self.lock();
        let (attr, at) = inner.attrs.get(&ino)?;
        (at.elapsed() < TTL).then(|| attr.clone())
    }

    /// `ino` is being changed in a way whose result is not known here.
    pub fn forget(&self, ino: Ino) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.attrs.remove(&ino);
    }

    /// A change whose effect on directories is not known here.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        inner.epoch += 1;
        inner.attrs.clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("dir attrs lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_common::FileKind;

    fn dir(ino: Ino, ctime_ns: i64) -> Attr {
        Attr {
            ino,
            kind: FileKind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            size: 0,
            atime_ns: 0,
            mtime_ns: ctime_ns,
            ctime_ns,
        }
    }

    #[test]
    fn keeps_the_newest_answer() {
        let d = DirAttrs::default();
        let e = d.epoch();
        d.put(dir(5, 20), e);
        d.put(dir(5, 10), e);
        assert_eq!(d.get(5).unwrap().ctime_ns, 20);
        assert!(d.get(6).is_none());
    }

    #[test]
    fn an_answer_older_than_a_forget_is_not_kept() {
        let d = DirAttrs::default();
        let e = d.epoch();
        d.put(dir(5, 10), e);
        d.forget(5);
        assert!(d.get(5).is_none());
        // A create sent before the forget answers after it.
        d.put(dir(5, 30), e);
        assert!(d.get(5).is_none());
        d.put(dir(5, 40), d.epoch());
        assert_eq!(d.get(5).unwrap().ctime_ns, 40);
    }
}
