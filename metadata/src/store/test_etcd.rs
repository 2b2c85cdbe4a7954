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

/// The member's address. It is started on a thread that never ends, so
/// that its parent-death signal comes only when the process exits.
fn member() -> &'static MemberAddr {
    static MEMBER: OnceLock<MemberAddr> = OnceLock::new();
    MEMBER.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let dir = tempfile::tempdir().unwrap();
            let (client_port, peer_port) = free_ports();
            let addr = MemberAddr {
                name: "test".into(),
                client_port,
                peer_port,
            };
            let m = EtcdMember::start(
                std::slice::from_ref(&addr),
                0,
                dir.path(),
                &dir.path().join("etcd.log"),
                true,
            );
            match m {
                Ok(m) => {
                    tx.send(Ok(m.addr.clone())).unwrap();
                    let _keep = (m, dir);
                    loop {
                        std::thread::park();
                    }
                }
                Err(e) => tx.send(Err(e.to_string())).unwrap(),
            }
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
/// lives as long as the guard.
pub(crate) fn private_store() -> (EtcdStore, EtcdMember, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (client_port, peer_port) = free_ports();
    let addr = MemberAddr {
        name: "private".into(),
        client_port,
        peer_port,
    };
    let m = EtcdMember::start(
        std::slice::from_ref(&addr),
        0,
        dir.path(),
        &dir.path().join("etcd.log"),
        false,
    )
    .unwrap();
    let url = store_url(std::slice::from_ref(&addr), "private");
    let s = EtcdStore::open(&EtcdTarget::parse(&url).unwrap()).unwrap();
    (s, m, dir)
}
