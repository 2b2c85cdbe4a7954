//! The Docker side of the harness: a real Docker engine (scripts/docker.sh
//! starts dockerd when none runs and builds the test image), `tessera
//! plugin docker` as a process on a unix socket, and the managed-plugin
//! package installed with `docker plugin create`.

use std::{
    fs,
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Once,
    time::{Duration, Instant},
};

use tracing::info;

use super::{is_mounted, pattern, sigkill, spawn, Cluster};

pub const IMAGE: &str = "tessera-test/busybox";

pub fn docker_bin() -> &'static str {
    // Debian's client matches Debian's engine; a newer client may be first
    // on PATH.
    if Path::new("/usr/bin/docker").exists() {
        "/usr/bin/docker"
    } else {
        "docker"
    }
}

/// Starts dockerd if needed and builds the test image, once per test run.
pub fn docker_ready() {
    static READY: Once = Once::new();
    READY.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/docker.sh");
        let st = Command::new("bash").arg(script).status().unwrap();
        assert!(st.success(), "scripts/docker.sh failed");
    });
}

pub fn docker(args: &[&str]) -> Output {
    Command::new(docker_bin())
        .args(args)
        .output()
        .expect("running docker")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn docker_err(args: &[&str]) -> String {
    let out = docker(args);
    assert!(!out.status.success(), "docker {args:?} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A `tessera plugin docker` process under a driver name of its own, so
/// tests never meet each other's volumes in Docker.
pub struct Plugin {
    pub name: String,
    pub socket: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    pub meta: String,
    pub child: Option<Child>,
}

impl Plugin {
    pub fn start(c: &Cluster, tag: &str) -> Plugin {
        Self::start_with_meta(c, tag, &c.meta_addr.clone())
    }

    pub fn start_with_meta(c: &Cluster, tag: &str, meta: &str) -> Plugin {
        docker_ready();
        let name = format!("tessera-{tag}-{}", std::process::id());
        let mut p = Plugin {
            socket: PathBuf::from(format!("/run/docker/plugins/{name}.sock")),
            state: c.dir.path().join(format!("plugin-{tag}")),
            log: c.log(&format!("plugin-{tag}")),
            name,
            meta: meta.into(),
            child: None,
        };
        p.restart();
        p
    }

    /// Starts the plugin process (again) and waits for its socket.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "plugin already running");
        let _ = fs::remove_file(&self.socket);
        let args = vec![
            "plugin".into(),
            "docker".into(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--state-dir".into(),
            self.state.display().to_string(),
            "--meta".into(),
            self.meta.clone(),
        ];
        self.child = Some(spawn(&args, &self.log));
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            assert!(Instant::now() < deadline, "plugin socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        info!("--- SIGKILL plugin {}", self.name);
        if let Some(mut c) = self.child.take() {
            sigkill(&mut c);
        }
    }

    pub fn mountpoint(&self, volume: &str) -> PathBuf {
        self.state.join("mnt").join(volume)
    }

    /// `docker volume create -d PLUGIN -o OPT... VOLUME`, which must succeed.
    pub fn create(&self, volume: &str, opts: &[&str]) {
        let mut args = vec!["volume", "create", "-d", &self.name];
        for o in opts {
            args.extend_from_slice(&["-o", o]);
        }
        args.push(volume);
        docker_ok(&args);
    }

    /// `docker run` with this test's label, so cleanup finds the container.
    pub fn run(&self, extra: &[&str], volume: &str, script: &str) -> Output {
        let label = format!("tessera-test={}", self.name);
        let vol = format!("{volume}:/data");
        let mut args = vec!["run", "--label", &label, "-v", &vol];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[IMAGE, "sh", "-c", script]);
        docker(&args)
    }

    pub fn run_ok(&self, extra: &[&str], volume: &str, script: &str) -> String {
        let out = self.run(extra, volume, script);
        assert!(
            out.status.success(),
            "container failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a container that reads `stdin` into `/data/NAME`.
    pub fn write_file(&self, volume: &str, name: &str, data: &[u8]) {
        let label = format!("tessera-test={}", self.name);
        let vol = format!("{volume}:/data");
        let script = format!("cat > /data/{name}");
        let mut child = Command::new(docker_bin())
            .args(["run", "-i", "--rm", "--label", &label, "-v", &vol, IMAGE])
            .args(["sh", "-c", &script])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "writing {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// One raw request on the plugin socket: (HTTP status, JSON body).
    pub fn request(&self, endpoint: &str, body: &str) -> (u16, serde_json::Value) {
        let mut s = UnixStream::connect(&self.socket).unwrap();
        write!(
            s,
            "POST /{endpoint} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let json = resp.split_once("\r\n\r\n").unwrap().1;
        (status, serde_json::from_str(json).unwrap())
    }

    pub fn inspect_status(&self, volume: &str) -> serde_json::Value {
        let out = docker_ok(&["volume", "inspect", volume]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["Status"].clone()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let label = format!("label=tessera-test={}", self.name);
        let ids = docker(&["ps", "-aq", "--filter", &label]);
        for id in String::from_utf8_lossy(&ids.stdout).split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
        if self.child.is_some() {
            let driver = format!("driver={}", self.name);
            let vols = docker(&["volume", "ls", "-q", "--filter", &driver]);
            for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
                let _ = docker(&["volume", "rm", "-f", v]);
            }
        }
        self.kill();
        let _ = fs::remove_file(&self.socket);
        // Mount processes outlive the plugin by design: take down any left.
        if let Ok(dirs) = fs::read_dir(self.state.join("mnt")) {
            for d in dirs.flatten() {
                if is_mounted(&d.path()) {
                    let _ = Command::new("umount").arg("-l").arg(d.path()).status();
                }
            }
        }
    }
}

pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn blob(seed: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    pattern(seed, 0, &mut b);
    b
}

/// The managed-plugin package: `docker plugin create` from the rootfs and
/// config.json that scripts/package-docker-plugin.sh builds.
pub struct ManagedPlugin {
    pub name: String,
}

impl ManagedPlugin {
    pub fn install(c: &Cluster) -> ManagedPlugin {
        docker_ready();
        let name = format!("tessera-managed-{}", std::process::id());
        let pkg = c.dir.path().join("managed-plugin");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/package-docker-plugin.sh");
        let st = Command::new("bash")
            .arg(script)
            .arg(&pkg)
            .arg(super::BIN)
            .status()
            .unwrap();
        assert!(st.success(), "packaging the managed plugin failed");
        let plugin = ManagedPlugin { name };
        docker_ok(&["plugin", "create", &plugin.name, &pkg.display().to_string()]);
        docker_ok(&[
            "plugin",
            "set",
            &plugin.name,
            &format!("TESSERA_META={}", c.meta_addr),
        ]);
        docker_ok(&["plugin", "enable", &plugin.name]);
        plugin
    }
}

impl Drop for ManagedPlugin {
    fn drop(&mut self) {
        let driver = format!("driver={}:latest", self.name);
        let vols = docker(&["volume", "ls", "-q", "--filter", &driver]);
        for v in String::from_utf8_lossy(&vols.stdout).split_whitespace() {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
        let _ = docker(&["plugin", "disable", "-f", &self.name]);
        let _ = docker(&["plugin", "rm", "-f", &self.name]);
    }
}
