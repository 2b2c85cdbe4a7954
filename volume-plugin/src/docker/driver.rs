//! The volume driver: each endpoint of Docker's protocol as one method over
//! the metadata service and the host's [`MountTable`]. A failed request
//! changes nothing. Requests on one volume are serialized (`locks.rs`);
//! requests on different volumes run side by side, so one slow mount or
//! metadata call holds up no other volume.

use std::{collections::HashSet, path::PathBuf, sync::Arc, time::Duration};

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tessera_client::{ClientError, MetaClient};
use tessera_common::{units::human_bytes, validate, Protection, VolumeInfo, VolumeSpec};
use tracing::info;

use super::{locks::VolumeLocks, options::VolumeOptions, protocol};
use crate::{MountTable, PluginError, Result};

/// A metadata call that takes longer than this fails (as unreachable).
const META_TIMEOUT: Duration = Duration::from_secs(30);

/// Settings of the Docker plugin.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// Address of the metadata service.
    pub meta: String,
    /// Size of a volume created without `-o size=`.
    pub default_size: u64,
    /// Protection of a volume created without `-o protection=`.
    pub default_protection: Protection,
}

pub struct Driver {
    cfg: DockerConfig,
    /// Connects on its first call, and again after a failure.
    meta: MetaClient,
    mounts: Arc<MountTable>,
    locks: VolumeLocks,
}

impl Driver {
    pub fn new(cfg: DockerConfig, mounts: MountTable) -> Result<Driver> {
        let meta = MetaClient::lazy(&cfg.meta, META_TIMEOUT).map_err(|e| {
            PluginError::Invalid(format!("metadata service address {:?}: {e}", cfg.meta))
        })?;
        Ok(Driver {
            cfg,
            meta,
            mounts: Arc::new(mounts),
            locks: VolumeLocks::default(),
        })
    }

    /// Answers one request: `endpoint` is the path without its leading `/`.
    pub async fn handle(&self, endpoint: &str, body: &[u8]) -> Result<Value> {
        match endpoint {
            "Plugin.Activate" => Ok(json!({ "Implements": ["VolumeDriver"] })),
            "VolumeDriver.Capabilities" => {
                // A volume is one cluster-wide object, the same on every host.
                Ok(json!({ "Capabilities": { "Scope": "global" } }))
            }
            "VolumeDriver.Create" => {
                let r: protocol::Create = parse(body)?;
                self.create(&r.name, &r.opts.unwrap_or_default()).await?;
                Ok(json!({ "Err": "" }))
            }
            "VolumeDriver.Remove" => {
                let r: protocol::Named = parse(body)?;
                self.remove(&r.name).await?;
                Ok(json!({ "Err": "" }))
            }
            "VolumeDriver.Mount" => {
                let r: protocol::Caller = parse(body)?;
                let dir = self.mount(&r.name, &r.id).await?;
                Ok(json!({ "Mountpoint": dir, "Err": "" }))
            }
            "VolumeDriver.Unmount" => {
                let r: protocol::Caller = parse(body)?;
                self.unmount(&r.name, &r.id).await?;
                Ok(json!({ "Err": "" }))
            }
            "VolumeDriver.Path" => {
                let r: protocol::Named = parse(body)?;
                validate::volume_name(&r.name)?;
                let dir = self.mounts.mountpoint(&r.name);
                Ok(json!({ "Mountpoint": dir.unwrap_or_default(), "Err": "" }))
            }
            "VolumeDriver.Get" => {
                let r: protocol::Named = parse(body)?;
                Ok(json!({ "Volume": self.get(&r.name).await?, "Err": "" }))
            }
            "VolumeDriver.List" => Ok(json!({ "Volumes": self.list().await?, "Err": "" })),
            other => Err(PluginError::Invalid(format!(
                "unknown endpoint {:?}",
                other.chars().take(64).collect::<String>()
            ))),
        }
    }

    async fn create(
        &self,
        name: &str,
        opts: &std::collections::HashMap<String, String>,
    ) -> Result<()> {
        validate::volume_name(name)?;
        let asked = VolumeOptions::parse(opts)?;
        match self.meta.volume(name).await {
            Ok(v) => return same_settings(name, &asked, &v),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(self.meta_err(e, name)),
        }
        let spec = VolumeSpec {
            name: name.into(),
            size: asked.size.unwrap_or(self.cfg.default_size),
            protection: asked.protection.unwrap_or(self.cfg.default_protection),
            labels: Default::default(),
            min_durable: asked.min_durable.unwrap_or(0),
        };
        let (size, protection) = (spec.size, spec.protection);
        match self.meta.create_volume(spec).await {
            Ok(_) => {
                info!(volume = name, size, %protection, "created volume");
                Ok(())
            }
            // Created by someone else in between: fine if it is the same.
            Err(e) if e.errno() == libc::EEXIST => {
                let v = self
                    .meta
                    .volume(name)
                    .await
                    .map_err(|e| self.meta_err(e, name))?;
                same_settings(name, &asked, &v)
            }
            Err(e) => Err(self.meta_err(e, name)),
        }
    }

    async fn remove(&self, name: &str) -> Result<()> {
        validate::volume_name(name)?;
        let _volume = self.locks.lock(name).await;
        let callers = self.mounts.callers(name);
        if callers > 0 {
            return Err(PluginError::InUse {
                name: name.into(),
                mounts: callers,
            });
        }
        self.meta
            .delete_volume(name)
            .await
            .map_err(|e| self.meta_err(e, name))?;
        info!(volume = name, "removed volume");
        Ok(())
    }

    async fn mount(&self, name: &str, caller: &str) -> Result<PathBuf> {
        validate::volume_name(name)?;
        let _volume = self.locks.lock(name).await;
        if self.mounts.mountpoint(name).is_none() {
            // A clear "does not exist" before starting a mount process.
            self.meta
                .volume(name)
                .await
                .map_err(|e| self.meta_err(e, name))?;
        }
        let (mounts, name, caller) = (self.mounts.clone(), name.to_string(), caller.to_string());
        tokio::task::spawn_blocking(move || mounts.mount(&name, &caller))
            .await
            .map_err(|e| PluginError::Invalid(format!("mount task failed: {e}")))?
    }

    async fn unmount(&self, name: &str, caller: &str) -> Result<()> {
        validate::volume_name(name)?;
        let _volume = self.locks.lock(name).await;
        let (mounts, name, caller) = (self.mounts.clone(), name.to_string(), caller.to_string());
        tokio::task::spawn_blocking(move || mounts.unmount(&name, &caller))
            .await
            .map_err(|e| PluginError::Invalid(format!("unmount task failed: {e}")))?
    }

    async fn get(&self, name: &str) -> Result<Value> {
        validate::volume_name(name)?;
        let v = self
            .meta
            .volume(name)
            .await
            .map_err(|e| self.meta_err(e, name))?;
        let health = self.health(&v).await?;
        Ok(json!({
            "Name": v.name,
            "Mountpoint": self.mounts.mountpoint(name).unwrap_or_default(),
            "CreatedAt": rfc3339(v.created_ms),
            "Status": {
                "size": human_bytes(v.size),
                "size_bytes": v.size,
                "used": human_bytes(v.used_bytes),
                "used_bytes": v.used_bytes,
                "inodes": v.inodes,
                "protection": v.protection.to_string(),
                "min_durable": v.min_durable,
                "health": health,
                "mounts_on_this_host": self.mounts.callers(name),
            },
        }))
    }

    async fn list(&self) -> Result<Vec<Value>> {
        let list = self
            .meta
            .volumes()
            .await
            .map_err(|e| self.meta_err(e, "list"))?;
        Ok(list
            .into_iter()
            .map(|v| {
                let dir = self.mounts.mountpoint(&v.name).unwrap_or_default();
                json!({ "Name": v.name, "Mountpoint": dir })
            })
            .collect())
    }

    /// `healthy`, `degraded` (some placement group of the volume's class has
    /// nodes down, but no more than its parity) or `unavailable`.
    async fn health(&self, v: &VolumeInfo) -> Result<String> {
        let p = v.protection;
        let placement = self
            .meta
            .placement(p)
            .await
            .map_err(|e| self.meta_err(e, &v.name))?;
        let down: HashSet<u64> = placement
            .nodes
            .iter()
            .filter(|n| !n.reachable)
            .map(|n| n.id)
            .collect();
        let worst = placement
            .pgs
            .iter()
            .map(|pg| pg.iter().filter(|n| down.contains(n)).count())
            .max()
            .unwrap_or(0);
        Ok(if worst == 0 {
            "healthy".into()
        } else if worst <= usize::from(p.m) {
            format!(
                "degraded: up to {worst} of {} shards of a stripe unavailable",
                p.width()
            )
        } else {
            format!(
                "unavailable: {worst} of {} shards of some stripes unavailable",
                p.width()
            )
        })
    }

    /// The one place metadata failures become the plugin's errors.
    fn meta_err(&self, e: ClientError, name: &str) -> PluginError {
        if e.is_not_found() {
            return PluginError::NoSuchVolume(name.into());
        }
        if e.is_unreachable() {
            return PluginError::Unreachable {
                addr: self.cfg.meta.clone(),
                why: e.to_string(),
            };
        }
        PluginError::Meta(format!("volume {name}: {e}"))
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| PluginError::Invalid(format!("malformed request: {e}")))
}

/// An existing volume satisfies a Create when every option given matches.
fn same_settings(name: &str, asked: &VolumeOptions, v: &VolumeInfo) -> Result<()> {
    let size_ok = asked.size.is_none_or(|s| s == v.size);
    let prot_ok = asked.protection.is_none_or(|p| p == v.protection);
    let durable_ok = asked
        .min_durable
        .is_none_or(|n| usize::from(n) == v.min_durable);
    if size_ok && prot_ok && durable_ok {
        return Ok(());
    }
    Err(PluginError::Invalid(format!(
        "volume {name} already exists with size {} and protection {}",
        human_bytes(v.size),
        v.protection
    )))
}

/// Milliseconds since the epoch as RFC 3339 UTC, as Docker shows `CreatedAt`.
fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::MountConfig;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_737_600_123), "2026-11-27T00:00:00Z");
    }

    /// A metadata service that accepts connections and never answers: a
    /// Mount of one volume waits on it, and must not hold up another
    /// volume's requests.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_request_on_one_volume_holds_up_no_other() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept() {
                held.push(s);
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let mounts = MountTable::open(MountConfig::new(
            dir.path().into(),
            "/bin/false".into(),
            addr.clone(),
        ))
        .unwrap();
        let cfg = DockerConfig {
            meta: addr,
            default_size: 1 << 30,
            default_protection: "ec:4+2".parse().unwrap(),
        };
        let driver = Arc::new(Driver::new(cfg, mounts).unwrap());
        let slow = {
            let d = driver.clone();
            tokio::spawn(async move {
                d.handle("VolumeDriver.Mount", br#"{"Name":"slow","ID":"c1"}"#)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!slow.is_finished(), "the silent service answered");
        let start = Instant::now();
        for (endpoint, body) in [
            ("VolumeDriver.Path", &br#"{"Name":"other"}"#[..]),
            ("VolumeDriver.Unmount", br#"{"Name":"other","ID":"c2"}"#),
            ("VolumeDriver.Capabilities", b"{}"),
        ] {
            let r = tokio::time::timeout(Duration::from_secs(2), driver.handle(endpoint, body))
                .await
                .unwrap_or_else(|_| panic!("{endpoint} of another volume waited for the slow one"));
            assert!(r.is_ok(), "{endpoint}: {r:?}");
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        slow.abort();
    }
}
