//! Leading a cluster whose metadata is in etcd: of the metadata processes
//! over one prefix, the one whose lease holds the leader key serves, and
//! the others wait to take over (`run.rs`).
//!
//! A process that finds no leader key grants itself a lease of
//! `LEASE_TTL` and, in one etcd transaction, creates `PREFIX/~leader`
//! (its address) under that lease if nobody has meanwhile. While it
//! leads, a task keeps the lease alive, and every commit also checks that
//! the leader key still has the create revision this process gave it (the
//! fence, `etcd.rs`): a process that was paused or cut off past its lease
//! commits nothing more, whatever it still believes. It stops believing
//! `LOST_AFTER` after the last keep-alive etcd acknowledged was sent,
//! before etcd can have expired the lease: `held` is computed from that
//! time on every call, not set by the keep-alive task, so a task that runs
//! late (a paused process) cannot make it late.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use etcd_client::{Compare, CompareOp, LeaseClient, PutOptions, Txn as EtcdTxnRequest, TxnOp};

use super::{
    etcd::{unreachable, wait, EtcdStore},
    Leadership, StoreError,
};

/// Seconds a lead lasts without a keep-alive: how long a successor waits
/// after a leader died.
const LEASE_TTL: i64 = 5;
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(1000);
/// When a leader stops leading without an acknowledged keep-alive: well
/// inside the lease, so that it has stopped before anyone else can lead.
const LOST_AFTER: Duration = Duration::from_millis(3000);

/// The leader key (under the prefix). `~` is no table's prefix, and
/// backups and migrations leave `~` keys out.
pub(crate) const LEADER: &[u8] = b"~leader";

pub(super) fn try_lead(
    s: &EtcdStore,
    who: &str,
) -> Result<Option<Box<dyn Leadership>>, StoreError> {
    Ok(lead(s, who)?.map(|l| Box::new(l) as Box<dyn Leadership>))
}

fn lead(s: &EtcdStore, who: &str) -> Result<Option<EtcdLead>, StoreError> {
    // A cheap look first: standbys ask every half second.
    if super::MetaStore::begin(s).get(LEADER)?.is_some() {
        return Ok(None);
    }
    let asked = Instant::now();
    let (id, member) = grant(s)?;
    let key = s.key(LEADER);
    let request = EtcdTxnRequest::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.clone(),
            who,
            Some(PutOptions::new().with_lease(id)),
        )]);
    let done = s.call(true, |mut kv| {
        let request = request.clone();
        async move { kv.txn(request).await }
    });
    let done = match done {
        Ok(d) if d.succeeded() => d,
        other => {
            revoke_later(s, member, id);
            return other.map(|_| None);
        }
    };
    let Some(created) = done.header().map(|h| h.revision()).filter(|r| *r > 0) else {
        revoke_later(s, member, id);
        return Err(StoreError::Backend(format!(
            "{}: the leader key's revision was not in etcd's answer",
            s.describe()
        )));
    };
    *s.fence.lock().expect("etcd fence lock") = Some((key, created));
    let alive = Arc::new(Alive {
        base: asked,
        last_ok_ms: AtomicU64::new(0),
        gone: AtomicBool::new(false),
    });
    let task = s
        .runtime()
        .spawn(keep_alive(s.leases.clone(), member, id, alive.clone()));
    tracing::info!(
        lease = id,
        revision = created,
        "leading the metadata in {}",
        s.describe()
    );
    Ok(Some(EtcdLead {
        alive,
        task,
        lease: s.leases[member].clone(),
        id,
        rt: s.runtime().handle().clone(),
    }))
}

/// A lease from the first member that answers, and that member.
fn grant(s: &EtcdStore) -> Result<(i64, usize), StoreError> {
    let n = s.leases.len();
    let first = s.current();
    let mut last = None;
    for attempt in 0..n {
        let i = (first + attempt) % n;
        let mut lease = s.leases[i].clone();
        match wait(
            s.runtime(),
            async move { lease.grant(LEASE_TTL, None).await },
        ) {
            Ok(g) => return Ok((g.id(), i)),
            Err(e) if unreachable(&e) => last = Some(e),
            Err(e) => return Err(s.error(e)),
        }
    }
    Err(s.error(last.expect("at least one member")))
}

fn revoke_later(s: &EtcdStore, member: usize, id: i64) {
    let mut lease = s.leases[member].clone();
    s.runtime().spawn(async move { lease.revoke(id).await });
}

/// When a lead's lease was last known alive.
struct Alive {
    /// When the lease was asked for.
    base: Instant,
    /// When (ms after `base`) the last keep-alive etcd acknowledged was
    /// sent.
    last_ok_ms: AtomicU64,
    /// etcd said the lease is gone, or the lead was given up.
    gone: AtomicBool,
}

impl Alive {
    fn since_ok(&self) -> Duration {
        let ok = Duration::from_millis(self.last_ok_ms.load(Ordering::SeqCst));
        self.base.elapsed().saturating_sub(ok)
    }

    fn held(&self) -> bool {
        !self.gone.load(Ordering::SeqCst) && self.since_ok() < LOST_AFTER
    }
}

/// Keeps lease `id` alive through any member that answers, recording in
/// `alive` when each acknowledged keep-alive was sent, until `LOST_AFTER`
/// passes without one or etcd says the lease is gone.
async fn keep_alive(leases: Vec<LeaseClient>, first: usize, id: i64, alive: Arc<Alive>) {
    let mut i = first;
    'members: while alive.held() {
        let mut client = leases[i % leases.len()].clone();
        let Ok(Ok((mut keeper, mut stream))) =
            tokio::time::timeout(KEEP_ALIVE_EVERY, client.keep_alive(id)).await
        else {
            i += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while alive.held() {
            let sent = alive.base.elapsed();
            let answer = tokio::time::timeout(KEEP_ALIVE_EVERY, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match answer {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {
                    alive
                        .last_ok_ms
                        .fetch_max(sent.as_millis() as u64, Ordering::SeqCst);
                }
                Ok(Ok(Some(_))) => {
                    tracing::warn!(lease = id, "etcd says the lead's lease is gone");
                    alive.gone.store(true, Ordering::SeqCst);
                    break 'members;
                }
                _ => {
                    i += 1;
                    continue 'members;
                }
            }
            tokio::time::sleep(KEEP_ALIVE_EVERY).await;
        }
    }
    tracing::warn!(
        lease = id,
        "lost the lead: no keep-alive acknowledged in time"
    );
}

struct EtcdLead {
    alive: Arc<Alive>,
    task: tokio::task::JoinHandle<()>,
    lease: LeaseClient,
    id: i64,
    rt: tokio::runtime::Handle,
}

impl Leadership for EtcdLead {
    fn held(&self) -> bool {
        self.alive.held()
    }

    fn resign(&self) {
        self.alive.gone.store(true, Ordering::SeqCst);
        self.task.abort();
        let (mut lease, id) = (self.lease.clone(), self.id);
        let revoked = self.rt.spawn(async move {
            tokio::time::timeout(Duration::from_secs(2), lease.revoke(id)).await
        });
        let _ = futures::executor::block_on(revoked);
    }
}

impl Drop for EtcdLead {
    fn drop(&mut self) {
        self.alive.gone.store(true, Ordering::SeqCst);
        self.task.abort();
        let (mut lease, id) = (self.lease.clone(), self.id);
        self.rt.spawn(async move { lease.revoke(id).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_etcd, MetaStore};

    fn put(s: &EtcdStore, v: &[u8]) -> Result<(), StoreError> {
        let mut t = s.begin();
        t.put(b"Ux", v)?;
        t.commit()
    }

    /// Of two processes over one prefix one leads; once it resigned (or
    /// lost its lease), the other leads and the first commits nothing.
    #[test]
    fn one_process_leads_and_a_deposed_one_commits_nothing() {
        let a = test_etcd::store();
        let b = a.another();
        let lead_a = a.try_lead("a").unwrap().expect("nobody led, yet a did not");
        assert!(lead_a.held());
        assert!(b.try_lead("b").unwrap().is_none(), "two leaders");
        put(&a, b"1").unwrap();

        lead_a.resign();
        assert!(!lead_a.held());
        let lead_b = b.try_lead("b").unwrap().expect("b did not take over");
        match put(&a, b"2") {
            Err(StoreError::Deposed(why)) => assert!(why.contains("no longer leads"), "{why}"),
            other => panic!("a deposed leader's commit: {other:?}"),
        }
        assert_eq!(b.begin().get(b"Ux").unwrap(), Some(b"1".to_vec()));
        put(&b, b"3").unwrap();
        assert!(lead_b.held());
        assert!(a.try_lead("a").unwrap().is_none(), "b still leads");
    }

    /// A leader whose keep-alives stop (a paused or cut-off process)
    /// stops leading by itself `LOST_AFTER` later, before etcd expires
    /// the lease; once it has, another process leads.
    #[test]
    fn a_lead_whose_keep_alives_stop_is_lost_before_its_lease() {
        let a = test_etcd::store();
        let b = a.another();
        let lead = lead(&a, "a").unwrap().expect("a leads");
        // As a paused process: the task that keeps the lease alive stops,
        // and nothing revokes it.
        lead.task.abort();
        let started = Instant::now();
        while lead.held() {
            assert!(started.elapsed() < LOST_AFTER + KEEP_ALIVE_EVERY * 2);
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            b.try_lead("b").unwrap().is_none(),
            "the lease is still etcd's"
        );
        let deadline = Instant::now() + Duration::from_secs(LEASE_TTL as u64 + 5);
        let lead_b = loop {
            if let Some(l) = b.try_lead("b").unwrap() {
                break l;
            }
            assert!(Instant::now() < deadline, "the lease never ran out");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(lead_b.held());
        assert!(matches!(put(&a, b"x"), Err(StoreError::Deposed(_))));
    }
}
