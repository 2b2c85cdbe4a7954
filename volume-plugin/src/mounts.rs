//! The host's FUSE mounts of Tessera volumes.
//!
//! One mount per volume, shared by every container that uses it, counted by
//! caller id and unmounted when the last caller goes. Each mount is served
//! by its own `tessera mount` process in its own session, so a plugin that
//! is killed or upgraded leaves the mounts working; the callers of each
//! mount are kept in a state file that a restarted plugin reads back.
//!
//! Invariant: a record with callers is written durably before the caller is
//! told the mount point, and a record leaves the state file only after its
//! mount is gone. A record without callers means an unmount was cut short;
//! [`MountTable::open`] finishes it.
//!
//! The table is shared: its state is locked only to read it or to record
//! a change (which saves the file), never while a mount process starts or
//! stops, so a slow mount of one volume holds up no other. Operations on
//! one volume must not overlap: the caller serializes them per volume (the
//! Docker driver's volume locks).

use std::{
    collections::HashMap,
    fs,
    io::Read,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

use nix::{errno::Errno, mount::MntFlags};
use tessera_common::validate;
use tracing::{info, warn};

use crate::{
    state::{self, MountRecord, State},
    PluginError, Result,
};

/// Longest caller id accepted (Docker's are 64 hex digits).
const MAX_CALLER: usize = 1024;

/// Where and how mounts are made.
#[derive(Clone, Debug)]
pub struct MountConfig {
    /// Holds `state.json`, `logs/NAME.log` and the mount points `mnt/NAME`.
    pub state_dir: PathBuf,
    /// The `tessera` binary, run as `EXE mount NAME DIR --meta ADDR`.
    pub exe: PathBuf,
    /// Address of the metadata service, passed to every mount process.
    pub meta: String,
    /// How long a new mount may take to appear.
    pub mount_timeout: Duration,
    /// How long an unmount waits for the mount process to flush and exit.
    pub exit_timeout: Duration,
}

impl MountConfig {
    pub fn new(state_dir: PathBuf, exe: PathBuf, meta: String) -> Self {
        MountConfig {
            state_dir,
            exe,
            meta,
            mount_timeout: Duration::from_secs(10),
            exit_timeout: Duration::from_secs(60),
        }
    }
}

/// The mounts of this host.
pub struct MountTable {
    cfg: MountConfig,
    state_path: PathBuf,
    state: Mutex<State>,
    /// Mount processes this plugin process started, so they can be reaped.
    children: Mutex<HashMap<u32, Child>>,
}

impl MountTable {
    /// Opens the state dir, adopts the mounts a previous plugin process left
    /// and finishes any unmount it did not.
    pub fn open(mut cfg: MountConfig) -> Result<MountTable> {
        for sub in ["mnt", "logs"] {
            let d = cfg.state_dir.join(sub);
            fs::create_dir_all(&d)
                .map_err(|e| PluginError::io(format!("creating {}", d.display()), e))?;
        }
        cfg.state_dir = fs::canonicalize(&cfg.state_dir)
            .map_err(|e| PluginError::io(format!("resolving {}", cfg.state_dir.display()), e))?;
        let state_path = state::path_in(&cfg.state_dir);
        let state = state::load(&state_path)?;
        let table = MountTable {
            cfg,
            state_path,
            state: Mutex::new(state),
            children: Mutex::new(HashMap::new()),
        };
        let unfinished: Vec<String> = table
            .state()
            .volumes
            .iter()
            .filter(|(_, r)| r.callers.is_empty())
            .map(|(n, _)| n.clone())
            .collect();
        for name in unfinished {
            table.finish_unmount(&name)?;
        }
        for (name, rec) in &table.state().volumes {
            let serving = serving(rec);
            info!(volume = %name, dir = %rec.dir.display(), pid = rec.pid, callers = rec.callers.len(), serving, "adopted mount");
        }
        Ok(table)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("mount state lock")
    }

    fn record(&self, name: &str) -> Option<MountRecord> {
        self.state().volumes.get(name).cloned()
    }

    /// Mounts `name` for `caller` (or adds the caller to the existing mount)
    /// and returns the mount point.
    pub fn mount(&self, name: &str, caller: &str) -> Result<PathBuf> {
        validate::volume_name(name)?;
        check_caller(caller)?;
        self.reap();
        let previous = self.record(name);
        if let Some(rec) = &previous {
            if serving(rec) {
                let mut next = rec.clone();
                next.callers.insert(caller.to_string());
                self.commit(name, Some(next))?;
                return Ok(rec.dir.clone());
            }
            // The mount process died: clear its dead mount ("transport
            // endpoint is not connected") and mount afresh at the same place.
            warn!(
                volume = name,
                pid = rec.pid,
                "mount process is gone; mounting again"
            );
            detach(&rec.dir);
        }
        let dir = self.cfg.state_dir.join("mnt").join(name);
        fs::create_dir_all(&dir)
            .map_err(|e| PluginError::io(format!("creating {}", dir.display()), e))?;
        let pid = self.spawn(name, &dir)?;
        let mut callers = previous.map(|r| r.callers).unwrap_or_default();
        callers.insert(caller.to_string());
        let rec = MountRecord {
            dir: dir.clone(),
            pid,
            callers,
        };
        if let Err(e) = self.commit(name, Some(rec)) {
            // The reference could not be recorded: take the mount down
            // again rather than leave one nobody tracks.
            let _ = unmount_dir(&dir);
            self.wait_exit(pid, name);
            return Err(e);
        }
        info!(volume = name, dir = %dir.display(), pid, "mounted");
        Ok(dir)
    }

    /// Drops `caller`'s reference to `name`; the last one unmounts. Unknown
    /// volumes and callers are not an error: Docker may repeat an unmount.
    pub fn unmount(&self, name: &str, caller: &str) -> Result<()> {
        validate::volume_name(name)?;
        self.reap();
        let Some(rec) = self.record(name) else {
            return Ok(());
        };
        if !rec.callers.contains(caller) {
            warn!(
                volume = name,
                caller, "unmount by a caller that holds no reference"
            );
            return Ok(());
        }
        let mut next = rec;
        next.callers.remove(caller);
        let last = next.callers.is_empty();
        self.commit(name, Some(next))?;
        if last {
            self.finish_unmount(name)?;
        }
        Ok(())
    }

    /// The mount point of `name` if it is mounted here.
    pub fn mountpoint(&self, name: &str) -> Option<PathBuf> {
        self.state()
            .volumes
            .get(name)
            .filter(|r| !r.callers.is_empty())
            .map(|r| r.dir.clone())
    }

    /// How many callers hold `name` mounted on this host.
    pub fn callers(&self, name: &str) -> usize {
        self.state()
            .volumes
            .get(name)
            .map_or(0, |r| r.callers.len())
    }

    /// Takes down the mount of a record that has no callers left, then
    /// forgets the record.
    fn finish_unmount(&self, name: &str) -> Result<()> {
        let Some(rec) = self.record(name) else {
            return Ok(());
        };
        unmount_dir(&rec.dir).map_err(|why| PluginError::Unmount {
            name: name.to_string(),
            dir: rec.dir.clone(),
            why,
        })?;
        self.wait_exit(rec.pid, name);
        self.commit(name, None)?;
        let _ = fs::remove_dir(&rec.dir);
        info!(volume = name, dir = %rec.dir.display(), "unmounted");
        Ok(())
    }

    /// Replaces (or removes) the record of `name` and saves the state; on
    /// failure the in-memory state is left as it was.
    fn commit(&self, name: &str, rec: Option<MountRecord>) -> Result<()> {
        let mut state = self.state();
        let old = match rec {
            Some(r) => state.volumes.insert(name.to_string(), r),
            None => state.volumes.remove(name),
        };
        if let Err(e) = state::save(&self.state_path, &state) {
            match old {
                Some(r) => state.volumes.insert(name.to_string(), r),
                None => state.volumes.remove(name),
            };
            return Err(e);
        }
        Ok(())
    }

    /// Starts `tessera mount` for `name` on `dir` in its own session and
    /// waits until the mount appears.
    fn spawn(&self, name: &str, dir: &Path) -> Result<u32> {
        let fail = |why: String| PluginError::Mount {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            why,
        };
        let log_path = self.cfg.state_dir.join("logs").join(format!("{name}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| fail(format!("opening {}: {e}", log_path.display())))?;
        let start_len = log.metadata().map(|m| m.len()).unwrap_or(0);
        let err_log = log
            .try_clone()
            .map_err(|e| fail(format!("opening {}: {e}", log_path.display())))?;
        let mut cmd = Command::new(&self.cfg.exe);
        cmd.arg("mount")
            .arg(name)
            .arg(dir)
            .arg("--meta")
            .arg(&self.cfg.meta)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        // SAFETY: setsid is async-signal-safe and touches no memory. Its own
        // session keeps the mount process out of the plugin's process group,
        // so signals meant for the plugin never reach the mount.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| fail(format!("starting {}: {e}", self.cfg.exe.display())))?;
        let pid = child.id();
        let deadline = Instant::now() + self.cfg.mount_timeout;
        loop {
            if is_mounted(dir) {
                self.children
                    .lock()
                    .expect("children lock")
                    .insert(pid, child);
                return Ok(pid);
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    let why = last_line(&log_path, start_len)
                        .unwrap_or_else(|| format!("tessera mount exited with {status}"));
                    return Err(fail(why));
                }
                Ok(None) => {}
                Err(e) => return Err(fail(format!("waiting for the mount process: {e}"))),
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                detach(dir);
                return Err(fail(format!(
                    "no mount after {:?}; see {}",
                    self.cfg.mount_timeout,
                    log_path.display()
                )));
            }
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// Waits until mount process `pid` has exited (it flushes, then exits
    /// once its mount is gone).
    fn wait_exit(&self, pid: u32, name: &str) {
        let deadline = Instant::now() + self.cfg.exit_timeout;
        loop {
            let exited = {
                let mut children = self.children.lock().expect("children lock");
                let exited = match children.get_mut(&pid) {
                    Some(child) => !matches!(child.try_wait(), Ok(None)),
                    None => !alive(pid),
                };
                if exited {
                    children.remove(&pid);
                }
                exited
            };
            if exited {
                return;
            }
            if Instant::now() > deadline {
                warn!(
                    volume = name,
                    pid, "mount process still running after its unmount"
                );
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Reaps mount processes that exited on their own.
    fn reap(&self) {
        self.children
            .lock()
            .expect("children lock")
            .retain(|_, c| matches!(c.try_wait(), Ok(None)));
    }
}

fn check_caller(caller: &str) -> Result<()> {
    if caller.is_empty() || caller.len() > MAX_CALLER || caller.chars().any(char::is_control) {
        return Err(PluginError::Invalid(format!(
            "caller id {:?} must be 1 to {MAX_CALLER} printable characters",
            caller.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// A record's mount is there and its process still serves it.
fn serving(rec: &MountRecord) -> bool {
    is_mounted(&rec.dir) && alive(rec.pid) && cmdline_mentions(rec.pid, &rec.dir)
}

/// Whether a FUSE file system is mounted exactly at `dir`.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = dir.as_os_str().as_encoded_bytes();
    info.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        let point = left.split(' ').nth(4).map(unescape);
        point.as_deref() == Some(want) && right.starts_with("fuse")
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Whether process `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses.
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Guards against a reused pid: the process must be the mount of `dir`.
fn cmdline_mentions(pid: u32, dir: &Path) -> bool {
    let mut buf = Vec::new();
    let Ok(mut f) = fs::File::open(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    if f.read_to_end(&mut buf).is_err() {
        return false;
    }
    let want = dir.as_os_str().as_encoded_bytes();
    buf.split(|b| *b == 0).any(|arg| arg == want)
}

/// Unmounts `dir` if it is mounted. Files still open (a container not yet
/// gone) get a few seconds; after that the mount is detached lazily and goes
/// away when the last file closes.
fn unmount_dir(dir: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if !is_mounted(dir) {
            return Ok(());
        }
        match nix::mount::umount2(dir, MntFlags::empty()) {
            Ok(()) => return Ok(()),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(Errno::EBUSY) if Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(100));
            }
            Err(Errno::EBUSY) => {
                warn!(dir = %dir.display(), "mount still busy; detaching it lazily");
                return nix::mount::umount2(dir, MntFlags::MNT_DETACH).map_err(|e| e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Detaches a dead or abandoned mount at `dir`, if any.
fn detach(dir: &Path) {
    if is_mounted(dir) {
        if let Err(e) = nix::mount::umount2(dir, MntFlags::MNT_DETACH) {
            warn!(dir = %dir.display(), error = %e, "detaching a dead mount failed");
        }
    }
}

/// The last line a mount process wrote to its log, past `from`.
fn last_line(log: &Path, from: u64) -> Option<String> {
    let text = fs::read(log).ok()?;
    let text = String::from_utf8_lossy(text.get(from as usize..)?).into_owned();
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    Some(line.trim().chars().take(500).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_mountinfo_paths() {
        assert_eq!(unescape(r"/a\040b"), b"/a b");
        assert_eq!(unescape(r"/plain"), b"/plain");
        assert_eq!(unescape(r"/end\04"), br"/end\04");
    }

    #[test]
    fn refuses_bad_callers_and_names_without_touching_state() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = MountConfig::new(dir.path().into(), "/bin/false".into(), "127.0.0.1:1".into());
        let t = MountTable::open(cfg).unwrap();
        assert!(t.mount("../x", "id").is_err());
        assert!(t.mount("ok", "").is_err());
        assert!(t.mount("ok", "a\0b").is_err());
        assert!(t.mount("ok", &"x".repeat(MAX_CALLER + 1)).is_err());
        assert!(!state::path_in(&t.cfg.state_dir).exists(), "nothing saved");
    }

    #[test]
    fn a_mount_process_that_fails_reports_its_error() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("fake-tessera");
        fs::write(
            &script,
            "#!/bin/sh\necho 'tessera: opening volume v1: no such volume' >&2\nexit 1\n",
        )
        .unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let cfg = MountConfig::new(dir.path().join("state"), script, "127.0.0.1:1".into());
        let t = MountTable::open(cfg).unwrap();
        let err = t.mount("v1", "caller-1").unwrap_err().to_string();
        assert!(err.contains("no such volume"), "{err}");
        assert_eq!(t.callers("v1"), 0);
        assert!(t.mountpoint("v1").is_none());
        assert!(state::load(&t.state_path).unwrap().volumes.is_empty());
    }
}
