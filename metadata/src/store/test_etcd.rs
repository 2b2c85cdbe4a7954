//! One real etcd member for this test process, started on first use and
//! killed by the kernel when the process ends; each store a test asks for
//! lives under a prefix of its own, so tests share the member and never
//! see each other's keys.

use std::{
    net::TcpListener,
    sync::{atomic::AtomicU64, atomic::Ordering, mpsc, OnceLock},
};

use super::{
    etcd_member::{store_url, EtcdMember, MemberAddr},
    EtcdStore, EtcdTarget,
};

/// Two distinct free ports (both held while the second is picked).
fn free_ports() -> (u16, u16) {
    let a = TcpListener::bind("127.0.0.1:0").unwrap();
    let b = TcpListener::bind("127.0.0.1:0").unwrap();
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// A one-member cluster named `name` on free ports, its data in a new
/// temporary directory.
fn start_member(
    name: &str,
    die_with_parent: bool,
) -> std::io::Result<(EtcdMember, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let (client_port, peer_port) = free_ports();
    let addr = MemberAddr {
        name: name.into(),
        client_port,
        peer_port,
    };
    let log = dir.path().join("etcd.log");
    let m = EtcdMember::start(
        std::slice::from_ref(&addr),
        0,
        dir.path(),
        &log,
        die_with_parent,
    )?;
    Ok((m, dir))
}

/// The member's address. It is started on a thread that never ends, so
/// that its parent-death signal comes only when the process exits.
fn member() -> &'static MemberAddr {
    static MEMBER: OnceLock<MemberAddr> = OnceLock::new();
    MEMBER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || match start_member("test", true) {
            Ok(kept) => {
                tx.send(Ok(kept.0.addr.clone())).unwrap();
                let _kept = kept;
                loop {
                    std::thread::park();
                }
            }
            Err(e) => tx.send(Err(e.to_string())).unwrap(),
        });
        rx.recv().unwrap().expect("starting the test etcd member")
    })
}

/// A store on the shared member under a prefix no other store has.
pub(crate) fn store() -> EtcdStore {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let prefix = format!(
        "test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let url = store_url(std::slice::from_ref(member()), &prefix);
    EtcdStore::open(&EtcdTarget::parse(&url).unwrap()).unwrap()
}

/// A store on a member of its own, for a test that changes the whole
/// cluster (a compaction drops every prefix's old revisions): the member
/// lives as long as the guard. Bound as `let (_dir, _member, s)`, they
/// go in the right order: the store, the member, its directory.
pub(crate) fn private_store() -> (tempfile::TempDir, EtcdMember, EtcdStore) {
    let (m, dir) = start_member("private", false).unwrap();
    let url = store_url(std::slice::from_ref(&m.addr), "private");
    let s = EtcdStore::open(&EtcdTarget::parse(&url).unwrap()).unwrap();
    (dir, m, s)
}
