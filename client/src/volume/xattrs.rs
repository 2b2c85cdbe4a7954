//! Extended attributes.

use tessera_common::Ino;

use super::Volume;
use crate::Result;

impl Volume {
    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> Result<Vec<u8>> {
        self.inner.names.get_xattr(self.id(), ino, name)
    }

    /// setxattr(2), with its flags.
    pub fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: u32) -> Result<()> {
        let r = self
            .inner
            .names
            .set_xattr(self.id(), ino, name, value, flags);
        self.inner.syncs.changed();
        self.inner.name_cache.changed(ino);
        r
    }

    pub fn list_xattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>> {
        self.inner.names.list_xattr(self.id(), ino)
    }

    pub fn remove_xattr(&self, ino: Ino, name: &[u8]) -> Result<()> {
        let r = self.inner.names.remove_xattr(self.id(), ino, name);
        self.inner.syncs.changed();
        self.inner.name_cache.changed(ino);
        r
    }
}
