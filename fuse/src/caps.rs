//! The one answer about xattrs a mount keeps: that an open file carries no
//! `security.capability`.
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
    /// A handle of `ino` is opened; a file this mount just created has no
    /// xattrs, so none is known for it at once.
    pub fn opened(&self, ino: Ino, created: bool) {
        let mut files = self.files.lock().expect("caps lock");
        let m = files.entry(ino).or_default();
        m.opens += 1;
        if created {
            m.absent_at = Some(Instant::now());
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
        self.ask_within(ino, TTL)
    }

    fn ask_within(&self, ino: Ino, ttl: Duration) -> Ask {
        let files = self.files.lock().expect("caps lock");
        match files.get(&ino) {
            None => Ask::NotOpen,
            Some(m) if m.absent_at.is_some_and(|at| at.elapsed() < ttl) => Ask::KnownAbsent,
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

    /// The file's xattrs are changing.
    pub fn forget(&self, ino: Ino) {
        let mut files = self.files.lock().expect("caps lock");
        if let Some(m) = files.get_mut(&ino) {
            m.generation += 1;
            m.absent_at = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_absent_answer_is_kept_for_the_ttl_while_open() {
        let c = Caps::default();
        assert_eq!(c.ask(5), Ask::NotOpen);
        c.opened(5, false);
        let Ask::Unknown(g) = c.ask(5) else {
            panic!("nothing known yet")
        };
        c.absent(5, g);
        assert_eq!(c.ask(5), Ask::KnownAbsent);
        // Past the TTL the question is asked again.
        assert!(matches!(c.ask_within(5, Duration::ZERO), Ask::Unknown(_)));
        c.released(5);
        assert_eq!(c.ask(5), Ask::NotOpen);
        c.opened(6, true);
        assert_eq!(c.ask(6), Ask::KnownAbsent, "a new file has no xattrs");
    }

    #[test]
    fn an_answer_older_than_a_change_is_not_kept() {
        let c = Caps::default();
        c.opened(5, false);
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
}
