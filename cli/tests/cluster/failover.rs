//! Two metadata processes over one etcd cluster: one leads, the other
//! stands by, and takes over when the leader dies; clients, storage nodes
//! and mounts are given both addresses and follow on their own.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use tracing::info;

use crate::{
    etcd::Etcd,
    harness::{docker::blob, Cluster, Mount},
};

/// What the workload acknowledged: each name and its bytes.
type Model = BTreeMap<String, Vec<u8>>;

/// One step of the workload: a create and write with fsync, and every few
/// steps a rename, a hard link or a delete of an earlier file. Updates
/// `model` only once the step returned.
fn step(d: &Path, i: u64, model: &Mutex<Model>) -> std::io::Result<()> {
    let name = format!("w/{i}");
    let data = blob(
        i,
        if i.is_multiple_of(10) {
            1 << 20
        } else {
            10_000
        },
    );
    let mut f = fs::File::create(d.join(&name))?;
    f.write_all(&data)?;
    f.sync_all()?;
    drop(f);
    model.lock().unwrap().insert(name, data);
    if i % 5 == 4 {
        let (from, to) = (format!("w/{}", i - 1), format!("r/{}", i - 1));
        fs::rename(d.join(&from), d.join(&to))?;
        let mut m = model.lock().unwrap();
        let data = m.remove(&from).unwrap();
        m.insert(to, data);
    }
    if i % 7 == 6 {
        let (from, to) = (format!("w/{i}"), format!("l/{i}"));
        fs::hard_link(d.join(&from), d.join(&to))?;
        let mut m = model.lock().unwrap();
        let data = m[&from].clone();
        m.insert(to, data);
    }
    let gone = format!("w/{}", i.saturating_sub(2));
    if i % 11 == 10 && model.lock().unwrap().contains_key(&gone) {
        fs::remove_file(d.join(&gone))?;
        model.lock().unwrap().remove(&gone);
    }
    Ok(())
}

/// 3 etcd members, 2 metadata processes, 7 storage nodes, an `ec:4+2`
/// volume mounted with both metadata addresses: a workload of creates,
/// writes with fsync, renames, hard links and deletes runs while the
/// leading metadata process is SIGKILLed, then an etcd member, then a
/// storage node for good. None stalls 10 s, every acknowledged step is
/// there afterwards byte for byte, nothing unacknowledged appears, and
/// the dead node's shards are rebuilt under the new leader. A step whose
/// call was in flight when the leader died may fail with EIO (its reply
/// was lost; calls are not yet made safe to send again): at most two.
#[test]
fn a_workload_rides_out_the_leader_an_etcd_member_and_a_node_dying() {
    let mut etcd = Etcd::start();
    let url = etcd.url("ha");
    let mut c = Cluster::start_metas(
        7,
        2,
        &[
            "--store",
            &url,
            "--down-after-secs",
            "3",
            "--out-after-secs",
            "8",
        ],
    );
    c.wait_for("a metadata process to lead", 30, |c| {
        c.leading_meta().is_some()
    });
    c.create_volume("v", "4GiB", "ec:4+2");
    let m = c.mount("v");
    let d = m.dir.clone();
    for dir in ["w", "r", "l"] {
        fs::create_dir(d.join(dir)).unwrap();
    }

    let model = Mutex::new(Model::new());
    // Names a failed step touched: there or not, in any state.
    let uncertain = Mutex::new(std::collections::BTreeSet::new());
    let failed = AtomicU64::new(0);
    let (steps, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    let longest = Mutex::new(Duration::ZERO);
    let wait_steps = |more: u64| {
        let until = steps.load(Ordering::SeqCst) + more;
        let deadline = Instant::now() + Duration::from_secs(120);
        while steps.load(Ordering::SeqCst) < until {
            assert!(Instant::now() < deadline, "the workload stopped moving");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    std::thread::scope(|s| {
        let workload = s.spawn(|| {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let started = Instant::now();
                if let Err(e) = step(&d, i, &model) {
                    // Only a call in flight when the leader died: its
                    // reply was lost, and it is not sent again (a retried
                    // call getting the first answer is still to do).
                    assert_eq!(e.raw_os_error(), Some(libc::EIO), "step {i}: {e}");
                    info!(step = i, error = %e, "a step failed");
                    failed.fetch_add(1, Ordering::SeqCst);
                    let mut m = model.lock().unwrap();
                    let j = i.saturating_sub(1);
                    for name in [
                        format!("w/{i}"),
                        format!("w/{j}"),
                        format!("r/{j}"),
                        format!("l/{i}"),
                        format!("w/{}", i.saturating_sub(2)),
                    ] {
                        m.remove(&name);
                        uncertain.lock().unwrap().insert(name);
                    }
                }
                let took = started.elapsed();
                let mut l = longest.lock().unwrap();
                if took > *l {
                    info!(step = i, ?took, "longest step yet");
                    *l = took;
                }
                drop(l);
                i += 1;
                steps.store(i, Ordering::SeqCst);
            }
        });
        wait_steps(40);
        let leader = c.leading_meta().expect("a leader");
        info!(leader, "--- SIGKILL the leading metadata process");
        c.kill_meta_at(leader);
        c.wait_for("the other metadata process to lead", 30, |c| {
            c.leading_meta().is_some_and(|l| l != leader)
        });
        wait_steps(40);
        info!("--- SIGKILL an etcd member");
        etcd.members[0].kill();
        wait_steps(40);
        info!("--- SIGKILL a storage node for good");
        c.kill_node(6);
        wait_steps(40);
        stop.store(true, Ordering::SeqCst);
        if workload.join().is_err() {
            panic!("the workload failed");
        }
    });
    let longest = *longest.lock().unwrap();
    info!(
        ?longest,
        steps = steps.load(Ordering::SeqCst),
        "--- the workload is done"
    );
    assert!(
        longest < Duration::from_secs(10),
        "a step stalled {longest:?}"
    );
    let failed = failed.load(Ordering::SeqCst);
    assert!(failed <= 2, "{failed} steps failed");

    let check = |d: &Path| {
        let model = model.lock().unwrap();
        for (name, data) in model.iter() {
            let got = fs::read(d.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(got == *data, "{name} differs");
        }
        let uncertain = uncertain.lock().unwrap();
        for dir in ["w", "r", "l"] {
            for e in fs::read_dir(d.join(dir)).unwrap() {
                let name = format!("{dir}/{}", e.unwrap().file_name().to_string_lossy());
                assert!(
                    model.contains_key(&name) || uncertain.contains(&name),
                    "{name} is there, never acknowledged"
                );
            }
        }
    };
    check(&d);
    m.unmount();

    c.wait_for("node 7 to be out", 60, |c| {
        c.node_state(6).as_deref() == Some("out")
    });
    c.wait_for("the repair of node 7's shards", 300, |c| {
        c.repaired() > 0 && c.repair_waiting().0 == 0
    });
    info!(
        rebuilt = c.repaired(),
        "--- node 7's shards rebuilt under the new leader"
    );
    let m = c.mount("v");
    check(&m.dir.clone());
    m.unmount();
}

/// A leader paused past its lease (SIGSTOP: a long pause, a frozen VM)
/// while the standby takes over, then woken: nothing it does commits (the
/// leader key fences its commits), it stands by, and a mount that knows
/// only its address gets errors, never an acknowledgement; the cluster
/// carries on under the new leader.
#[test]
fn a_leader_paused_past_its_lease_commits_nothing_when_it_wakes() {
    let etcd = Etcd::start();
    let url = etcd.url("paused");
    let c = Cluster::start_metas(6, 2, &["--store", &url]);
    c.wait_for("a metadata process to lead", 30, |c| {
        c.leading_meta().is_some()
    });
    c.create_volume("v", "1GiB", "ec:4+2");
    let old = c.leading_meta().unwrap();
    let new = 1 - old;
    let dir = c.dir.path().join("mnt-old");
    fs::create_dir_all(&dir).unwrap();
    let only_old = Mount::start_on(&c.meta_addr_of(old), c.log("mount-old"), "v", dir);
    let write_synced = |path: &Path, data: &[u8]| -> std::io::Result<()> {
        let mut f = fs::File::create(path)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write_synced(&only_old.dir.join("before"), b"before").unwrap();

    info!(old, "--- SIGSTOP the leader past its lease");
    c.signal_meta_at(old, libc::SIGSTOP);
    c.wait_for("the standby to lead", 30, |c| c.meta_says_it_leads(new));
    // (A mount that knew the old leader too would wait on its calls to
    // the paused process for the call timeout.)
    let dir = c.dir.path().join("mnt-new");
    fs::create_dir_all(&dir).unwrap();
    let on_new = Mount::start_on(&c.meta_addr_of(new), c.log("mount-new"), "v", dir);
    write_synced(&on_new.dir.join("under-new"), b"new").unwrap();

    info!("--- SIGCONT: the old leader wakes");
    c.signal_meta_at(old, libc::SIGCONT);
    let r = write_synced(&only_old.dir.join("from-old"), b"old");
    assert!(r.is_err(), "a deposed leader acknowledged a write");
    c.wait_for("the old leader to stand by", 30, |c| {
        !c.meta_says_it_leads(old)
    });
    assert!(c.meta_says_it_leads(new), "the new leader lost the lead");
    assert!(
        !on_new.dir.join("from-old").exists(),
        "a write through the deposed leader arrived"
    );
    assert_eq!(fs::read(on_new.dir.join("before")).unwrap(), b"before");
    assert_eq!(fs::read(on_new.dir.join("under-new")).unwrap(), b"new");
    write_synced(&on_new.dir.join("after"), b"after").unwrap();
    // Its writes are kept for a retry that cannot succeed: not unmounted
    // cleanly.
    drop(only_old);
    on_new.unmount();
}
