//! The plugin's durable state: which volumes this host has mounted, by which
//! process, and for which callers. JSON with a format version, replaced
//! atomically so a crash leaves either the old or the new state.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{PluginError, Result};

/// Version of the state file's format; bumped on any incompatible change.
pub(crate) const STATE_VERSION: u32 = 1;

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct State {
    pub version: u32,
    pub volumes: BTreeMap<String, MountRecord>,
}

impl Default for State {
    fn default() -> Self {
        State {
            version: STATE_VERSION,
            volumes: BTreeMap::new(),
        }
    }
}

/// One volume mounted on this host.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct MountRecord {
    /// Where the volume is mounted.
    pub dir: PathBuf,
    /// The `tessera mount` process serving it.
    pub pid: u32,
    /// Caller ids holding a reference. Empty only while an unmount is under
    /// way; a plugin that finds such a record at start finishes the unmount.
    pub callers: BTreeSet<String>,
}

pub(crate) fn load(path: &Path) -> Result<State> {
    let bad = |why: String| PluginError::State {
        path: path.to_path_buf(),
        why,
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(State::default()),
        Err(e) => return Err(bad(e.to_string())),
    };
    let state: State = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if state.version != STATE_VERSION {
        return Err(bad(format!(
            "format version {} is not {STATE_VERSION}, the one this binary knows",
            state.version
        )));
    }
    Ok(state)
}

pub(crate) fn save(path: &Path, state: &State) -> Result<()> {
    let bad = |why: String| PluginError::State {
        path: path.to_path_buf(),
        why,
    };
    let dir = path
        .parent()
        .expect("the state file lives in the state dir");
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).expect("the state always serializes");
    // Write the new state beside the old one and make it durable first ...
    let mut f =
        fs::File::create(&tmp).map_err(|e| bad(format!("creating {}: {e}", tmp.display())))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| bad(format!("writing {}: {e}", tmp.display())))?;
    drop(f);
    // ... then switch atomically, and make the rename itself durable.
    fs::rename(&tmp, path).map_err(|e| bad(format!("renaming {}: {e}", tmp.display())))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| bad(format!("syncing {}: {e}", dir.display())))?;
    Ok(())
}

/// The state file inside a state dir.
pub(crate) fn path_in(state_dir: &Path) -> PathBuf {
    state_dir.join("state.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_other_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = path_in(dir.path());
        assert!(
            load(&path).unwrap().volumes.is_empty(),
            "no file = empty state"
        );
        let mut s = State::default();
        s.volumes.insert(
            "v1".into(),
            MountRecord {
                dir: "/m/v1".into(),
                pid: 42,
                callers: ["a".to_string(), "b".to_string()].into(),
            },
        );
        save(&path, &s).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.volumes["v1"].pid, 42);
        assert_eq!(back.volumes["v1"].callers.len(), 2);

        fs::write(&path, br#"{"version":9,"volumes":{}}"#).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("format version 9"), "{err}");
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_err());
    }
}
