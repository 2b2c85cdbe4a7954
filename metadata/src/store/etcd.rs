//! `MetaStore` on etcd (the v3 API, through the `etcd-client` crate), so
//! that the metadata outlives the machine of any one metadata process.
//!
//! A transaction reads at one revision of the store (fixed by its first
//! read), so all its reads see one moment, as on RocksDB. Every key read
//! through `get` becomes a compare on its mod revision (0 for a key that
//! was absent) in the etcd transaction that commits the writes: a key
//! written meanwhile fails the compare, which is `StoreError::Conflict`,
//! and `transact` runs the transaction again. Scans are not tracked, as on
//! every backend. A read at a revision etcd has compacted away is a
//! conflict too: the transaction starts again at the newest.
//!
//! Every key lives under the target's prefix (`tessera/` by default), so
//! one etcd cluster can hold several Tessera clusters and anything else.
//! etcd acknowledges a commit once a quorum of members has it on disk:
//! every commit is durable, and `sync` has nothing to do.
//!
//! The trait is synchronous and its callers are blocking threads; the
//! client runs on a small runtime of its own and each call waits for its
//! task, so no caller needs to be on (or off) any particular runtime.

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KvClient, LeaseClient, SortOrder,
    SortTarget, Txn as EtcdTxnRequest, TxnOp, TxnOpResponse,
};

use super::{KeyValue, Leadership, MetaStore, StoreError, Txn};

/// How long a connection to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one request may take, a commit included, before it fails: a
/// cluster that lost its quorum answers nothing, and a mount's call must
/// fail (EIO) rather than hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Back scans of at most this many keys look in growing windows first
/// ([`EtcdTxn::last_keys`]), of 256^n below their end for each n here.
const BACK_WINDOW_MAX_LIMIT: usize = 16;
const BACK_WINDOW_SHIFTS: [usize; 4] = [2, 3, 4, 5];

/// Up to this many ranges, a `scan_around` reads each range on its own;
/// more are read as one span, if it holds at most `SPAN_KEYS` keys.
const AROUND_ONE_BY_ONE: usize = 4;
const SPAN_KEYS: usize = 4096;

/// The largest answer the client takes (tonic's default is 4 MiB): a
/// whole directory or queue read in one range.
const MAX_ANSWER: usize = 256 << 20;

/// `key` less 256^`shift`, as a big-endian number of the same length;
/// None if that is below zero.
fn minus_power_of_256(key: &[u8], shift: usize) -> Option<Vec<u8>> {
    let mut out = key.to_vec();
    let mut at = out.len().checked_sub(shift + 1)?;
    loop {
        if out[at] > 0 {
            out[at] -= 1;
            return Some(out);
        }
        out[at] = 0xff;
        at = at.checked_sub(1)?;
    }
}

/// What `--store etcd://HOST:PORT[,HOST:PORT...]/PREFIX` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdTarget {
    /// `http://HOST:PORT` of each member given.
    pub endpoints: Vec<String>,
    /// What every key begins with, ending in `/`.
    pub prefix: String,
}

impl EtcdTarget {
    /// Parses `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`; the prefix
    /// defaults to `tessera`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("etcd://")
            .ok_or_else(|| format!("{url:?} is not an etcd://HOST:PORT[,...]/PREFIX address"))?;
        let (hosts, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { "tessera" } else { prefix };
        // A prefix inside another (`a` and `a/b`) would let one cluster's
        // keys show up among the other's.
        if prefix.bytes().any(|b| b.is_ascii_control() || b == b'/') {
            return Err(format!(
                "the prefix of {url:?} has a '/' or control characters"
            ));
        }
        let mut endpoints = Vec::new();
        for h in hosts.split(',') {
            let (host, port) = h
                .rsplit_once(':')
                .ok_or_else(|| format!("{h:?} in {url:?} is not HOST:PORT"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("{h:?} in {url:?} is not HOST:PORT"));
            }
            endpoints.push(format!("http://{h}"));
        }
        Ok(EtcdTarget {
            endpoints,
            prefix: format!("{prefix}/"),
        })
    }

    fn describe(&self) -> String {
        format!("etcd at {}", self.endpoints.join(","))
    }
}

pub struct EtcdStore {
    target: EtcdTarget,
    /// A client of each member. The crate's own client of several
    /// members fails every call while any one of them is down, so calls
    /// go to one member and move to the next when it cannot be reached,
    /// as etcd's own Go client does.
    members: Vec<KvClient>,
    /// Each member's lease service (`etcd_lead.rs`).
    pub(super) leases: Vec<LeaseClient>,
    /// The member calls go to first.
    current: AtomicUsize,
    /// The client's runtime; `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    /// Set while this process leads (`etcd_lead.rs`): the leader key and
    /// the revision that created it. Every commit then checks that the
    /// key is still the one this process made, so a process whose lease
    /// ran out commits nothing more.
    pub(super) fence: Mutex<Option<(Vec<u8>, i64)>>,
}

impl EtcdStore {
    /// Connects to the members of `target` (any one answering is enough to
    /// start; the client moves between them).
    pub fn open(target: &EtcdTarget) -> Result<Self, StoreError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("starting the etcd client: {e}")))?;
        let (mut members, mut leases) = (Vec::new(), Vec::new());
        for endpoint in &target.endpoints {
            let endpoint = endpoint.clone();
            let options = ConnectOptions::new()
                .with_connect_timeout(CONNECT_TIMEOUT)
                .with_timeout(REQUEST_TIMEOUT)
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
            // Connecting is lazy: a member that is down fails its calls,
            // not this.
            let client = wait(&rt, async move {
                Client::connect([endpoint], Some(options)).await
            })
            .map_err(|e| StoreError::Backend(format!("{}: {e}", target.describe())))?;
            members.push(client.kv_client().max_decoding_message_size(MAX_ANSWER));
            leases.push(client.lease_client());
        }
        let store = EtcdStore {
            target: target.clone(),
            members,
            leases,
            current: AtomicUsize::new(0),
            rt: Some(rt),
            fence: Mutex::new(None),
        };
        // A first read: an unreachable cluster fails here, not at the first
        // call of a client.
        store.begin().get(b"\0")?;
        Ok(store)
    }

    /// Makes a call on the current member; a read moves on to each other
    /// member in turn while they cannot be reached. A commit is sent once:
    /// one that failed may still have been applied (etcd's "request timed
    /// out" comes after the proposal was made), and applying it twice
    /// could undo later commits. The transaction's reads went to a member
    /// that answered, so a commit goes there too.
    pub(super) fn call<T, F>(
        &self,
        commit: bool,
        f: impl Fn(KvClient) -> F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, etcd_client::Error>> + Send + 'static,
    {
        let rt = self.rt.as_ref().expect("etcd runtime");
        let n = self.members.len();
        let first = self.current.load(Ordering::Relaxed);
        let mut attempt = 0;
        loop {
            let i = (first + attempt) % n;
            match wait(rt, f(self.members[i].clone())) {
                Ok(v) => {
                    if i != first {
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(e) if !commit && attempt + 1 < n && unreachable(&e) => {
                    tracing::debug!(member = %self.target.endpoints[i], error = %e, "etcd member unreachable; trying the next");
                    attempt += 1;
                }
                Err(e) => return Err(self.error(e)),
            }
        }
    }

    /// Another client of the same prefix: another metadata process.
    #[cfg(test)]
    pub(crate) fn another(&self) -> EtcdStore {
        EtcdStore::open(&self.target).unwrap()
    }

    /// Compacts away every revision but the newest.
    #[cfg(test)]
    pub(crate) fn compact_all(&self) {
        let mut t = self.txn();
        t.get(b"\0").unwrap();
        let rev = t.revision;
        self.call(
            true,
            move |mut kv| async move { kv.compact(rev, None).await },
        )
        .unwrap();
    }

    fn txn(&self) -> EtcdTxn<'_> {
        EtcdTxn {
            store: self,
            revision: 0,
            reads: HashMap::new(),
            writes: BTreeMap::new(),
        }
    }

    pub(super) fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.as_ref().expect("etcd runtime")
    }

    /// The member calls go to first.
    pub(super) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    pub(super) fn describe(&self) -> String {
        self.target.describe()
    }

    pub(super) fn key(&self, k: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.target.prefix.len() + k.len());
        out.extend_from_slice(self.target.prefix.as_bytes());
        out.extend_from_slice(k);
        out
    }

    pub(super) fn error(&self, e: etcd_client::Error) -> StoreError {
        if let etcd_client::Error::GRpcStatus(s) = &e {
            // A revision compacted away, or one the member has not applied
            // yet.
            if s.code() == tonic::Code::OutOfRange {
                return StoreError::Conflict;
            }
        }
        StoreError::Backend(format!("{}: {e}", self.target.describe()))
    }
}

/// Whether a read that failed with `e` may be asked of another member:
/// any failure to get an answer (a read changes nothing, so asking twice
/// is harmless).
pub(super) fn unreachable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        // Unknown and Internal: a connection that broke mid-call, or a
        // member shutting down.
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            tonic::Code::Unavailable
                | tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Internal
        ),
        _ => false,
    }
}

/// Runs `f` on `rt` and waits for it on this thread, whatever runtime this
/// thread belongs to.
pub(super) fn wait<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> T {
    futures::executor::block_on(rt.spawn(f)).expect("etcd client task panicked")
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        // Dropping a runtime waits for its threads, which async code may
        // not do; this one has nothing left worth waiting for.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl MetaStore for EtcdStore {
    fn begin(&self) -> Box<dyn Txn + '_> {
        Box::new(self.txn())
    }

    fn try_lead(&self, who: &str) -> Result<Option<Box<dyn Leadership>>, StoreError> {
        super::etcd_lead::try_lead(self, who)
    }
}

struct EtcdTxn<'a> {
    store: &'a EtcdStore,
    /// The revision every read is made at; 0 until the first read.
    revision: i64,
    /// Keys read through `get`, with the mod revision each had (0: absent).
    reads: HashMap<Vec<u8>, i64>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// One range read's answer: its keys (prefix removed), values and mod
/// revisions.
type Read = Vec<(Vec<u8>, Vec<u8>, i64)>;

impl EtcdTxn<'_> {
    fn read(&mut self, key: Vec<u8>, options: GetOptions) -> Result<Read, StoreError> {
        let s = self.store;
        // The first read is linearizable (a quorum confirms the member is
        // current) and fixes the revision; later ones read that revision
        // from the member's own copy, which has it: no quorum round each.
        // A member that has not applied it yet (the calls moved to another
        // member meanwhile) answers "future revision": a conflict.
        let options = match self.revision {
            0 => options,
            r => options.with_revision(r).with_serializable(),
        };
        let got = s.call(false, |mut kv| {
            let (key, options) = (key.clone(), options.clone());
            async move { kv.get(key, Some(options)).await }
        })?;
        if self.revision == 0 {
            self.revision = got.header().map_or(0, |h| h.revision());
        }
        let strip = s.target.prefix.len();
        Ok(got
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key()[strip..].to_vec(),
                    kv.value().to_vec(),
                    kv.mod_revision(),
                )
            })
            .collect())
    }

    /// The last `limit` keys of `[start, end)`, found in windows that end
    /// at `end` and grow 256-fold (a window's first key is `end` less
    /// 256^n as a big-endian number), then in the whole range: etcd 3.4
    /// answers a range sorted from the end by reading all of it, so the
    /// extent before a file offset, read on every commit, would cost the
    /// whole file's extents.
    fn last_keys(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if limit <= BACK_WINDOW_MAX_LIMIT {
            for shift in BACK_WINDOW_SHIFTS {
                let Some(from) = minus_power_of_256(end, shift) else {
                    break;
                };
                if from.as_slice() <= start {
                    break;
                }
                let got = self.range(&from, end, limit, true)?;
                if got.len() >= limit {
                    return Ok(got);
                }
            }
        }
        self.range(start, end, limit, true)
    }

    /// Up to `limit` keys of `[start, end)` as this transaction sees them
    /// (its writes over the store's), from the start or (`back`) the end.
    fn range(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        back: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        if start >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let mine: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .writes
            .range(start.to_vec()..end.to_vec())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Deleted keys may hide as many of the store's: ask for that many
        // more, and `limit` are still left after them.
        let deleted = mine.iter().filter(|(_, v)| v.is_none()).count();
        let ask = limit.saturating_add(deleted);
        let mut options = GetOptions::new().with_range(self.store.key(end));
        if ask < i64::MAX as usize {
            options = options.with_limit(ask as i64);
        }
        if back {
            options = options.with_sort(SortTarget::Key, SortOrder::Descend);
        }
        let read = self.read(self.store.key(start), options)?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            read.into_iter().map(|(k, v, _)| (k, v)).collect();
        // The store's keys come only as far as its limit reached: own
        // writes beyond the last of them may not be placed yet.
        let reached = if merged.len() >= ask {
            if back {
                merged.keys().next().cloned()
            } else {
                merged.keys().next_back().cloned()
            }
        } else {
            None
        };
        for (k, v) in mine {
            let beyond = reached
                .as_ref()
                .is_some_and(|r| if back { &k < r } else { &k > r });
            match v {
                Some(v) if !beyond => {
                    merged.insert(k, v);
                }
                Some(_) => {}
                None => {
                    merged.remove(&k);
                }
            }
        }
        let out: Vec<KeyValue> = if back {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        };
        Ok(out)
    }
}

impl Txn for EtcdTxn<'_> {
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(w) = self.writes.get(key) {
            return Ok(w.clone());
        }
        let read = self.read(self.store.key(key), GetOptions::new())?;
        let (value, revision) = match read.into_iter().next() {
            Some((_, v, r)) => (Some(v), r),
            None => (None, 0),
        };
        // A key read twice keeps its first revision: the compare is on
        // what the transaction first saw.
        self.reads.entry(key.to_vec()).or_insert(revision);
        Ok(value)
    }

    fn scan(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.range(start, end, limit, false)
    }

    fn scan_back(
        &mut self,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.last_keys(start, end, limit)
    }

    /// One read of the span from the first range to the last (and one
    /// for the key before the first) instead of two reads per range, when
    /// there are many ranges (a flush's scattered pages).
    fn scan_around(
        &mut self,
        floor: &[u8],
        ranges: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<Vec<KeyValue>, StoreError> {
        let (Some(first), Some(last)) = (ranges.first(), ranges.last()) else {
            return Ok(Vec::new());
        };
        if ranges.len() <= AROUND_ONE_BY_ONE {
            return super::scan_around_each(self, floor, ranges);
        }
        let inside = self.scan(&first.0, &last.1, SPAN_KEYS)?;
        if inside.len() >= SPAN_KEYS {
            // Far apart, or many keys between: a range at a time.
            return super::scan_around_each(self, floor, ranges);
        }
        let mut span = self.last_keys(floor, &first.0, 1)?;
        span.extend(inside);
        // Each range's keys, and the last key before it (which may lie in
        // an earlier range or between ranges), every key once.
        let mut out: Vec<KeyValue> = Vec::new();
        for (start, end) in ranges {
            let from = span.partition_point(|(k, _)| k.as_slice() < start.as_slice());
            let to = span.partition_point(|(k, _)| k.as_slice() < end.as_slice());
            let before = from
                .checked_sub(1)
                .filter(|&i| span[i].0.as_slice() >= floor);
            for i in before.into_iter().chain(from..to) {
                if out.last().is_none_or(|(k, _)| *k < span[i].0) {
                    out.push(span[i].clone());
                }
            }
        }
        Ok(out)
    }

    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn delete(&mut self, key: &[u8]) -> Result<(), StoreError> {
        self.writes.insert(key.to_vec(), None);
        Ok(())
    }

    fn commit(self: Box<Self>) -> Result<(), StoreError> {
        if self.writes.is_empty() {
            // Its reads came from one revision; there is nothing to apply.
            return Ok(());
        }
        let s = self.store;
        let compares: Vec<Compare> = self
            .reads
            .iter()
            .map(|(k, &rev)| Compare::mod_revision(s.key(k), CompareOp::Equal, rev))
            .collect();
        let ops: Vec<TxnOp> = self
            .writes
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(s.key(k), v.clone(), None),
                None => TxnOp::delete(s.key(k), None),
            })
            .collect();
        let (n_compares, n_ops) = (compares.len(), ops.len());
        let fence = s.fence.lock().expect("etcd fence lock").clone();
        let mut compares = compares;
        if let Some((key, created)) = &fence {
            compares.push(Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                *created,
            ));
        }
        let mut request = EtcdTxnRequest::new().when(compares).and_then(ops);
        if let Some((key, _)) = &fence {
            // On failure, the leader key tells a lost lead from a conflict.
            request = request.or_else([TxnOp::get(key.clone(), None)]);
        }
        let done = s
            .call(true, |mut kv| {
                let request = request.clone();
                async move { kv.txn(request).await }
            })
            .map_err(|e| match e {
                StoreError::Backend(why) => StoreError::Backend(format!(
                    "committing {n_ops} writes with {n_compares} reads checked: {why}"
                )),
                other => other,
            })?;
        if done.succeeded() {
            return Ok(());
        }
        if let Some((_, created)) = fence {
            let now = match done.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => g.kvs().first().map_or(0, |kv| kv.create_revision()),
                _ => 0,
            };
            if now != created {
                return Err(StoreError::Deposed(format!(
                    "{}: this metadata process no longer leads (its lease ran out); nothing committed",
                    s.describe()
                )));
            }
        }
        Err(StoreError::Conflict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_less_a_power_of_256_borrows_and_stops_at_zero() {
        assert_eq!(
            minus_power_of_256(&[1, 0, 0, 5], 2),
            Some(vec![0, 255, 0, 5])
        );
        assert_eq!(minus_power_of_256(&[1, 2, 3], 0), Some(vec![1, 2, 2]));
        assert_eq!(minus_power_of_256(&[0, 0, 3], 1), None);
        assert_eq!(minus_power_of_256(&[7, 3], 2), None);
    }

    #[test]
    fn targets_parse_and_bad_ones_are_refused() {
        let t = EtcdTarget::parse("etcd://127.0.0.1:2379,10.0.0.2:2379/prod").unwrap();
        assert_eq!(
            t.endpoints,
            vec!["http://127.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        assert_eq!(t.prefix, "prod/");
        assert_eq!(EtcdTarget::parse("etcd://h:1").unwrap().prefix, "tessera/");
        for bad in [
            "http://h:1/x",
            "etcd://h/x",
            "etcd://:1/x",
            "etcd://h:99999/x",
            "etcd://h:1,/x",
            "etcd://h:1/a\0b",
            "etcd://h:1/a/b",
        ] {
            assert!(EtcdTarget::parse(bad).is_err(), "{bad} was accepted");
        }
    }
}
