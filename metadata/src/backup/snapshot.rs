//! The service's side of an online backup: a thread reads every key of
//! the store in one transaction (one moment: a RocksDB snapshot, one etcd
//! revision) and hands pages through a short queue to the backup's
//! session, which answers one page per call. Writers carry on meanwhile.
//!
//! A session nobody asks for a page for `IDLE` is dropped, and its thread
//! gives up on its own; at most `MAX_SESSIONS` run at once.

use std::{
    collections::HashMap,
    sync::{
        mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use crate::{
    keys,
    store::{
        copy::{walk, Summary, Summer},
        KeyValue, MetaStore, StoreError,
    },
    MetaError, Result,
};

const MAX_SESSIONS: usize = 2;
const IDLE: Duration = Duration::from_secs(120);
/// Longest a call waits for its page from the reading thread.
const PAGE_WAIT: Duration = Duration::from_secs(60);
/// Bounds of one page: well under a message's limit.
const PAGE_KEYS: usize = 8192;
const PAGE_BYTES: usize = 4 << 20;
/// Pages read ahead of the caller.
const AHEAD: usize = 2;

/// One page of a backup; the last one also sums the whole snapshot up.
#[derive(Debug, Default)]
pub struct Page {
    pub records: Vec<KeyValue>,
    pub end: Option<End>,
}

#[derive(Clone, Debug, Default)]
pub struct End {
    pub summary: Summary,
    pub cluster_id: String,
}

struct Session {
    pages: Receiver<std::result::Result<Page, StoreError>>,
    /// The number of the page the next call must ask for.
    next: u64,
    used: Instant,
}

#[derive(Default)]
pub struct Backups {
    sessions: Mutex<(u64, HashMap<u64, Session>)>,
}

impl Backups {
    /// Page `page` of backup `session`, or, for session 0, the first page
    /// of a new backup of `store`; returns the session with the page.
    /// Pages are asked for in order, each once; a call that fails ends
    /// its session, but one that asks for another page changes nothing.
    pub fn page(&self, store: &Arc<dyn MetaStore>, session: u64, page: u64) -> Result<(u64, Page)> {
        let (id, mut s) = {
            let mut guard = self.sessions.lock().expect("backup sessions lock");
            let (last_id, open) = &mut *guard;
            open.retain(|_, s| s.used.elapsed() < IDLE);
            if session == 0 {
                if page != 0 {
                    return Err(MetaError::Invalid(format!(
                        "page {page} of no backup session asked for"
                    )));
                }
                if open.len() >= MAX_SESSIONS {
                    return Err(MetaError::Busy(format!(
                        "{MAX_SESSIONS} backups are running already"
                    )));
                }
                *last_id += 1;
                (*last_id, start(store.clone()))
            } else {
                let s = open.get(&session).ok_or_else(|| {
                    MetaError::not_found(format!(
                        "backup session {session} (it ended or idled out)"
                    ))
                })?;
                if page != s.next {
                    return Err(MetaError::Invalid(format!(
                        "backup session {session}: page {page} asked for, page {} is next",
                        s.next
                    )));
                }
                (session, open.remove(&session).expect("just found"))
            }
        };
        let got = match s.pages.recv_timeout(PAGE_WAIT) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(e.into()),
            Err(RecvTimeoutError::Timeout) => {
                return Err(MetaError::Unavailable(format!(
                    "backup session {id}: no page read in {PAGE_WAIT:?}"
                )))
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(MetaError::Unavailable(format!(
                    "backup session {id}: its reader stopped"
                )))
            }
        };
        if got.end.is_none() {
            s.next += 1;
            s.used = Instant::now();
            let mut guard = self.sessions.lock().expect("backup sessions lock");
            guard.1.insert(id, s);
        }
        Ok((id, got))
    }
}

/// Queues a page for the session's calls, waiting while `AHEAD` are
/// queued; a session nobody calls for `IDLE` is given up, and with it the
/// snapshot (which holds old versions in the store).
fn hand_over(
    tx: &SyncSender<std::result::Result<Page, StoreError>>,
    page: std::result::Result<Page, StoreError>,
) -> std::result::Result<(), StoreError> {
    let gone = || StoreError::Backend("backup abandoned".into());
    let since = Instant::now();
    let mut page = page;
    loop {
        match tx.try_send(page) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(_)) => return Err(gone()),
            Err(TrySendError::Full(p)) if since.elapsed() < IDLE => {
                page = p;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TrySendError::Full(_)) => return Err(gone()),
        }
    }
}

/// Starts the thread that reads the snapshot.
fn start(store: Arc<dyn MetaStore>) -> Session {
    let (tx, rx) = sync_channel(AHEAD);
    std::thread::Builder::new()
        .name("backup".into())
        .spawn(move || {
            let mut sum = Summer::default();
            let mut cluster_id = String::new();
            let mut page = Page::default();
            let mut bytes = 0;
            let read = walk(store.as_ref(), |k, v| {
                if k == keys::cluster_id() {
                    cluster_id = String::from_utf8_lossy(v).into_owned();
                }
                sum.add(k, v);
                bytes += k.len() + v.len();
                page.records.push((k.to_vec(), v.to_vec()));
                if page.records.len() == PAGE_KEYS || bytes >= PAGE_BYTES {
                    bytes = 0;
                    hand_over(&tx, Ok(std::mem::take(&mut page)))?;
                }
                Ok(())
            });
            let read = read.map_err(|e| match e {
                StoreError::Conflict => StoreError::Backend(
                    "the store dropped the backup's moment (etcd compacted its revision: the backup took too long); back up again".into(),
                ),
                other => other,
            });
            let last = read.map(|()| {
                page.end = Some(End {
                    summary: sum.finish(),
                    cluster_id,
                });
                page
            });
            // The caller may have gone: nothing is left to do either way.
            let _ = hand_over(&tx, last);
        })
        .expect("spawning a backup thread");
    Session {
        pages: rx,
        next: 0,
        used: Instant::now(),
    }
}
