//! The open handles of one file in a mount, and the failed writes they
//! report.
//!
//! A block dropped after a failure (a quota, the file removed) is
//! numbered, and every handle open then reports it once, at its next
//! write, flush or fsync (like the kernel's `errseq`): one process's close
//! cannot hide it from another's fsync. A block put back to be tried again
//! (a service unreachable) is no such failure: its bytes wait, and every
//! flush and fsync fails with why while they do.

use std::collections::HashMap;

use tessera_common::Ino;

use crate::{ClientError, Result};

#[derive(Default)]
pub(crate) struct Handles {
    /// The latest dropped block's failure, and its number.
    latest: Option<ClientError>,
    seq: u64,
    /// No handle reported the latest failure yet.
    unseen: bool,
    /// Per open handle, the number of the last failure it reported.
    handles: HashMap<u64, u64>,
    /// Why bytes were last put back, and how many times they were.
    held: Option<ClientError>,
    pub holds: u64,
}

impl Handles {
    /// Handle `fh` opened the file: it reports failures from now on, and
    /// one that no handle reported yet.
    pub fn opened(&mut self, fh: u64) {
        let seen = self.seq - u64::from(self.unseen);
        self.handles.insert(fh, seen);
    }

    pub fn closed(&mut self, fh: u64) {
        self.handles.remove(&fh);
    }

    /// Open handles of the file in this mount.
    pub fn opens(&self) -> usize {
        self.handles.len()
    }

    /// Nothing open and nothing to report.
    pub fn quiet(&self) -> bool {
        self.handles.is_empty() && !self.unseen
    }

    /// A block was dropped: every open handle reports `err` once.
    pub fn failed(&mut self, err: &ClientError) {
        self.latest = Some(err.clone());
        self.seq += 1;
        self.unseen = true;
    }

    /// A block was put back after `err`, to be tried again.
    pub fn held(&mut self, err: &ClientError) {
        self.held = Some(err.clone());
        self.holds += 1;
    }

    /// The failure handle `fh` has not reported yet, if any (none for a
    /// flush of the mount's own, `fh` None).
    pub fn take(&mut self, ino: Ino, fh: Option<u64>) -> Result<()> {
        if self.latest.is_none() {
            return Ok(()); // every write: no lookup unless one failed
        }
        let Some(seen) = fh.and_then(|fh| self.handles.get_mut(&fh)) else {
            return Ok(());
        };
        match &self.latest {
            Some(e) if *seen < self.seq => {
                *seen = self.seq;
                self.unseen = false;
                Err(earlier_write(ino, e))
            }
            _ => Ok(()),
        }
    }

    /// A failure no handle reported (the file was closed before it).
    pub fn unreported(&self, ino: Ino) -> Result<()> {
        match &self.latest {
            Some(e) if self.unseen => Err(earlier_write(ino, e)),
            _ => Ok(()),
        }
    }

    /// Why bytes wait in the buffer.
    pub fn why_held(&self, ino: Ino) -> ClientError {
        let e = self
            .held
            .clone()
            .unwrap_or(ClientError::PipelineDropped { ino });
        earlier_write(ino, &e)
    }
}

fn earlier_write(ino: Ino, e: &ClientError) -> ClientError {
    match e {
        ClientError::EarlierWrite { .. } => e.clone(),
        _ => ClientError::EarlierWrite {
            ino,
            errno: e.errno(),
            why: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every open handle reports a failure once; a handle opened after it
    /// was reported does not, one opened before anyone did does.
    #[test]
    fn each_handle_reports_a_failure_once() {
        let mut f = Handles::default();
        f.opened(1);
        f.opened(2);
        f.failed(&ClientError::Invalid("no room".into()));
        assert!(f.take(9, None).is_ok(), "the mount's own flush");
        assert!(f.take(9, Some(1)).is_err());
        assert!(f.take(9, Some(1)).is_ok());
        f.opened(3);
        assert!(f.take(9, Some(3)).is_ok());
        assert!(f.take(9, Some(2)).is_err());
        f.closed(1);
        f.closed(2);
        f.closed(3);
        assert!(f.quiet());
        // A failure after the last close goes to the next opener.
        f.failed(&ClientError::Invalid("no room".into()));
        assert!(!f.quiet());
        assert!(f.unreported(9).is_err());
        f.opened(4);
        let e = f.take(9, Some(4)).unwrap_err();
        assert_eq!(e.errno(), libc::EINVAL);
        assert!(f.unreported(9).is_ok());
    }

    /// Bytes put back are no failure to report: they are tried again.
    #[test]
    fn bytes_put_back_are_not_reported_as_lost() {
        let mut f = Handles::default();
        f.opened(1);
        f.held(&ClientError::Invalid("unreachable".into()));
        assert!(f.take(9, Some(1)).is_ok());
        assert!(f.unreported(9).is_ok());
        assert_eq!(f.holds, 1);
        assert_eq!(f.why_held(9).errno(), libc::EINVAL);
    }
}
