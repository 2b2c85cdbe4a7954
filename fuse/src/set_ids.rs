//! Set-user-ID and set-group-ID bits, dropped by the mount itself.
//!
//! With `FUSE_HANDLE_KILLPRIV_V2` (see `fs.rs`, `init`) the kernel no
//! longer drops these bits through a setattr of its own: a write by a
//! caller without `CAP_FSETID` comes flagged `FUSE_WRITE_KILL_SUIDGID`,
//! and a truncate or a change of owner comes without the new mode. The
//! mount then drops them as a local file system would: set-user-ID, and
//! set-group-ID if the group may execute (`caps::set_id_bits`). A write's
//! check costs one getattr per open file and TTL (`caps.rs` keeps the
//! answer "none"), and a setattr only when there are bits to drop.

use fuser::Errno;
use tessera_common::{Attr, Ino, SetAttr};

use crate::{
    caps::{set_id_bits, Ask},
    state::TesseraFs,
};

impl TesseraFs {
    /// Before a write by a caller without `CAP_FSETID`.
    pub(crate) fn drop_set_ids_for_write(&self, ino: Ino) -> Result<(), Errno> {
        let ask = self.caps.ask_set_ids(ino);
        if ask == Ask::KnownAbsent {
            return Ok(());
        }
        let a = self.result("write", self.vol.getattr(ino))?;
        if set_id_bits(a.perm) != 0 {
            self.caps.forget(ino);
            self.drop_set_ids(&a)?;
            self.caps.forget(ino);
        } else if let Ask::Unknown(generation) = ask {
            self.caps.no_set_ids(ino, generation);
        }
        Ok(())
    }

    /// Drops the set-ID bits of the file `a` describes, if it has any;
    /// returns its attributes after.
    pub(crate) fn drop_set_ids(&self, a: &Attr) -> Result<Attr, Errno> {
        let kill = set_id_bits(a.perm);
        if kill == 0 {
            return Ok(a.clone());
        }
        self.dir_attrs.forget(a.ino);
        let change = SetAttr {
            perm: Some(a.perm & !kill),
            ..SetAttr::default()
        };
        self.result("setattr", self.vol.setattr(a.ino, &change))
    }
}
