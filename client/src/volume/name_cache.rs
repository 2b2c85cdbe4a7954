//! Names this mount looked up, a page at a time.
//!
//! A lookup is a metadata round trip, and a program that stats every file
//! of a directory, creates many files or removes them (a database's WAL
//! segments, `rm -r`, `rsync`, `git status`) makes one per name. A lookup
//! that misses here asks instead for a page: the directory's entries from
//! the name on, in name order, each with its attributes. The names after
//! it up to the page's last are then answered here for [`PAGE_TTL`]. A
//! page starts at [`FIRST_PAGE`] entries (a lone lookup costs about what
//! it did) and grows fourfold, up to [`MAX_PAGE`], while lookups keep
//! going past the previous page's end.
//!
//! Only names that exist are answered from a page. A name a page says is
//! absent is asked for again (one lookup, no page): another mount may
//! have created and closed it since, and close-to-open consistency says
//! an open must find it. (Answering absent names too made 1.75x the
//! creates per second, but an open right after another mount's create
//! failed with ENOENT; that waits for the metadata service to call back
//! mounts whose pages a change makes stale.)
//!
//! What this mount changes, it changes here too: a create adds its name
//! to a page that covers it, an unlink removes it, and every other change
//! (attributes, xattrs, links, a file's data) marks the inode changed, so
//! attributes a page fetched before the change are not answered again. A
//! file this mount has open is not answered from a page at all (its size
//! moves with every commit), nor is a file with more than one link (an
//! unlink under another name changes it). A page fetched while the
//! directory changed is not kept. Another mount's unlink, rename or
//! change of attributes shows within `PAGE_TTL` plus the kernel's own
//! TTL, as attribute changes do; a lock granted drops every page, so
//! what a lock orders is looked up anew.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::{Duration, Instant},
};

use tessera_common::{Attr, FileKind, Ino, NamePage};

/// How long a page answers for its names.
pub const PAGE_TTL: Duration = Duration::from_millis(500);
/// Entries of a directory's first page.
pub const FIRST_PAGE: u32 = 4;
/// Entries of a page at most.
pub const MAX_PAGE: u32 = 1024;
/// Directories with a page at once.
const MAX_DIRS: usize = 64;
/// Change marks kept before old ones are swept.
const SWEEP_MARKS_AT: usize = 4096;

/// What the cache says about a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cached {
    /// The name exists, with these attributes.
    Found(Attr),
    /// The name did not exist when the page was fetched.
    Absent,
    /// The name exists, but its attributes must be asked for.
    Stale,
    /// Not covered by a page: fetch one.
    Miss,
}

/// A page fetch begun: what to ask for, and the change count when it began.
#[derive(Clone, Copy, Debug)]
pub struct Fetch {
    pub limit: u32,
    seq: u64,
    /// A page is as old as its fetch: it answers for `PAGE_TTL` from the
    /// moment it was asked for (a change marked after that is swept only
    /// once older than `PAGE_TTL`).
    began: Instant,
}

struct DirPage {
    from: Vec<u8>,
    /// The last name covered; `None`: to the directory's end.
    to: Option<Vec<u8>>,
    entries: BTreeMap<Vec<u8>, Attr>,
    /// The change count when its fetch began.
    seq: u64,
    at: Instant,
    limit: u32,
}

impl DirPage {
    fn covers(&self, name: &[u8]) -> bool {
        name >= self.from.as_slice() && self.to.as_deref().is_none_or(|to| name <= to)
    }

    fn fresh(&self, now: Instant) -> bool {
        now.duration_since(self.at) < PAGE_TTL
    }
}

#[derive(Default)]
struct Inner {
    /// Bumped by every change this mount makes.
    seq: u64,
    /// `seq` when every page was last dropped.
    cleared: u64,
    dirs: HashMap<Ino, DirPage>,
    /// The change count and time of each inode's last change.
    changed: HashMap<Ino, (u64, Instant)>,
}

impl Inner {
    fn mark(&mut self, ino: Ino) {
        self.seq += 1;
        let now = Instant::now();
        if self.changed.len() >= SWEEP_MARKS_AT {
            // A mark older than a page's lifetime outlived every page
            // fetched before it.
            self.changed
                .retain(|_, (_, at)| now.duration_since(*at) < PAGE_TTL);
            if self.changed.len() >= SWEEP_MARKS_AT / 2 {
                // Too many recent ones to sweep at every mark: drop the
                // pages instead, which no mark then concerns.
                self.cleared = self.seq;
                self.dirs.clear();
                self.changed.clear();
            }
        }
        self.changed.insert(ino, (self.seq, now));
    }

    fn changed_since(&self, ino: Ino, seq: u64) -> bool {
        self.changed.get(&ino).is_some_and(|(s, _)| *s >= seq)
    }
}

#[derive(Default)]
pub struct NameCache {
    inner: Mutex<Inner>,
}

impl NameCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("name cache lock")
    }

    /// What a fresh page says about `name` in `parent`.
    pub fn get(&self, parent: Ino, name: &[u8]) -> Cached {
        let inner = self.lock();
        let Some(page) = inner.dirs.get(&parent) else {
            return Cached::Miss;
        };
        if !page.fresh(Instant::now()) || !page.covers(name) {
            return Cached::Miss;
        }
        match page.entries.get(name) {
            None => Cached::Absent,
            Some(a) if a.kind != FileKind::Dir && a.nlink > 1 => Cached::Stale,
            Some(a) if inner.changed_since(a.ino, page.seq) => Cached::Stale,
            Some(a) => Cached::Found(a.clone()),
        }
    }

    /// A page fetch from `name` on begins: as large as the last one
    /// times four if `name` follows it (a scan), else [`FIRST_PAGE`].
    pub fn begin(&self, parent: Ino, name: &[u8]) -> Fetch {
        let inner = self.lock();
        let limit = match inner.dirs.get(&parent) {
            Some(p) if p.to.as_deref().is_some_and(|to| name > to) => (p.limit * 4).min(MAX_PAGE),
            _ => FIRST_PAGE,
        };
        Fetch {
            limit,
            seq: inner.seq + 1,
            began: Instant::now(),
        }
    }

    /// Keeps a fetched page, unless this mount changed the directory since
    /// the fetch began.
    pub fn install(&self, parent: Ino, name: &[u8], fetch: Fetch, page: NamePage) {
        let mut inner = self.lock();
        let now = Instant::now();
        if inner.changed_since(parent, fetch.seq)
            || fetch.seq <= inner.cleared
            || now.duration_since(fetch.began) >= PAGE_TTL
        {
            return;
        }
        let to = if page.complete {
            None
        } else {
            match page.entries.last() {
                Some((last, _)) => Some(last.clone()),
                None => return,
            }
        };
        if inner.dirs.len() >= MAX_DIRS && !inner.dirs.contains_key(&parent) {
            inner.dirs.retain(|_, p| p.fresh(now));
            if inner.dirs.len() >= MAX_DIRS {
                return;
            }
        }
        inner.dirs.insert(
            parent,
            DirPage {
                from: name.to_vec(),
                to,
                entries: page.entries.into_iter().collect(),
                seq: fetch.seq,
                at: fetch.began,
                limit: fetch.limit,
            },
        );
    }

    /// This mount changed `ino`'s attributes (or its data, xattrs, links).
    pub fn changed(&self, ino: Ino) {
        self.lock().mark(ino);
    }

    /// This mount created `name` in `parent`.
    pub fn created(&self, parent: Ino, name: &[u8], attr: &Attr) {
        let mut inner = self.lock();
        inner.mark(parent);
        if let Some(page) = inner.dirs.get_mut(&parent) {
            if page.covers(name) {
                page.entries.insert(name.to_vec(), attr.clone());
            }
        }
    }

    /// This mount removed `name` from `parent`.
    pub fn removed(&self, parent: Ino, name: &[u8]) {
        let mut inner = self.lock();
        inner.mark(parent);
        let gone = inner
            .dirs
            .get_mut(&parent)
            .and_then(|page| page.entries.remove(name));
        if let Some(a) = gone {
            inner.mark(a.ino);
        }
    }

    /// Forgets `parent`'s page: the directory changed in a way this cache
    /// does not follow, or the metadata service contradicted the page.
    pub fn forget_dir(&self, parent: Ino) {
        let mut inner = self.lock();
        inner.mark(parent);
        inner.dirs.remove(&parent);
    }

    /// Forgets every page (a lock was granted).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.seq += 1;
        inner.cleared = inner.seq;
        inner.dirs.clear();
    }
}

#[cfg(test)]
mod tests;
