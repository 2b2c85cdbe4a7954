//! Advisory locks across sessions (mounts).

use std::{
    sync::{Arc, Barrier},
    time::Duration,
};

use tessera_common::{
    data::{Commit, FileWrite},
    locks::{HeldLock, LockAnswer, LockKind, LockRange, LockRequest, MAX_RANGES},
    ROOT_INO,
};

use crate::{
    fs::{FileTree, LockTable},
    keys,
    testing::{each_store, slice, Fx},
    MetaError, MetaOptions,
};

fn ask(t: &Fx, ino: u64, session: u64, range: (u64, u64), kind: Option<LockKind>) -> LockRequest {
    LockRequest {
        vol: t.v,
        ino,
        session,
        owner: 1,
        pid: session as u32,
        start: range.0,
        end: range.1,
        kind,
    }
}

/// The lock in the way, if any.
fn set(tree: FileTree<'_>, req: &LockRequest) -> crate::Result<Option<HeldLock>> {
    tree.set_lock(req).map(|a| a.held())
}

const R: Option<LockKind> = Some(LockKind::Read);
const W: Option<LockKind> = Some(LockKind::Write);

#[test]
fn locks_of_other_sessions_conflict_as_fcntl_says() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f").ino;
        let tree = t.m.tree();
        assert_eq!(set(tree, &ask(&t, f, 1, (0, 99), R)).unwrap(), None);
        // Shared with another session; an exclusive lock is refused, and
        // the answer names the lock in the way and its process.
        assert_eq!(set(tree, &ask(&t, f, 2, (50, 149), R)).unwrap(), None);
        let held = set(tree, &ask(&t, f, 3, (90, 95), W)).unwrap().unwrap();
        assert_eq!(held.range, LockRange::new(0, 99, LockKind::Read).unwrap());
        assert_eq!(held.pid, 1);
        assert_eq!(
            tree.test_lock(&ask(&t, f, 3, (90, 95), W)).unwrap(),
            Some(held)
        );
        // Past both: free.
        assert_eq!(set(tree, &ask(&t, f, 3, (150, 200), W)).unwrap(), None);
        // Session 1 upgrades what only it holds, not what session 2 shares.
        assert_eq!(set(tree, &ask(&t, f, 1, (0, 49), W)).unwrap(), None);
        assert!(set(tree, &ask(&t, f, 1, (0, 60), W)).unwrap().is_some());
        // Unlocking always succeeds; then the range is free for others.
        set(tree, &ask(&t, f, 1, (0, u64::MAX), None)).unwrap();
        set(tree, &ask(&t, f, 2, (0, u64::MAX), None)).unwrap();
        assert_eq!(set(tree, &ask(&t, f, 3, (0, 149), W)).unwrap(), None);
        // Another owner of the same session is another holder too.
        let other_owner = LockRequest {
            owner: 2,
            ..ask(&t, f, 3, (10, 10), R)
        };
        assert!(set(tree, &other_owner).unwrap().is_some());
    });
}

#[test]
fn the_locks_of_a_session_that_stops_renewing_lapse() {
    each_store(|s| {
        let options = MetaOptions {
            lock_lease: Duration::from_secs(2),
            ..Default::default()
        };
        let t = Fx::with(s, 1 << 30, options);
        let f = t.file(ROOT_INO, b"f").ino;
        let tree = t.m.tree();
        set(tree, &ask(&t, f, 1, (0, 9), W)).unwrap();
        set(tree, &ask(&t, f, 2, (10, 19), W)).unwrap();
        // Session 1 keeps renewing; session 2 died. (The first lease
        // after the service started counts every session alive.)
        for _ in 0..25 {
            std::thread::sleep(Duration::from_millis(200));
            tree.renew_locks(1).unwrap();
        }
        assert!(set(tree, &ask(&t, f, 3, (0, 9), W)).unwrap().is_some());
        // The dead session is not revived by a late renewal: it is told.
        assert!(matches!(
            tree.renew_locks(2),
            Err(MetaError::NotFound { .. })
        ));
        assert_eq!(set(tree, &ask(&t, f, 3, (10, 19), W)).unwrap(), None);
        // The lapsed session's locks went with that change.
        let key = keys::under(keys::LOCK, t.v, f);
        let table: LockTable =
            crate::store::transact(t.m.store(), |txn| crate::records::load(txn, &key))
                .unwrap()
                .unwrap();
        let sessions: Vec<u64> = table.owners.iter().map(|o| o.session).collect();
        assert_eq!(sessions, [1, 3]);
    });
}

#[test]
fn bad_lock_requests_are_refused_and_change_nothing() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f").ino;
        let tree = t.m.tree();
        assert!(matches!(
            set(tree, &ask(&t, f, 1, (10, 9), W)),
            Err(MetaError::Invalid(_))
        ));
        assert!(matches!(
            set(tree, &ask(&t, 999_999, 1, (0, 9), W)),
            Err(MetaError::NotFound { .. })
        ));
        // A file's locked ranges are bounded: every other byte locked.
        for i in 0..MAX_RANGES as u64 {
            set(tree, &ask(&t, f, 1, (2 * i, 2 * i), W)).unwrap();
        }
        let past = (2 * MAX_RANGES as u64, 2 * MAX_RANGES as u64);
        assert!(matches!(
            set(tree, &ask(&t, f, 2, past, W)),
            Err(MetaError::NoLocks(_))
        ));
        // Releasing one makes room.
        set(tree, &ask(&t, f, 1, (0, 0), None)).unwrap();
        assert_eq!(set(tree, &ask(&t, f, 2, past, W)).unwrap(), None);
        // Releasing on a file that is gone succeeds.
        assert_eq!(set(tree, &ask(&t, 999_999, 1, (0, 9), None)).unwrap(), None);
    });
}

#[test]
fn two_sessions_racing_for_one_range_never_both_get_it() {
    each_store(|s| {
        let t = Arc::new(Fx::new(s, 1 << 30));
        let f = t.file(ROOT_INO, b"f").ino;
        for round in 0..20u64 {
            let range = (round * 10, round * 10 + 5);
            let barrier = Arc::new(Barrier::new(2));
            let granted: Vec<bool> = (1..=2u64)
                .map(|session| {
                    let (t, barrier) = (t.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        t.m.tree()
                            .set_lock(&ask(&t, f, session, range, W))
                            .unwrap()
                            .held()
                            .is_none()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            assert_eq!(
                granted.iter().filter(|g| **g).count(),
                1,
                "round {round}: {granted:?}"
            );
        }
    });
}

/// The last change of `ino` by another session than `session`, as a lock
/// of `session` is told.
fn foreign(t: &Fx, ino: u64, session: u64) -> u64 {
    let req = LockRequest {
        owner: 9,
        ..ask(t, ino, session, (1000, 1000), R)
    };
    match t.m.tree().set_lock(&req).unwrap() {
        LockAnswer::Granted { foreign_change } => foreign_change,
        held => panic!("{held:?}"),
    }
}

fn commit_as(t: &Fx, ino: u64, session: u64, block: u64) {
    t.m.files()
        .commit(&Commit {
            vol: t.v,
            files: vec![FileWrite {
                ino,
                slices: vec![slice(0, 4096, block)],
                mtime_ns: 1,
                ..Default::default()
            }],
            session,
            ..Default::default()
        })
        .unwrap();
}

#[test]
fn a_lock_tells_whether_another_mount_changed_the_file_since() {
    each_store(|s| {
        let t = Fx::new(s, 1 << 30);
        let f = t.file(ROOT_INO, b"f").ino;
        // The first lock: changed by someone unknown.
        let first = foreign(&t, f, 1);
        assert!(first > 0);
        assert_eq!(foreign(&t, f, 2), first);
        // Session 1's own commits are not news to it, session 2's are,
        // even when session 1 commits after them and with an older clock.
        commit_as(&t, f, 1, 10);
        assert_eq!(foreign(&t, f, 1), first);
        commit_as(&t, f, 2, 11);
        commit_as(&t, f, 1, 12);
        let after = foreign(&t, f, 1);
        assert!(after > first);
        assert!(foreign(&t, f, 2) > after, "session 1's last commit");
        assert_eq!(foreign(&t, f, 1), after, "nothing new for session 1");
    });
}
