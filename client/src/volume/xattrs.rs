//! Extended attributes, and the one answer about them a mount keeps: that
//! an open file carries no `security.capability`.
//!
//! Before every write the kernel asks whether the file has file
//! capabilities, since a write must drop them. Asked of the metadata
//! service, that is one round trip per write (per 1 MiB of a sequential
//! writer). An open file's answer "none" is kept here for [`TTL`], as long
//! as the kernel keeps attributes, and a file this mount creates starts
//! with it. An xattr change through this mount forgets it (before and
//! after the change, so an answer that raced with the change is not
//! kept); one by another client shows within the TTL, as attribute
//! changes do.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tessera_common::Ino;
use tessera_proto::pb;

use super::Volume;
use crate::{dir_attrs::TTL, ClientError, Result};

/// The xattr that holds a file's capabilities (see `capabilities(7)`).
pub const CAPS: &[u8] = b"security.capability";

/// What this mount knows about an open file's capabilities.
#[derive(Default)]
pub(super) struct CapsMark {
    inner: Mutex<(u64, Option<Instant>)>,
}

impl CapsMark {
    /// None if the file is known to have no capabilities; else the
    /// generation to pass to [`CapsMark::absent`] with the answer.
    fn known_absent(&self, ttl: Duration) -> Option<u64> {
        let m = self.inner.lock().expect("caps mark lock");
        match m.1 {
            Some(at) if at.elapsed() < ttl => None,
            _ => Some(m.0),
        }
    }

    /// The metadata service answered "no capabilities" to a question asked
    /// at generation `generation`.
    fn absent(&self, generation: u64) {
        let mut m = self.inner.lock().expect("caps mark lock");
        if m.0 == generation {
            m.1 = Some(Instant::now());
        }
    }

    /// The file's xattrs are changing.
    fn forget(&self) {
        let mut m = self.inner.lock().expect("caps mark lock");
        m.0 += 1;
        m.1 = None;
    }
}

fn no_caps(ino: Ino) -> ClientError {
    ClientError::Meta {
        code: tonic::Code::NotFound,
        errno: Some(libc::ENODATA),
        message: format!("xattr security.capability not found on inode {ino}"),
    }
}

impl Volume {
    pub async fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        let entry = (name == CAPS).then(|| self.existing_entry(ino)).flatten();
        let generation = match &entry {
            Some(e) => match e.caps.known_absent(TTL) {
                None => return Err(no_caps(ino)),
                Some(g) => Some(g),
            },
            None => None,
        };
        let req = pb::XattrRequest {
            volume: self.id(),
            ino,
            name: Bytes::copy_from_slice(name),
        };
        match self.meta().get_xattr(req).await {
            Ok(resp) => Ok(resp.into_inner().value.to_vec()),
            Err(status) => {
                let err = ClientError::from(status);
                if let (Some(e), Some(g)) = (&entry, generation) {
                    if err.errno() == libc::ENODATA {
                        e.caps.absent(g);
                    }
                }
                Err(err)
            }
        }
    }

    pub async fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        self.inner.dir_attrs.forget(ino);
        self.forget_caps(ino);
        let req = pb::SetXattrRequest {
            volume: self.id(),
            ino,
            name: Bytes::copy_from_slice(name),
            value: Bytes::copy_from_slice(value),
            flags,
        };
        let r = self.meta().set_xattr(req).await;
        self.forget_caps(ino);
        r?;
        Ok(())
    }

    pub async fn list_xattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        let req = pb::GetAttrRequest {
            volume: self.id(),
            ino,
        };
        Ok(self
            .meta()
            .list_xattr(req)
            .await?
            .into_inner()
            .names
            .into_iter()
            .map(|n| n.to_vec())
            .collect())
    }

    pub async fn remove_xattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        self.inner.dir_attrs.forget(ino);
        self.forget_caps(ino);
        let req = pb::XattrRequest {
            volume: self.id(),
            ino,
            name: Bytes::copy_from_slice(name),
        };
        let r = self.meta().remove_xattr(req).await;
        self.forget_caps(ino);
        r?;
        Ok(())
    }

    /// Opens a file this mount has just created. A new file has no xattrs,
    /// so the question before its first write is answered here as well.
    pub fn open_created_file(&self, ino: Ino) {
        self.open_file(ino);
        if let Some(e) = self.existing_entry(ino) {
            if let Some(g) = e.caps.known_absent(TTL) {
                e.caps.absent(g);
            }
        }
    }

    fn forget_caps(&self, ino: Ino) {
        if let Some(e) = self.existing_entry(ino) {
            e.caps.forget();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_answer_is_kept_for_the_ttl() {
        let m = CapsMark::default();
        let g = m.known_absent(TTL).expect("nothing known yet");
        m.absent(g);
        assert_eq!(m.known_absent(TTL), None);
        // Past the TTL the question is asked again.
        assert!(m.known_absent(Duration::ZERO).is_some());
    }

    #[test]
    fn an_answer_older_than_a_change_is_not_kept() {
        let m = CapsMark::default();
        let g = m.known_absent(TTL).expect("nothing known yet");
        // setxattr starts while the question is on its way.
        m.forget();
        m.absent(g);
        assert!(m.known_absent(TTL).is_some());
        m.absent(m.known_absent(TTL).unwrap());
        assert_eq!(m.known_absent(TTL), None);
        m.forget();
        assert!(m.known_absent(TTL).is_some());
    }
}
