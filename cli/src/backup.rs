//! `tessera meta backup` and `tessera meta restore`: the metadata store
//! copied out of a running service into a directory, and loaded from one
//! into an empty store (`tessera_metadata::backup` has the format).

use std::{
    path::Path,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{bail, Context};
use tessera_client::MetaClient;
use tessera_metadata::{
    backup::{self, BackupWriter},
    store::StoreSpec,
};

use crate::{runtime, MetaAddr};

/// Reads a consistent snapshot of the service's whole store into `to`.
pub fn backup(to: &Path, meta: &MetaAddr) -> anyhow::Result<()> {
    let rt = runtime()?;
    let m = rt
        .block_on(MetaClient::connect(&meta.meta))
        .with_context(|| format!("connecting to the metadata service at {}", meta.meta))?;
    let taken_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut w = BackupWriter::create(to)?;
    let read = (|| {
        let (mut session, mut page) = (0, 0);
        loop {
            let p = rt
                .block_on(m.backup_page(session, page))
                .with_context(|| format!("reading page {page} of the backup"))?;
            session = p.session;
            page += 1;
            for (k, v) in &p.records {
                w.add(k, v)?;
            }
            if let Some(end) = p.end {
                return anyhow::Ok(end);
            }
        }
    })();
    let written = read.and_then(|end| {
        let got = w.summary();
        if (got.keys, got.bytes, got.crc) != (end.keys, end.bytes, end.crc32) {
            bail!(
                "the service read {} keys (CRC32 {:08x}), {} (CRC32 {:08x}) arrived",
                end.keys,
                end.crc32,
                got.keys,
                got.crc
            );
        }
        let source = format!("metadata service at {}", meta.meta);
        Ok(w.finish(&end.cluster_id, &source, taken_at)?)
    });
    let manifest = match written {
        Ok(m) => m,
        Err(e) => {
            // What was written is no backup: leave nothing that looks like one.
            for name in [backup::MANIFEST, backup::RECORDS] {
                let _ = std::fs::remove_file(to.join(name));
            }
            return Err(e.context(format!("backing up into {}", to.display())));
        }
    };
    println!(
        "backed up {} keys ({} bytes, CRC32 {:08x}) of cluster {} into {}",
        manifest.summary.keys,
        manifest.summary.bytes,
        manifest.summary.crc,
        manifest.cluster_id,
        to.display()
    );
    Ok(())
}

/// Loads the backup in `from` into the empty store `to`.
pub fn restore(from: &Path, to: &StoreSpec) -> anyhow::Result<()> {
    // Checked whole before the destination is even opened (opening a
    // RocksDB directory creates a store there).
    let manifest = backup::verify(from)?;
    let store = to
        .open()
        .with_context(|| format!("opening {to} (is a metadata service running on it?)"))?;
    backup::restore(from, &manifest, store.as_ref())
        .with_context(|| {
            format!(
                "restoring {} into {to} (a restore that wrote anything leaves it marked unfinished: empty it before trying again)",
                from.display()
            )
        })?;
    println!(
        "restored {} keys ({} bytes, CRC32 {:08x}) of cluster {}, backed up at {} (Unix time) from the {}, into {to}",
        manifest.summary.keys,
        manifest.summary.bytes,
        manifest.summary.crc,
        manifest.cluster_id,
        manifest.taken_at,
        manifest.source,
    );
    Ok(())
}
