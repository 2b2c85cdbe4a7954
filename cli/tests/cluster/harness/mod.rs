//! Starts the real `tessera` binary as processes: a metadata service and N
//! storage nodes on 127.0.0.1 with temporary directories and one log file
//! each, and FUSE mounts. SIGKILL and restart are test verbs. Everything is
//! stopped and unmounted on drop.

pub mod docker;

use std::{
    fs::{self, File},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use tracing::info;

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_test_writer()
        .try_init();
}

/// A port nothing listens on now and that this test process has not handed
/// out before: the kernel may return a just-released port twice.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap();
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub fn spawn(args: &[String], log: &Path) -> Child {
    let out = File::options().create(true).append(true).open(log).unwrap();
    Command::new(BIN)
        .args(args)
        .env("TESSERA_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("starting tessera")
}

pub fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn sigterm_and_wait(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(child);
}

pub struct NodeProc {
    pub port: u16,
    pub dir: PathBuf,
    pub child: Option<Child>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// Every metadata process's address, `a[,b...]`: what clients get.
    pub meta_addr: String,
    /// Each metadata process's address and process (several over one
    /// etcd store: one leads).
    metas: Vec<(String, Option<Child>)>,
    /// Extra flags for `tessera meta` (e.g. shorter down/out periods).
    meta_args: Vec<String>,
    /// Extra flags for every `tessera node`.
    node_args: Vec<String>,
    pub nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Starts metadata + `n` storage nodes and waits until all are up.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// [`Cluster::start`] with extra `tessera meta` flags.
    pub fn start_with(n: usize, meta_args: &[&str]) -> Cluster {
        Self::start_opts(n, meta_args, &[])
    }

    /// [`Cluster::start`] with extra `tessera meta` and `tessera node` flags.
    pub fn start_opts(n: usize, meta_args: &[&str], node_args: &[&str]) -> Cluster {
        Self::start_prepared(n, meta_args, node_args, |_| {})
    }

    /// [`Cluster::start_opts`], calling `prepare` before any node starts
    /// (e.g. to mount a small file system at a node's directory).
    pub fn start_prepared(
        n: usize,
        meta_args: &[&str],
        node_args: &[&str],
        prepare: impl FnOnce(&Cluster),
    ) -> Cluster {
        Self::start_full(n, 1, meta_args, node_args, prepare)
    }

    /// `metas` metadata processes over one store (`--store etcd://...`
    /// among `meta_args`), one of which leads, and `n` storage nodes.
    pub fn start_metas(n: usize, metas: usize, meta_args: &[&str]) -> Cluster {
        Self::start_full(n, metas, meta_args, &[], |_| {})
    }

    fn start_full(
        n: usize,
        metas: usize,
        meta_args: &[&str],
        node_args: &[&str],
        prepare: impl FnOnce(&Cluster),
    ) -> Cluster {
        init_logs();
        let dir = tempfile::Builder::new()
            .prefix("tessera-test")
            .tempdir_in(test_root())
            .unwrap();
        fs::create_dir_all(dir.path().join("logs")).unwrap();
        let metas: Vec<(String, Option<Child>)> = (0..metas)
            .map(|_| (format!("127.0.0.1:{}", free_port()), None))
            .collect();
        let meta_addr = metas
            .iter()
            .map(|(a, _)| a.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|i| NodeProc {
                port: free_port(),
                dir: dir.path().join(format!("node-{i}")),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            dir,
            meta_addr,
            metas,
            meta_args: meta_args.iter().map(|a| a.to_string()).collect(),
            node_args: node_args.iter().map(|a| a.to_string()).collect(),
            nodes,
        };
        prepare(&c);
        c.start_meta();
        for i in 0..n {
            c.start_node(i);
        }
        c.wait_nodes_up(n);
        c
    }

    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    /// The extra `tessera meta` flags of its next start (another store).
    pub fn set_meta_args(&mut self, args: &[&str]) {
        self.meta_args = args.iter().map(|a| a.to_string()).collect();
    }

    /// Starts every metadata process that is not running.
    pub fn start_meta(&mut self) {
        for i in 0..self.metas.len() {
            if self.metas[i].1.is_none() {
                self.start_meta_at(i);
            }
        }
    }

    /// Starts metadata process `i` (its log: `meta`, `meta-2`, ...).
    pub fn start_meta_at(&mut self, i: usize) {
        // A `--store` among the extra flags (etcd) replaces the directory.
        let store = match self.meta_args.iter().any(|a| a == "--store") {
            true => vec![],
            false => vec![
                "--data".into(),
                self.dir.path().join("meta").display().to_string(),
            ],
        };
        let args = vec![
            "meta".into(),
            "--listen".into(),
            self.metas[i].0.clone(),
            "--gc-interval-ms".into(),
            "500".into(),
            "--repair-interval-ms".into(),
            "500".into(),
        ];
        let args = [args, store, self.meta_args.clone()].concat();
        let log = match i {
            0 => self.log("meta"),
            i => self.log(&format!("meta-{}", i + 1)),
        };
        self.metas[i].1 = Some(spawn(&args, &log));
    }

    pub fn start_node(&mut self, i: usize) {
        let n = &self.nodes[i];
        let args = vec![
            "node".into(),
            "--data".into(),
            n.dir.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", n.port),
            "--meta".into(),
            self.meta_addr.clone(),
            "--label".into(),
            format!("host=node-{}", i + 1),
        ];
        let args = [args, self.node_args.clone()].concat();
        let child = spawn(&args, &self.log(&format!("node-{}", i + 1)));
        self.nodes[i].child = Some(child);
    }

    /// Starts one more storage node (in its own failure domain); returns
    /// its index.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        self.nodes.push(NodeProc {
            port: free_port(),
            dir: self.dir.path().join(format!("node-{}", i + 1)),
            child: None,
        });
        self.start_node(i);
        i
    }

    /// The cluster's id of node `i` (started with label host=node-{i+1}).
    pub fn node_id(&self, i: usize) -> u64 {
        let label = format!("host=node-{}", i + 1);
        self.cli_ok(&["node", "ls"])
            .lines()
            .find(|l| l.split_whitespace().last() == Some(label.as_str()))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("node {} is not listed", i + 1))
    }

    /// The state `node ls` shows for node `i`.
    pub fn node_state(&self, i: usize) -> Option<String> {
        let label = format!("host=node-{}", i + 1);
        self.cli_ok(&["node", "ls"])
            .lines()
            .find(|l| l.split_whitespace().last() == Some(label.as_str()))
            .map(|l| l.split_whitespace().nth(2).unwrap().to_string())
    }

    /// Corrupt shards reported so far, from `cluster status`.
    pub fn corrupt_reported(&self) -> u64 {
        let out = self.cli_ok(&["cluster", "status"]);
        let line = out.lines().find(|l| l.starts_with("corrupt:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Shards rebuilt or moved by repair so far, from `cluster status`.
    pub fn repaired(&self) -> u64 {
        let out = self.cli_ok(&["cluster", "status"]);
        let line = out.lines().find(|l| l.starts_with("repaired:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Waits until `ok` holds, polling.
    pub fn wait_for(&self, what: &str, secs: u64, mut ok: impl FnMut(&Cluster) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !ok(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SIGTERM to the metadata service; returns how long it took to exit.
    pub fn stop_meta(&mut self) -> Duration {
        info!("--- SIGTERM metadata service");
        let start = Instant::now();
        for (_, m) in self.metas.iter_mut() {
            if let Some(mut c) = m.take() {
                sigterm_and_wait(&mut c);
            }
        }
        start.elapsed()
    }

    pub fn kill_meta(&mut self) {
        info!("--- SIGKILL metadata service");
        for i in 0..self.metas.len() {
            self.kill_meta_at(i);
        }
    }

    /// SIGKILLs metadata process `i`.
    pub fn kill_meta_at(&mut self, i: usize) {
        if let Some(mut c) = self.metas[i].1.take() {
            sigkill(&mut c);
        }
    }

    /// Which running metadata process says (in its log) that it leads.
    pub fn leading_meta(&self) -> Option<usize> {
        (0..self.metas.len()).find(|&i| self.metas[i].1.is_some() && self.meta_says_it_leads(i))
    }

    /// Whether metadata process `i`'s log says it leads (its last word on
    /// the lead is "ready", not "standing by").
    pub fn meta_says_it_leads(&self, i: usize) -> bool {
        let log = match i {
            0 => self.log("meta"),
            i => self.log(&format!("meta-{}", i + 1)),
        };
        let text = fs::read_to_string(log).unwrap_or_default();
        text.lines()
            .rev()
            .find(|l| l.contains("metadata service ready") || l.contains("standing by"))
            .is_some_and(|l| l.contains("metadata service ready"))
    }

    /// Metadata process `i`'s address.
    pub fn meta_addr_of(&self, i: usize) -> String {
        self.metas[i].0.clone()
    }

    /// Sends `signal` (SIGSTOP, SIGCONT) to metadata process `i`.
    pub fn signal_meta_at(&self, i: usize, signal: i32) {
        let child = self.metas[i]
            .1
            .as_ref()
            .expect("a running metadata process");
        // SAFETY: a signal to a child process of ours.
        unsafe { libc::kill(child.id() as i32, signal) };
    }

    pub fn kill_node(&mut self, i: usize) {
        info!("--- SIGKILL node {}", i + 1);
        if let Some(mut c) = self.nodes[i].child.take() {
            sigkill(&mut c);
        }
    }

    /// Stops node `i` (SIGSTOP) without closing anything: it still
    /// accepts connections (the kernel does) and answers nothing, as a
    /// node on a stuck disk would. [`Cluster::resume_node`] lets it go on.
    pub fn pause_node(&self, i: usize) {
        info!("--- SIGSTOP node {}", i + 1);
        self.signal_node(i, libc::SIGSTOP);
    }

    pub fn resume_node(&self, i: usize) {
        info!("--- SIGCONT node {}", i + 1);
        self.signal_node(i, libc::SIGCONT);
    }

    fn signal_node(&self, i: usize, signal: i32) {
        let c = self.nodes[i].child.as_ref().expect("node running");
        // SAFETY: a signal to a child process this cluster started and
        // has not reaped.
        assert_eq!(unsafe { libc::kill(c.id() as i32, signal) }, 0, "kill");
    }

    /// Stops every process gracefully (SIGTERM), nodes first.
    pub fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                sigterm_and_wait(&mut c);
            }
        }
        for (_, m) in self.metas.iter_mut() {
            if let Some(mut c) = m.take() {
                sigterm_and_wait(&mut c);
            }
        }
    }

    pub fn start_all(&mut self) {
        self.start_meta();
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        self.wait_nodes_up(self.nodes.len());
    }

    /// Runs `tessera ARGS --meta ADDR`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .env("TESSERA_META", &self.meta_addr)
            .env("TESSERA_LOG", "warn")
            .output()
            .expect("running tessera")
    }

    /// Runs the CLI and asserts success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "tessera {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn wait_nodes_up(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.cli(&["node", "ls"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let up = text
                .lines()
                .filter(|l| l.split_whitespace().nth(2) == Some("up"))
                .count();
            if out.status.success() && up >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {up} of {n} nodes up:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Storage node `i`'s own statistics, from its Stat call.
    pub fn node_stat(&self, i: usize) -> tessera_proto::pb::StatResponse {
        use tessera_proto::pb;
        let addr = format!("http://127.0.0.1:{}", self.nodes[i].port);
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut c = pb::node_client::NodeClient::connect(addr).await.unwrap();
                c.stat(pb::StatRequest {}).await.unwrap().into_inner()
            })
    }

    /// (shards, bytes) waiting for repair, from `cluster status`.
    pub fn repair_waiting(&self) -> (u64, u64) {
        let out = self.cli_ok(&["cluster", "status"]);
        let line = out.lines().find(|l| l.starts_with("repair:")).unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let shards = words[1].parse().unwrap();
        let bytes = words
            .iter()
            .position(|w| w.starts_with("bytes)"))
            .map(|i| words[i - 1].trim_start_matches('(').parse().unwrap())
            .unwrap();
        (shards, bytes)
    }

    /// Live shard bytes on all running nodes, from their own Stat.
    pub fn used_bytes(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .map(|i| self.node_stat(i).used_bytes)
            .sum()
    }

    /// Shards on all running nodes, from their own Stat (`node ls` shows
    /// what the last heartbeats said).
    pub fn stored_shards(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .map(|i| self.node_stat(i).shard_count)
            .sum()
    }

    /// Bytes of segment files on all running nodes' disks.
    pub fn segment_bytes(&self) -> u64 {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].child.is_some())
            .map(|i| self.node_stat(i).segment_bytes)
            .sum()
    }

    /// Shards stored on all nodes, as `node ls` reports them.
    pub fn shard_count(&self) -> u64 {
        self.cli_ok(&["node", "ls"])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().nth(5).unwrap().parse::<u64>().unwrap())
            .sum()
    }

    pub fn create_volume(&self, name: &str, size: &str, protection: &str) {
        self.cli_ok(&[
            "volume",
            "create",
            name,
            "--size",
            size,
            "--protection",
            protection,
        ]);
    }

    pub fn mount(&self, volume: &str) -> Mount {
        self.mount_at(volume, &format!("mnt-{volume}"))
    }

    /// Another mount of `volume`, at `name` in the cluster's directory (as
    /// another host would mount it).
    pub fn mount_at(&self, volume: &str, name: &str) -> Mount {
        let dir = self.dir.path().join(name);
        fs::create_dir_all(&dir).unwrap();
        Mount::start(self, volume, dir)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // TESSERA_TEST_LOGS=DIR keeps every log of a failed test.
            if let Ok(to) = std::env::var("TESSERA_TEST_LOGS") {
                let _ = Command::new("cp")
                    .args([
                        "-r",
                        &self.dir.path().join("logs").display().to_string(),
                        &to,
                    ])
                    .status();
            }
            // Show how each process saw the failure.
            if let Ok(entries) = fs::read_dir(self.dir.path().join("logs")) {
                for e in entries.flatten() {
                    let text = fs::read_to_string(e.path()).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(15).collect();
                    eprintln!("==== {} (last lines)", e.path().display());
                    for l in tail.iter().rev() {
                        eprintln!("{l}");
                    }
                }
            }
        }
        for n in self.nodes.iter_mut() {
            if let Some(mut c) = n.child.take() {
                sigkill(&mut c);
            }
        }
        for (_, m) in self.metas.iter_mut() {
            if let Some(mut c) = m.take() {
                sigkill(&mut c);
            }
        }
    }
}

/// Where test clusters keep their data: a real disk, not /tmp's tmpfs.
pub fn test_root() -> PathBuf {
    let root = std::env::var_os("TESSERA_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    fs::create_dir_all(&root).unwrap();
    root
}

pub fn is_mounted(dir: &Path) -> bool {
    let target = dir.display().to_string();
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(target.as_str()))
}

pub struct Mount {
    pub dir: PathBuf,
    volume: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Mount {
    fn start(c: &Cluster, volume: &str, dir: PathBuf) -> Mount {
        let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
        let log = c.log(&format!("mount-{volume}-{}", name.unwrap_or_default()));
        Mount::start_on(&c.meta_addr, log, volume, dir)
    }

    /// A mount of `volume` at `dir` through the metadata service at
    /// `meta` (a cluster the harness did not start), logging to `log`.
    pub fn start_on(meta: &str, log: PathBuf, volume: &str, dir: PathBuf) -> Mount {
        let args = vec![
            "mount".into(),
            volume.into(),
            dir.display().to_string(),
            "--meta".into(),
            meta.to_string(),
        ];
        let mut child = spawn(&args, &log);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&dir) {
            if let Ok(Some(s)) = child.try_wait() {
                panic!(
                    "mount exited with {s}: {}",
                    fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "mount of {volume} did not appear"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        info!("--- mounted {volume} at {}", dir.display());
        Mount {
            dir,
            volume: volume.into(),
            child: Some(child),
            log,
        }
    }

    /// The most resident memory the mount process has had, in MiB.
    pub fn peak_rss_mib(&self) -> u64 {
        let pid = self.child.as_ref().expect("mount is running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib / 1024
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    /// Unmounts cleanly (as a user would) and waits for the process to exit.
    pub fn unmount(mut self) {
        info!("--- unmount {}", self.volume);
        let st = Command::new("umount").arg(&self.dir).status().unwrap();
        assert!(st.success(), "umount {} failed", self.dir.display());
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(s)) = c.try_wait() {
                    assert!(
                        s.success(),
                        "mount process exited with {s}: {}",
                        fs::read_to_string(&self.log).unwrap_or_default()
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "mount process did not exit after umount"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILLs the FUSE process and lazily unmounts the dead mount.
    pub fn kill(mut self) {
        info!("--- SIGKILL mount of {}", self.volume);
        if let Some(mut c) = self.child.take() {
            sigkill(&mut c);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            sigkill(&mut c);
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The largest number a writer process printed on its stdout, one per
/// line, each once its transaction committed: what was acknowledged.
pub struct Acked {
    last: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reader: std::thread::JoinHandle<()>,
}

impl Acked {
    /// Reads `writer`'s stdout (piped) until it closes.
    pub fn follow(writer: &mut Child) -> Acked {
        use std::io::BufRead;
        let last = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let out = writer.stdout.take().expect("the writer's stdout is piped");
        let seen = last.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Ok(id) = line.trim().parse() {
                    seen.store(id, std::sync::atomic::Ordering::SeqCst);
                }
            }
        });
        Acked { last, reader }
    }

    pub fn now(&self) -> u64 {
        self.last.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The last number, once the writer's stdout closed.
    pub fn finish(self) -> u64 {
        self.reader.join().unwrap();
        self.last.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Deterministic bytes for (seed, offset): tests regenerate them to verify.
pub fn pattern(seed: u64, offset: u64, buf: &mut [u8]) {
    assert_eq!(offset % 8, 0);
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let mut x = seed ^ (offset / 8 + i as u64).wrapping_mul(0x9E3779B97F4A7C15);
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58476D1CE4E5B9);
        x ^= x >> 29;
        let bytes = x.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
}
