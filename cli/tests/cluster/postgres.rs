//! PostgreSQL (Debian's package, as user `postgres`) on a mounted `ec:4+2`
//! volume: a full pgbench run, then a crash of the storage node holding the
//! most shards together with the postmaster mid-run. After recovery on the
//! same mount, `pg_amcheck` must be clean, pgbench's balances must agree
//! and every insert whose commit returned must be there.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::harness::{free_port, Acked, Cluster};

/// One PostgreSQL cluster with its data directory on a Tessera mount and
/// its socket and log on the local disk. Stopped at once when dropped.
struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    port: u16,
}

impl Postgres {
    /// `initdb --data-checksums` in `data`, socket and log under `local`.
    fn init(data: &Path, local: &Path) -> Postgres {
        let bin = fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed by scripts/setup.sh")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max()
            .expect("a PostgreSQL version with initdb");
        for dir in [data, local] {
            fs::create_dir_all(dir).unwrap();
            chown_postgres(dir);
        }
        fs::set_permissions(data, fs::Permissions::from_mode(0o700)).unwrap();
        let pg = Postgres {
            bin,
            data: data.into(),
            socket: local.into(),
            log: local.join("server.log"),
            port: free_port(),
        };
        pg.run_ok(
            "initdb",
            &["-D", &pg.data(), "--data-checksums", "-A", "trust"],
        );
        pg
    }

    fn data(&self) -> String {
        self.data.display().to_string()
    }

    /// `command args` as user postgres.
    fn command(&self, command: &str, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"])
            .arg(self.bin.join(command))
            .args(args)
            .env("PGHOST", &self.socket)
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", "postgres")
            .current_dir(&self.socket);
        c
    }

    fn run(&self, command: &str, args: &[&str]) -> Output {
        self.command(command, args).output().unwrap()
    }

    fn run_ok(&self, command: &str, args: &[&str]) -> String {
        let out = self.run(command, args);
        assert!(
            out.status.success(),
            "{command} {args:?} failed: {}{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&self.log).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the server and waits until it accepts connections (after
    /// crash recovery, if it needs one).
    fn start(&self) {
        // The postmaster outlives pg_ctl: it is reparented to this process,
        // which can then reap it after a crash (an init that does not reap
        // would leave a zombie whose pid PostgreSQL takes for a live one).
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        let opts = format!(
            "-p {} -k {} -c listen_addresses='' -c max_connections=30",
            self.port,
            self.socket.display()
        );
        let log = self.log.display().to_string();
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "300",
                "-o",
                &opts,
                "start",
            ],
        );
    }

    /// One SQL statement's result, unaligned and without headers.
    fn sql(&self, query: &str) -> String {
        self.run_ok("psql", &["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", query])
            .trim()
            .to_string()
    }

    /// The postmaster's process id, from postmaster.pid.
    fn postmaster(&self) -> Option<i32> {
        let text = fs::read_to_string(self.data.join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// SIGKILLs the postmaster and every process it started, as a crash of
    /// the database host would stop them.
    fn crash(&self) {
        let Some(pid) = self.postmaster() else { return };
        tracing::info!("--- SIGKILL postmaster {pid} and its children");
        let children = children_of(pid);
        unsafe { libc::kill(pid, libc::SIGKILL) };
        for &child in &children {
            unsafe { libc::kill(child, libc::SIGKILL) };
        }
        // PostgreSQL refuses to start while the old postmaster's pid
        // exists, zombie or not: this process reaps them (it is their
        // subreaper, see `start`).
        let mut left: Vec<i32> = children.into_iter().chain([pid]).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !left.is_empty() {
            left.retain(|&p| {
                unsafe { libc::waitpid(p, std::ptr::null_mut(), libc::WNOHANG) };
                Path::new(&format!("/proc/{p}")).exists()
            });
            assert!(
                Instant::now() < deadline,
                "postgres processes {left:?} did not go"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.postmaster().is_some() {
            let _ = self.run("pg_ctl", &["-D", &self.data(), "-m", "immediate", "stop"]);
        }
    }
}

fn chown_postgres(path: &Path) {
    let st = Command::new("chown")
        .args(["postgres:", &path.display().to_string()])
        .status()
        .unwrap();
    assert!(st.success(), "chown postgres {}", path.display());
}

/// Process ids whose parent is `pid` (a process already gone leaves its
/// children to init, so this is taken before the kill).
fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

/// pgbench's TPC-B-like run: `clients` clients for `secs` seconds.
fn pgbench(pg: &Postgres, clients: u32, secs: u32) -> Child {
    pg.command(
        "pgbench",
        &[
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &secs.to_string(),
            "-n",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// A psql script that inserts ids one transaction each and echoes every id
/// once its commit returned; psql stops at the first error.
fn committed_ids_script(dir: &Path, count: u64) -> PathBuf {
    let mut s = String::new();
    for id in 1..=count {
        s.push_str(&format!(
            "INSERT INTO committed VALUES ({id});\n\\echo {id}\n"
        ));
    }
    let path = dir.join("committed.sql");
    fs::write(&path, s).unwrap();
    chown_postgres(&path);
    path
}

/// pgbench's invariant: every transfer moved the same amount in accounts,
/// tellers, branches and history, so the four sums agree.
fn balances(pg: &Postgres) -> String {
    pg.sql(
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || \
                (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || \
                (SELECT sum(bbalance) FROM pgbench_branches) || ' ' || \
                (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
    )
}

fn assert_balances_agree(pg: &Postgres) {
    let sums = balances(pg);
    let v: Vec<&str> = sums.split_whitespace().collect();
    assert_eq!(v.len(), 4, "balances: {sums}");
    assert!(
        v.iter().all(|s| *s == v[0]),
        "accounts, tellers, branches and history disagree: {sums}"
    );
}

fn assert_amcheck_clean(pg: &Postgres) {
    let out = pg.run(
        "pg_amcheck",
        &[
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--progress",
        ],
    );
    assert!(
        out.status.success(),
        "pg_amcheck found problems: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn postgres_runs_pgbench_and_recovers_every_commit_after_a_node_and_postmaster_crash() {
    let mut c = Cluster::start(6);
    c.create_volume("pg", "16GiB", "ec:4+2");
    // PostgreSQL runs as its own user: it must reach the mount.
    fs::set_permissions(c.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let m = c.mount("pg");
    fs::set_permissions(&m.dir, fs::Permissions::from_mode(0o755)).unwrap();
    let pg = Postgres::init(&m.path("pg"), &c.dir.path().join("pg-local"));
    pg.start();
    pg.run_ok("pgbench", &["-i", "-s", "20", "-q"]);

    // A whole run to the end.
    let run = pgbench(&pg, 8, 60).wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "pgbench failed: {report}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let tps = report
        .lines()
        .find(|l| l.starts_with("tps"))
        .unwrap_or("no tps line");
    tracing::info!("--- pgbench s20 c8 60 s: {tps}");
    assert!(
        report.contains("number of failed transactions: 0"),
        "pgbench: {report}"
    );
    assert_balances_agree(&pg);

    // Again, with a writer of committed ids beside it; a crash mid-run.
    pg.sql("CREATE TABLE committed (id bigint PRIMARY KEY)");
    let script = committed_ids_script(&pg.socket, 1_000_000);
    let load = pgbench(&pg, 8, 600);
    let mut writer = pg
        .command(
            "psql",
            &[
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-f",
                &script.display().to_string(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let acked = Acked::follow(&mut writer);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) || acked.now() < 100 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{} ids committed in 2 minutes",
            acked.now()
        );
        if let Ok(Some(s)) = writer.try_wait() {
            panic!("the id writer stopped by itself ({s})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let busiest = (0..c.nodes.len())
        .max_by_key(|i| c.node_stat(*i).shard_count)
        .unwrap();
    c.kill_node(busiest);
    pg.crash();
    let _ = writer.wait();
    let acked = acked.finish();
    let load = load.wait_with_output().unwrap();
    assert!(!load.status.success(), "pgbench did not notice the crash");

    // Recovery on the same mount, one node still down.
    pg.start();
    assert_amcheck_clean(&pg);
    assert_balances_agree(&pg);
    let (present, top): (u64, u64) = {
        let r = pg.sql(&format!(
            "SELECT count(*) FILTER (WHERE id <= {acked}) || ' ' || coalesce(max(id), 0) FROM committed"
        ));
        let (a, b) = r.split_once(' ').expect("count and max");
        (a.parse().unwrap(), b.parse().unwrap())
    };
    tracing::info!(
        "--- {acked} ids acknowledged before the crash; {present} of them present, largest {top}"
    );
    assert_eq!(present, acked, "acknowledged ids are missing");
    pg.stop();
    c.start_node(busiest);
    m.unmount();
}
