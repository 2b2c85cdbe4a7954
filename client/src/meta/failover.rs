//! Several metadata processes (`--meta a,b,c`), of which one leads and
//! the others stand by: which address calls go to, and when a call moves
//! on.
//!
//! Calls go to the address that answered last. A call moves to the next
//! address when the one it tried could not be connected to (nothing was
//! sent) or answered that it stands by (nothing was applied). Once it has
//! tried every address it pauses and goes round again, for as long as
//! some address stands by (an election is under way: the leader died),
//! up to `WAIT`; with no standby anywhere it fails with the last error,
//! as a single address does. A call that was sent and got no answer is
//! not sent again anywhere, as it may have been applied, unless it only
//! reads; the next call starts at the next address.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use prost::Message;
use tessera_proto::transport::lean_client::{Answer, CallError};
use tonic::{Code, Status};

use crate::ClientError;

/// Longest a call waits for a new leader.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// Pause between rounds of every address.
const PAUSE: Duration = Duration::from_millis(200);

/// The addresses of `list` (`host:port[,host:port...]`).
pub(crate) fn addresses(list: &str) -> Vec<String> {
    let all: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    if all.is_empty() {
        vec![list.to_string()]
    } else {
        all
    }
}

/// How an attempt at one address failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Failure {
    /// It stands by: nothing was applied.
    Standby,
    /// No connection: nothing was sent.
    Unsent,
    /// Sent, with no answer: it may have been applied (a call that reads
    /// only may be sent again: [`Failure::of_call`]).
    Sent,
}

impl Failure {
    /// `self`, for a call of `path`: one that only reads (or only renews
    /// a lease) may go to the next address even after it was sent.
    pub(crate) fn of_call(self, path: &str) -> Failure {
        match self {
            Failure::Sent if reads_only(path) => Failure::Unsent,
            f => f,
        }
    }
}

/// Whether a call of `path` changes nothing a second sending could undo:
/// reads, and renewals of leases to "now plus the lease". Not a lock
/// request: a late one could bring back a lock since released.
fn reads_only(path: &str) -> bool {
    use tessera_proto::lean::meta as p;
    [
        p::LOOKUP,
        p::LOOKUP_PAGE,
        p::GET_ATTR,
        p::READ_DIR,
        p::READ_LINK,
        p::GET_XATTR,
        p::LIST_XATTR,
        p::STAT_FS,
        p::TEST_LOCK,
        p::GET_SLICES,
        p::RENEW_LOCKS,
        p::RENEW_ORPHANS,
    ]
    .contains(&path)
}

/// What a gRPC error says of the attempt; `None`: it is the service's
/// answer.
pub(crate) fn of_status(s: &Status) -> Option<Failure> {
    if s.code() != Code::Unavailable {
        return None;
    }
    if standby(s) {
        return Some(Failure::Standby);
    }
    // tonic's words when the connection could not be made.
    let m = s.message();
    if m.contains("tcp connect error") || m.contains("error trying to connect") {
        Some(Failure::Unsent)
    } else {
        Some(Failure::Sent)
    }
}

/// What one lean call at `addr` came to: its answer decoded, the
/// service's error (final), or a failure to try elsewhere with the error
/// to give if there is nowhere left.
pub(crate) fn of_lean<A: Message + Default>(
    path: &str,
    addr: &str,
    answered: Result<Answer, CallError>,
) -> Result<Result<A, ClientError>, (Failure, ClientError)> {
    let unavailable = |why: String| {
        ClientError::from(Status::unavailable(format!(
            "metadata service at {addr}: {path}: {why}"
        )))
    };
    let (failure, error) = match answered {
        Ok(Ok(message)) => {
            return Ok(
                A::decode(message).map_err(|e| ClientError::Malformed(format!("{path}: {e}")))
            )
        }
        Ok(Err(status)) if standby(&status) => (Failure::Standby, status.into()),
        Ok(Err(status)) => return Ok(Err(status.into())),
        Err(CallError::Unsent(e)) => (Failure::Unsent, unavailable(e.to_string())),
        Err(e) => (Failure::Sent, unavailable(e.to_string())),
    };
    Err((failure.of_call(path), error))
}

/// Whether `s` is a standby's answer.
pub(crate) fn standby(s: &Status) -> bool {
    s.code() == Code::Unavailable && s.message().contains(tessera_proto::STANDBY)
}

/// The address calls go to first.
pub(crate) struct Rotation {
    current: AtomicUsize,
    n: usize,
}

impl Rotation {
    pub(crate) fn new(n: usize) -> Rotation {
        Rotation {
            current: AtomicUsize::new(0),
            n: n.max(1),
        }
    }

    pub(crate) fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }

    /// Address `i` failed: calls go to the next one (unless another call
    /// moved on already).
    fn move_from(&self, i: usize) {
        let _ = self.current.compare_exchange(
            i,
            (i + 1) % self.n,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// One call's way round the addresses.
pub(crate) struct Attempts {
    started: Instant,
    tried: usize,
    standby: bool,
}

impl Attempts {
    pub(crate) fn new() -> Attempts {
        Attempts {
            started: Instant::now(),
            tried: 0,
            standby: false,
        }
    }

    /// The attempt at address `i` failed so: `Some(pause)` to try the
    /// current address after `pause`, `None` to give up.
    pub(crate) fn after(&mut self, rotation: &Rotation, i: usize, f: Failure) -> Option<Duration> {
        rotation.move_from(i);
        match f {
            Failure::Sent => return None,
            Failure::Standby => self.standby = true,
            Failure::Unsent => {}
        }
        self.tried += 1;
        if !self.tried.is_multiple_of(rotation.n) {
            return Some(Duration::ZERO);
        }
        let waiting = std::mem::take(&mut self.standby);
        (waiting && self.started.elapsed() < WAIT).then_some(PAUSE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_split_on_commas() {
        assert_eq!(addresses("a:1, b:2,"), vec!["a:1", "b:2"]);
        assert_eq!(addresses("a:1"), vec!["a:1"]);
    }

    /// A dead leader and a standby: round and round while the standby
    /// stands by; a dead address alone, or a call that was sent, gives
    /// up at once.
    #[test]
    fn calls_wait_out_an_election_but_not_a_dead_cluster() {
        let r = Rotation::new(2);
        let mut a = Attempts::new();
        assert_eq!(a.after(&r, 0, Failure::Unsent), Some(Duration::ZERO));
        assert_eq!(r.current(), 1);
        assert_eq!(a.after(&r, 1, Failure::Standby), Some(PAUSE));
        assert_eq!(r.current(), 0);
        assert_eq!(a.after(&r, 0, Failure::Unsent), Some(Duration::ZERO));
        assert_eq!(a.after(&r, 1, Failure::Unsent), None, "nobody stands by");

        let one = Rotation::new(1);
        assert_eq!(Attempts::new().after(&one, 0, Failure::Unsent), None);
        assert_eq!(
            Attempts::new().after(&one, 0, Failure::Standby),
            Some(PAUSE)
        );
        assert_eq!(Attempts::new().after(&r, 0, Failure::Sent), None);
        assert_eq!(r.current(), 1, "the next call starts at the next address");
    }

    /// A call to a port nobody listens on, through a real tonic channel,
    /// is told apart as never sent; a standby's answer as such; the
    /// service's own answers are not failures.
    #[tokio::test]
    async fn statuses_are_told_apart() {
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let channel = tessera_proto::transport::grpc::lazy_channel(&closed, None).unwrap();
        let mut rpc = tessera_proto::pb::meta_client::MetaClient::new(channel);
        let refused = rpc
            .cluster_status(tessera_proto::pb::ClusterStatusRequest {})
            .await
            .unwrap_err();
        assert_eq!(of_status(&refused), Some(Failure::Unsent), "{refused:?}");
        let standby = Status::unavailable(format!("{}: another leads", tessera_proto::STANDBY));
        assert_eq!(of_status(&standby), Some(Failure::Standby));
        assert_eq!(
            of_status(&Status::unavailable("reset")),
            Some(Failure::Sent)
        );
        assert_eq!(of_status(&Status::not_found("x")), None);
    }
}
