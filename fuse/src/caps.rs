//! The answers about privileges a mount keeps for an open file: that it
//! carries no `security.capability`, and no set-ID bits a write must drop.
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
//!
//! The mount also drops set-user-ID and set-group-ID bits itself
//! (`FUSE_HANDLE_KILLPRIV_V2`, which spares the kernel's question before
//! every write: see `fs.rs`): a write by a caller without `CAP_FSETID`
//! first checks the file's mode, and "no set-ID bits" is kept here the
//! same way, forgotten by every change of attributes through this mount.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use tessera_common::Ino;

use crate::dir_attrs::TTL;

/// The xattr that holds a file's capabilities (see `capabilities(7)`).
pub const CAPS: &[u8] = b"security.capability";

/// What this mount knows about one open file's capabilities.
#[derive(Default)]
struct Mark {
    opens: u32,
    /// Bumped by every change of the file's xattrs.
    generation: u64,
    /// When the file was last known to have none.
    absent_at: Option<Instant>,
    /// When the file was last known to have no set-ID bits to drop.
    plain_at: Option<Instant>,
}

/// What to do with a question about a file's capabilities.
#[derive(Debug, PartialEq, Eq)]
pub enum Ask {
    /// The file is known to have none.
    KnownAbsent,
    /// Ask the metadata service; tell [`Caps::absent`] an answer "none"
    /// with this generation.
    Unknown(u64),
    /// Not an open file: ask, and keep nothing.
    NotOpen,
}

#[derive(Default)]
pub struct Caps {
    files: Mutex<HashMap<Ino, Mark>>,
}

impl Caps {
    /// A handle of `ino` is opened. A file this mount just created (with
    /// permission bits `created`) has no xattrs, so none is known for it
    /// at once, nor set-ID bits unless it was made with them.
    pub fn opened(&self, ino: Ino, created: Option<u32>) {
        let mut files = self.files.lock().expect("caps lock");
        let m = files.entry(ino).or_default();
        m.opens += 1;
        if let Some(perm) = created {
            let now = Some(Instant::now());
            m.absent_at = now;
            if set_id_bits(perm) == 0 {
                m.plain_at = now;
            }
        }
    }

    /// A handle of `ino` is closed.
    pub fn released(&self, ino: Ino) {
        let mut files = self.files.lock().expect("caps lock");
        if let Some(m) = files.get_mut(&ino) {
            m.opens = m.opens.saturating_sub(1);
            if m.opens == 0 {
                files.remove(&ino);
            }
        }
    }

    pub fn ask(&self, ino: Ino) -> Ask {
        self.ask_within(ino, TTL, |m| m.absent_at)
    }

    /// Whether `ino` is known to have no set-ID bits a write must drop.
    pub fn ask_set_ids(&self, ino: Ino) -> Ask {
        self.ask_within(ino, TTL, |m| m.plain_at)
    }

    fn ask_within(&self, ino: Ino, ttl: Duration, known: impl Fn(&Mark) -> Option<Instant>) -> Ask {
        let files = self.files.lock().expect("caps lock");
        match files.get(&ino) {
            None => Ask::NotOpen,
            Some(m) if known(m).is_some_and(|at| at.elapsed() < ttl) => Ask::KnownAbsent,
            Some(m) => Ask::Unknown(m.generation),
        }
    }

    /// The metadata service answered "no capabilities" to a question asked
    /// at `generation`.
    pub fn absent(&self, ino: Ino, generation: u64) {
        let mut files = self.files.lock().expect("caps lock");
        if let Some(m) = files.get_mut(&ino) {
            if m.generation == generation {
                m.absent_at = Some(Instant::now());
            }
        }
    }

    /// The metadata service answered with a mode without set-ID bits to
    /// a question asked at `generation`.
    pub fn no_set_ids(&self, ino: Ino, generation: u64) {
        let mut files = self.files.lock().expect("caps lock");
        if let Some(m) = files.get_mut(&ino) {
            if m.generation == generation {
                m.plain_at = Some(Instant::now());
            }
        }
    }

    /// The file's xattrs or attributes are changing.
    pub fn forget(&self, ino: Ino) {
        let mut files = self.files.lock().expect("caps lock");
        if let Some(m) = files.get_mut(&ino) {
            m.generation += 1;
            m.absent_at = None;
            m.plain_at = None;
        }
    }
}

/// The set-ID bits of permission bits `perm` that a write, a truncate or a
/// change of owner drops: set-user-ID, and set-group-ID when the group may
/// execute (without it, the bit marks mandatory locking, not a privilege).
pub fn set_id_bits(perm: u32) -> u32 {
    let mut kill = perm & libc::S_ISUID;
    if perm & libc::S_ISGID != 0 && perm & libc::S_IXGRP != 0 {
        kill |= libc::S_ISGID;
    }
    kill
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_answer_is_kept_for_the_ttl_while_open() {
        let c = Caps::default();
        assert_eq!(c.ask(5), Ask::NotOpen);
        c.opened(5, None);
        let Ask::Unknown(g) = c.ask(5) else {
            panic!("nothing known yet")
        };
        c.absent(5, g);
        assert_eq!(c.ask(5), Ask::KnownAbsent);
        // Past the TTL the question is asked again.
        assert!(matches!(
            c.ask_within(5, Duration::ZERO, |m| m.absent_at),
            Ask::Unknown(_)
        ));
        c.released(5);
        assert_eq!(c.ask(5), Ask::NotOpen);
        c.opened(6, Some(0o755));
        assert_eq!(c.ask(6), Ask::KnownAbsent, "a new file has no xattrs");
        assert_eq!(c.ask_set_ids(6), Ask::KnownAbsent);
        c.opened(7, Some(0o4755));
        assert!(
            matches!(c.ask_set_ids(7), Ask::Unknown(_)),
            "made set-user-ID"
        );
    }

    #[test]
    fn an_answer_older_than_a_change_is_not_kept() {
        let c = Caps::default();
        c.opened(5, None);
        let Ask::Unknown(g) = c.ask(5) else {
            panic!("nothing known yet")
        };
        // setxattr starts while the question is on its way.
        c.forget(5);
        c.absent(5, g);
        assert!(matches!(c.ask(5), Ask::Unknown(_)));
        let Ask::Unknown(g) = c.ask(5) else { panic!() };
        c.absent(5, g);
        assert_eq!(c.ask(5), Ask::KnownAbsent);
        c.forget(5);
        assert!(matches!(c.ask(5), Ask::Unknown(_)));
    }

    #[test]
    fn set_id_answers_are_kept_like_capabilities_and_go_with_any_change() {
        let c = Caps::default();
        assert_eq!(c.ask_set_ids(5), Ask::NotOpen);
        c.opened(5, None);
        let Ask::Unknown(g) = c.ask_set_ids(5) else {
            panic!("nothing known yet")
        };
        c.no_set_ids(5, g);
        assert_eq!(c.ask_set_ids(5), Ask::KnownAbsent);
        // A chmod through this mount, or one racing the question.
        c.forget(5);
        assert!(matches!(c.ask_set_ids(5), Ask::Unknown(_)));
        c.no_set_ids(5, g);
        assert!(matches!(c.ask_set_ids(5), Ask::Unknown(_)));
    }

    #[test]
    fn the_set_id_bits_a_write_drops() {
        assert_eq!(set_id_bits(0o755), 0);
        assert_eq!(set_id_bits(0o4755), 0o4000);
        assert_eq!(set_id_bits(0o6755), 0o6000);
        assert_eq!(
            set_id_bits(0o6745),
            0o4000,
            "set-group-ID without group execute stays"
        );
        assert_eq!(set_id_bits(0o2710), 0o2000);
    }
}
