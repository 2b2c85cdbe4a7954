//! One etcd member run as a child process on 127.0.0.1: what `tessera dev
//! --store etcd` starts beside its metadata service, and what tests of the
//! etcd backend run against (a real etcd, Debian's `etcd-server`).

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Operations one etcd transaction may hold on the members started here
/// (etcd's default is 128), and the largest request in bytes (default
/// 1.5 MiB): what the metadata service's largest commits need today. An
/// etcd cluster of one's own must allow as much (ARCHITECTURE.md).
pub const MAX_TXN_OPS: usize = 16384;
pub const MAX_REQUEST_BYTES: usize = 32 << 20;

/// The etcd binary: `$TESSERA_ETCD`, else `etcd` on the PATH.
fn etcd_bin() -> String {
    std::env::var("TESSERA_ETCD").unwrap_or_else(|_| "etcd".into())
}

/// Where one member listens.
#[derive(Clone, Debug)]
pub struct MemberAddr {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl MemberAddr {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// `NAME=PEER_URL,...` of every member: etcd's `--initial-cluster`.
fn initial_cluster(members: &[MemberAddr]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}", m.name, m.peer_url()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `etcd://127.0.0.1:PORT,...` of `members`, with `prefix`: the `--store`
/// of a metadata service using them.
pub fn store_url(members: &[MemberAddr], prefix: &str) -> String {
    let hosts: Vec<String> = members
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.client_port))
        .collect();
    format!("etcd://{}/{prefix}", hosts.join(","))
}

pub struct EtcdMember {
    pub addr: MemberAddr,
    child: Child,
    pub data_dir: PathBuf,
}

impl EtcdMember {
    /// Starts member `me` of the cluster `members` with its data under
    /// `dir` (kept across restarts) and its output appended to `log`, and
    /// waits until its client port accepts connections. With
    /// `die_with_parent`, the kernel kills it when the thread that started
    /// it exits.
    pub fn start(
        members: &[MemberAddr],
        me: usize,
        dir: &Path,
        log: &Path,
        die_with_parent: bool,
    ) -> std::io::Result<EtcdMember> {
        let addr = members[me].clone();
        let data_dir = dir.join(&addr.name);
        std::fs::create_dir_all(dir)?;
        let out = std::fs::File::options()
            .create(true)
            .append(true)
            .open(log)?;
        let state = if data_dir.exists() { "existing" } else { "new" };
        let mut cmd = Command::new(etcd_bin());
        cmd.args([
            "--name",
            &addr.name,
            "--data-dir",
            &data_dir.display().to_string(),
            "--listen-client-urls",
            &addr.client_url(),
            "--advertise-client-urls",
            &addr.client_url(),
            "--listen-peer-urls",
            &addr.peer_url(),
            "--initial-advertise-peer-urls",
            &addr.peer_url(),
            "--initial-cluster",
            &initial_cluster(members),
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "tessera",
            // Until the metadata service splits its large commits (a
            // release of a file with many extents, a renewal of 1024
            // orphans), a transaction may hold up to MAX_TXN_OPS writes.
            "--max-txn-ops",
            &MAX_TXN_OPS.to_string(),
            "--max-request-bytes",
            &MAX_REQUEST_BYTES.to_string(),
            // etcd keeps every revision until compacted: without this its
            // database grows until its quota, and then refuses every
            // write. A transaction reads at one revision for milliseconds,
            // far less than what is kept.
            "--auto-compaction-mode=periodic",
            // etcd's default quota is 2 GiB, and past it every write is
            // refused; nothing defragments the members yet.
            "--quota-backend-bytes=8589934592",
            "--auto-compaction-retention=10m",
            "--logger=zap",
            "--log-level=warn",
        ])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        // Its own process group: a Ctrl-C at a terminal reaches the
        // process that started it, which stops its users first.
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(0);
        }
        if die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl only, between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "starting {} (scripts/setup.sh installs etcd-server): {e}",
                    etcd_bin()
                ),
            )
        })?;
        let mut m = EtcdMember {
            addr,
            child,
            data_dir,
        };
        m.wait_listening(Duration::from_secs(20))?;
        Ok(m)
    }

    fn wait_listening(&mut self, within: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if TcpStream::connect(("127.0.0.1", self.addr.client_port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(std::io::Error::other(format!(
                    "etcd member {} exited ({status}) before listening",
                    self.addr.name
                )));
            }
            if Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "etcd member {} is not listening on {} after {within:?}",
                    self.addr.name,
                    self.addr.client_url()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How the member ended, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILLs the member and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERMs the member and waits up to 10 s, then SIGKILLs it.
    pub fn stop(&mut self) {
        // A child already reaped may have handed its pid on.
        if self.exited().is_some() {
            return;
        }
        // SAFETY: a signal to our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}
