//! Set-ID bits and capabilities, dropped by the mount itself.
//!
//! With `FUSE_HANDLE_KILLPRIV_V2` (see `fs.rs`, `init`) the kernel marks a
//! file it found without set-ID bits and capabilities (S_NOSEC) and stops
//! checking before each write until its attributes are next refreshed,
//! which a process that only writes never causes. It also no longer drops
//! set-ID bits through a setattr of its own: a write by a caller without
//! `CAP_FSETID` comes flagged `FUSE_WRITE_KILL_SUIDGID`, and a truncate or
//! a change of owner comes without the new mode. So the mount drops them
//! as a local file system would: before every write, capabilities
//! (`security.capability`, whoever writes), and for a caller without
//! `CAP_FSETID` set-user-ID and set-group-ID if the group may execute
//! (`caps::set_id_bits`); at a truncate by such a caller and at a change
//! of owner, the set-ID bits. Each check of a write is a metadata call per
//! open file and TTL (`caps.rs` keeps the answer "none"); a change only
//! when there is something to drop. Capabilities or set-ID bits another
//! mount gives a file being written are dropped within the TTL, as before.

use fuser::Errno;
use tessera_client::ClientError;
use tessera_common::{Attr, Ino, SetAttr};
use tracing::warn;

use crate::{
    caps::{set_id_bits, Ask, CAPS},
    state::TesseraFs,
};

impl TesseraFs {
    /// Before every write: its capabilities go, and its set-ID bits too if
    /// the kernel says the caller lacks `CAP_FSETID` (`kill_set_ids`).
    pub(crate) fn drop_privileges_for_write(
        &self,
        ino: Ino,
        kill_set_ids: bool,
    ) -> Result<(), Errno> {
        self.drop_caps_for_write(ino)?;
        if kill_set_ids {
            self.drop_set_ids_for_write(ino)?;
        }
        Ok(())
    }

    /// A question that fails (the metadata service restarting) lets the
    /// write go on, as the kernel's own check did; a drop that fails fails
    /// the write.
    fn drop_caps_for_write(&self, ino: Ino) -> Result<(), Errno> {
        match self.capabilities(ino) {
            Ok(None) => {}
            Ok(Some(_)) => match self.remove_xattr_of(ino, CAPS) {
                Err(e) if e.errno() != libc::ENODATA => {
                    self.result("write", Err(e))?;
                }
                _ => {}
            },
            Err(e) => {
                warn!(volume = self.vol.name(), ino, error = %e, "asking for a file's capabilities before a write failed");
            }
        }
        Ok(())
    }

    /// The file's capabilities (`None`: it has none); an open file's
    /// "none" is answered from `caps.rs` while it knows, and kept there.
    pub(crate) fn capabilities(&self, ino: Ino) -> Result<Option<Vec<u8>>, ClientError> {
        let ask = self.caps.ask(ino);
        if ask == Ask::KnownAbsent {
            return Ok(None);
        }
        match self.vol.get_xattr(ino, CAPS) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.errno() == libc::ENODATA => {
                if let Ask::Unknown(generation) = ask {
                    self.caps.absent(ino, generation);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Removes xattr `name`; what `caps.rs` knows of the file is forgotten
    /// before and after, so an answer that raced with it is not kept.
    pub(crate) fn remove_xattr_of(&self, ino: Ino, name: &[u8]) -> Result<(), ClientError> {
        self.caps.forget(ino);
        let removed = self.vol.remove_xattr(ino, name);
        self.caps.forget(ino);
        removed
    }

    fn drop_set_ids_for_write(&self, ino: Ino) -> Result<(), Errno> {
        let ask = self.caps.ask_set_ids(ino);
        if ask == Ask::KnownAbsent {
            return Ok(());
        }
        let a = match self.vol.getattr(ino) {
            Ok(a) => a,
            Err(e) => {
                warn!(volume = self.vol.name(), ino, error = %e, "asking for a file's mode before a write failed");
                return Ok(());
            }
        };
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

/// Whether process `pid` may keep set-ID bits when it truncates
/// (`CAP_FSETID` in its effective set); by its uid when its status cannot
/// be read (it has exited). fuser does not pass the kernel's own answer
/// (`FATTR_KILL_SUIDGID`) with a setattr as it does with a write. The
/// status shows capabilities in the caller's user namespace: a root of
/// another namespace keeps the bits here where a local file system drops
/// them.
pub(crate) fn may_keep_set_ids(pid: u32, uid: u32) -> bool {
    const CAP_FSETID: u32 = 4;
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return uid == 0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .map_or(uid == 0, |caps| caps & (1 << CAP_FSETID) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_asked_by_its_capabilities() {
        let me = std::process::id();
        let uid = unsafe { libc::geteuid() };
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap();
        let has = u64::from_str_radix(eff.trim(), 16).unwrap() & (1 << 4) != 0;
        assert_eq!(may_keep_set_ids(me, uid), has);
        // A process that is gone: by its uid.
        assert!(may_keep_set_ids(u32::MAX, 0));
        assert!(!may_keep_set_ids(u32::MAX, 1000));
    }
}
