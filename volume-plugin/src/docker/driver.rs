//! The volume driver: each endpoint of Docker's protocol as one method over
//! the metadata service and the host's [`MountTable`]. A failed request
//! changes nothing.

use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use tessera_client::{connect_meta, ClientError, MetaConn};
use tessera_common::{units::human_bytes, validate, Protection};
use tessera_proto::pb;
use tokio::sync::Mutex;
use tonic::{Code, Status};
use tracing::info;

use super::{options::VolumeOptions, protocol};
use crate::{MountTable, PluginError, Result};

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
    /// A channel to the metadata service once one connected; it reconnects
    /// by itself after that.
    meta: Mutex<Option<MetaConn>>,
    /// Held across each whole request that reads or changes mounts, so a
    /// Remove never races a Mount of the same volume.
    mounts: Mutex<MountTable>,
}

impl Driver {
    pub fn new(cfg: DockerConfig, mounts: MountTable) -> Driver {
        Driver {
            cfg,
            meta: Mutex::new(None),
            mounts: Mutex::new(mounts),
        }
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
                let dir = self.mounts.lock().await.mountpoint(&r.name);
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
        let mut meta = self.meta().await?;
        match meta
            .get_volume(pb::GetVolumeRequest { name: name.into() })
            .await
        {
            Ok(v) => return same_settings(name, &asked, &v.into_inner()),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(self.meta_err(s, name)),
        }
        let size = asked.size.unwrap_or(self.cfg.default_size);
        let protection = asked.protection.unwrap_or(self.cfg.default_protection);
        let req = pb::CreateVolumeRequest {
            name: name.into(),
            size_bytes: size,
            protection: protection.to_string(),
            labels: Default::default(),
            min_durable: asked.min_durable.unwrap_or(0).into(),
        };
        match meta.create_volume(req).await {
            Ok(_) => {
                info!(volume = name, size, %protection, "created volume");
                Ok(())
            }
            // Created by someone else in between: fine if it is the same.
            Err(s) if s.code() == Code::AlreadyExists => {
                let v = meta
                    .get_volume(pb::GetVolumeRequest { name: name.into() })
                    .await
                    .map_err(|s| self.meta_err(s, name))?;
                same_settings(name, &asked, &v.into_inner())
            }
            Err(s) => Err(self.meta_err(s, name)),
        }
    }

    async fn remove(&self, name: &str) -> Result<()> {
        validate::volume_name(name)?;
        let mounts = self.mounts.lock().await;
        let callers = mounts.callers(name);
        if callers > 0 {
            return Err(PluginError::InUse {
                name: name.into(),
                mounts: callers,
            });
        }
        let mut meta = self.meta().await?;
        meta.delete_volume(pb::DeleteVolumeRequest { name: name.into() })
            .await
            .map_err(|s| self.meta_err(s, name))?;
        info!(volume = name, "removed volume");
        Ok(())
    }

    async fn mount(&self, name: &str, caller: &str) -> Result<std::path::PathBuf> {
        validate::volume_name(name)?;
        let mut mounts = self.mounts.lock().await;
        if mounts.mountpoint(name).is_none() {
            // A clear "does not exist" before starting a mount process.
            let mut meta = self.meta().await?;
            meta.get_volume(pb::GetVolumeRequest { name: name.into() })
                .await
                .map_err(|s| self.meta_err(s, name))?;
        }
        tokio::task::block_in_place(|| mounts.mount(name, caller))
    }

    async fn unmount(&self, name: &str, caller: &str) -> Result<()> {
        let mut mounts = self.mounts.lock().await;
        tokio::task::block_in_place(|| mounts.unmount(name, caller))
    }

    async fn get(&self, name: &str) -> Result<Value> {
        validate::volume_name(name)?;
        let mut meta = self.meta().await?;
        let v = meta
            .get_volume(pb::GetVolumeRequest { name: name.into() })
            .await
            .map_err(|s| self.meta_err(s, name))?
            .into_inner();
        let health = self.health(&v).await?;
        let mounts = self.mounts.lock().await;
        Ok(json!({
            "Name": v.name,
            "Mountpoint": mounts.mountpoint(name).unwrap_or_default(),
            "CreatedAt": rfc3339(v.created_ms),
            "Status": {
                "size": human_bytes(v.size_bytes),
                "size_bytes": v.size_bytes,
                "used": human_bytes(v.used_bytes),
                "used_bytes": v.used_bytes,
                "inodes": v.inodes,
                "protection": v.protection,
                "min_durable": v.min_durable,
                "health": health,
                "mounts_on_this_host": mounts.callers(name),
            },
        }))
    }

    async fn list(&self) -> Result<Vec<Value>> {
        let mut meta = self.meta().await?;
        let list = meta
            .list_volumes(pb::ListVolumesRequest {})
            .await
            .map_err(|s| self.meta_err(s, "list"))?
            .into_inner();
        let mounts = self.mounts.lock().await;
        Ok(list
            .volumes
            .into_iter()
            .map(|v| {
                let dir = mounts.mountpoint(&v.name).unwrap_or_default();
                json!({ "Name": v.name, "Mountpoint": dir })
            })
            .collect())
    }

    /// `healthy`, `degraded` (some placement group of the volume's class has
    /// nodes down, but no more than its parity) or `unavailable`.
    async fn health(&self, v: &pb::Volume) -> Result<String> {
        let p: Protection = v.protection.parse()?;
        let mut meta = self.meta().await?;
        let placement = meta
            .get_placement(pb::GetPlacementRequest {
                k: p.k.into(),
                m: p.m.into(),
            })
            .await
            .map_err(|s| self.meta_err(s, &v.name))?
            .into_inner();
        let down: std::collections::HashSet<u64> = placement
            .nodes
            .iter()
            .filter(|n| !n.reachable)
            .map(|n| n.id)
            .collect();
        let worst = placement
            .pgs
            .iter()
            .map(|pg| pg.nodes.iter().filter(|n| down.contains(n)).count())
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

    async fn meta(&self) -> Result<MetaConn> {
        let mut slot = self.meta.lock().await;
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = connect_meta(&self.cfg.meta).await.map_err(|e| match e {
            ClientError::Connect { why, .. } => PluginError::Unreachable {
                addr: self.cfg.meta.clone(),
                why,
            },
            other => PluginError::Meta(other.to_string()),
        })?;
        *slot = Some(m.clone());
        Ok(m)
    }

    fn meta_err(&self, s: Status, name: &str) -> PluginError {
        match s.code() {
            Code::NotFound => PluginError::NoSuchVolume(name.into()),
            Code::Unavailable => PluginError::Unreachable {
                addr: self.cfg.meta.clone(),
                why: s.message().to_string(),
            },
            _ => PluginError::Meta(format!("volume {name}: {}", s.message())),
        }
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body)
        .map_err(|e| PluginError::Invalid(format!("malformed request: {e}")))
}

/// An existing volume satisfies a Create when every option given matches.
fn same_settings(name: &str, asked: &VolumeOptions, v: &pb::Volume) -> Result<()> {
    let size_ok = asked.size.is_none_or(|s| s == v.size_bytes);
    let prot_ok = asked
        .protection
        .is_none_or(|p| Some(p) == v.protection.parse().ok());
    let durable_ok = asked
        .min_durable
        .is_none_or(|n| u32::from(n) == v.min_durable);
    if size_ok && prot_ok && durable_ok {
        return Ok(());
    }
    Err(PluginError::Invalid(format!(
        "volume {name} already exists with size {} and protection {}",
        human_bytes(v.size_bytes),
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
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_737_600_123), "2026-11-27T00:00:00Z");
    }
}
