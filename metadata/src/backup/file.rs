//! The backup format: a directory with two files.
//!
//! - `records`: `TSRBKUP\n`, the format version (u32), then every key and
//!   value of the store in order, each as key length (u32), value length
//!   (u32), key, value and a CRC32 of those four (big-endian throughout).
//! - `manifest`, written last (a backup without one is unfinished): text
//!   lines `name: value` (format, cluster id, time, key count, bytes, the
//!   store's summary CRC32, the records file's length), the last one a
//!   CRC32 of every byte before it.
//!
//! Reading checks everything: the manifest's own CRC, the format, every
//! record's CRC and length against what is left of the file, the totals
//! against the manifest, keys in strictly increasing order and none of
//! the store's own (`~`), and that the records hold the cluster id the
//! manifest names (a manifest beside another cluster's records is
//! refused).

use std::{
    fs::File,
    io::{BufReader, BufWriter, ErrorKind, Read, Write},
    path::{Path, PathBuf},
};

use super::BackupError;
use crate::{
    keys,
    store::copy::{Summary, Summer},
};

/// The version of the backup format this build writes and reads.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"TSRBKUP\n";
pub const RECORDS: &str = "records";
pub const MANIFEST: &str = "manifest";
const MANIFEST_HEAD: &str = "tessera metadata backup";
const MANIFEST_CRC: &str = "manifest-crc32";
/// Largest manifest read.
const MAX_MANIFEST: u64 = 64 << 10;
/// Largest key or value a record may claim (the stores' own bound).
const MAX_PART: u64 = 256 << 20;

/// What a backup holds, from its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub cluster_id: String,
    /// Seconds since the Unix epoch when the snapshot was read.
    pub taken_at: u64,
    /// Where it was read from (the metadata service's address).
    pub source: String,
    pub summary: Summary,
    /// Length of the records file.
    pub records_bytes: u64,
}

impl Manifest {
    pub(super) fn render(&self) -> String {
        let one_line = |s: &str| s.replace(['\n', '\r'], " ");
        let body = format!(
            "{MANIFEST_HEAD}\nformat: {}\ncluster-id: {}\ntaken-at-unix: {}\nsource: {}\nkeys: {}\nbytes: {}\ncrc32: {:08x}\nrecords-bytes: {}\n",
            self.format,
            one_line(&self.cluster_id),
            self.taken_at,
            one_line(&self.source),
            self.summary.keys,
            self.summary.bytes,
            self.summary.crc,
            self.records_bytes,
        );
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}{MANIFEST_CRC}: {crc:08x}\n")
    }

    fn parse(text: &str) -> Result<Manifest, String> {
        if !text.starts_with(&format!("{MANIFEST_HEAD}\n")) {
            return Err("its manifest is not a Tessera metadata backup's".into());
        }
        let crc_at = text
            .rfind(&format!("{MANIFEST_CRC}: "))
            .ok_or("its manifest has no checksum line")?;
        let (body, crc_line) = text.split_at(crc_at);
        let want = crc_line[MANIFEST_CRC.len() + 2..].trim_end();
        if u32::from_str_radix(want, 16).ok() != Some(crc32fast::hash(body.as_bytes())) {
            return Err("its manifest fails its CRC32 (damaged or edited)".into());
        }
        let field = |name: &str| -> Result<&str, String> {
            body.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .ok_or(format!("its manifest has no {name}"))
        };
        let number = |name: &str| -> Result<u64, String> {
            field(name)?
                .parse()
                .map_err(|_| format!("its manifest's {name} is not a number"))
        };
        let format = number("format")?;
        if format != u64::from(FORMAT) {
            return Err(format!(
                "it is in backup format {format}; this tessera reads format {FORMAT}"
            ));
        }
        Ok(Manifest {
            format: FORMAT,
            cluster_id: field("cluster-id")?.to_string(),
            taken_at: number("taken-at-unix")?,
            source: field("source")?.to_string(),
            summary: Summary {
                keys: number("keys")?,
                bytes: number("bytes")?,
                crc: u32::from_str_radix(field("crc32")?, 16)
                    .map_err(|_| "its manifest's crc32 is not hexadecimal".to_string())?,
            },
            records_bytes: number("records-bytes")?,
        })
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a backup into an empty (or new) directory.
pub struct BackupWriter {
    dir: PathBuf,
    records: BufWriter<File>,
    sum: Summer,
    written: u64,
}

impl BackupWriter {
    pub fn create(dir: &Path) -> Result<BackupWriter, BackupError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        if std::fs::read_dir(dir).map_err(io(dir))?.next().is_some() {
            return Err(BackupError::Refused {
                dir: dir.to_path_buf(),
                why: "the directory is not empty; back up into a new one".into(),
            });
        }
        let path = dir.join(RECORDS);
        let file = File::create_new(&path).map_err(io(&path))?;
        let mut w = BackupWriter {
            dir: dir.to_path_buf(),
            records: BufWriter::with_capacity(1 << 20, file),
            sum: Summer::default(),
            written: 0,
        };
        w.write(&[&MAGIC[..], &FORMAT.to_be_bytes()])?;
        Ok(w)
    }

    fn write(&mut self, parts: &[&[u8]]) -> Result<(), BackupError> {
        for p in parts {
            self.records
                .write_all(p)
                .map_err(io(&self.dir.join(RECORDS)))?;
            self.written += p.len() as u64;
        }
        Ok(())
    }

    pub fn add(&mut self, key: &[u8], value: &[u8]) -> Result<(), BackupError> {
        let lens = [
            (key.len() as u32).to_be_bytes(),
            (value.len() as u32).to_be_bytes(),
        ]
        .concat();
        let mut crc = crc32fast::Hasher::new();
        for p in [&lens[..], key, value] {
            crc.update(p);
        }
        self.write(&[&lens, key, value, &crc.finalize().to_be_bytes()])?;
        self.sum.add(key, value);
        Ok(())
    }

    /// What has been added so far, summed up.
    pub fn summary(&self) -> Summary {
        self.sum.clone().finish()
    }

    /// Makes the records durable, then writes the manifest (durably, by
    /// rename): only then is the backup whole.
    pub fn finish(
        self,
        cluster_id: &str,
        source: &str,
        taken_at: u64,
    ) -> Result<Manifest, BackupError> {
        let records = self.dir.join(RECORDS);
        let file = self.records.into_inner().map_err(|e| BackupError::Io {
            path: records.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io(&records))?;
        let manifest = Manifest {
            format: FORMAT,
            cluster_id: cluster_id.to_string(),
            taken_at,
            source: source.to_string(),
            summary: self.sum.finish(),
            records_bytes: self.written,
        };
        let (tmp, path) = (
            self.dir.join(format!("{MANIFEST}.tmp")),
            self.dir.join(MANIFEST),
        );
        let mut f = File::create_new(&tmp).map_err(io(&tmp))?;
        f.write_all(manifest.render().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(manifest)
    }
}

/// Reads the backup in `dir`, calling `each` with every key and value in
/// order, and checks all of it (see the module's comment). `each` sees
/// records before the end is checked: to act only on a whole backup,
/// call [`verify`] first.
pub fn read(
    dir: &Path,
    mut each: impl FnMut(&[u8], &[u8]) -> Result<(), BackupError>,
) -> Result<Manifest, BackupError> {
    let refuse = |why: String| BackupError::Refused {
        dir: dir.to_path_buf(),
        why,
    };
    let path = dir.join(MANIFEST);
    let text = match File::open(&path).and_then(|f| {
        let mut text = Vec::new();
        f.take(MAX_MANIFEST + 1).read_to_end(&mut text)?;
        Ok(text)
    }) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(refuse(
                "it has no manifest (not a backup, or one that did not finish)".into(),
            ))
        }
        r => r.map_err(io(&path))?,
    };
    if text.len() as u64 > MAX_MANIFEST {
        return Err(refuse("its manifest is too large to be one".into()));
    }
    let text = String::from_utf8(text).map_err(|_| refuse("its manifest is not text".into()))?;
    let manifest = Manifest::parse(&text).map_err(refuse)?;
    let path = dir.join(RECORDS);
    let file = File::open(&path).map_err(io(&path))?;
    let len = file.metadata().map_err(io(&path))?.len();
    if len != manifest.records_bytes {
        return Err(refuse(format!(
            "{RECORDS} is {len} bytes, its manifest says {}",
            manifest.records_bytes
        )));
    }
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(io(&path))?;
    if head[..8] != MAGIC[..] || head[8..] != FORMAT.to_be_bytes() {
        return Err(refuse(format!(
            "{RECORDS} does not begin as format {FORMAT} records do"
        )));
    }
    let (mut at, mut index) = (12u64, 0u64);
    let mut sum = Summer::default();
    let mut cluster_id = None;
    let mut last: Option<Vec<u8>> = None;
    while at < len {
        let damaged = |why: &str| refuse(format!("record {index} at byte {at} {why}"));
        if len - at < 12 {
            return Err(damaged("is cut short"));
        }
        let mut lens = [0u8; 8];
        r.read_exact(&mut lens).map_err(io(&path))?;
        let klen = u64::from(u32::from_be_bytes(lens[..4].try_into().unwrap()));
        let vlen = u64::from(u32::from_be_bytes(lens[4..].try_into().unwrap()));
        if klen > MAX_PART || vlen > MAX_PART || klen + vlen + 12 > len - at {
            return Err(damaged("claims more bytes than the file holds"));
        }
        let mut body = vec![0u8; (klen + vlen + 4) as usize];
        r.read_exact(&mut body).map_err(io(&path))?;
        let (kv, crc) = body.split_at(body.len() - 4);
        let mut h = crc32fast::Hasher::new();
        h.update(&lens);
        h.update(kv);
        if h.finalize().to_be_bytes() != crc {
            return Err(damaged("fails its CRC32"));
        }
        let (k, v) = kv.split_at(klen as usize);
        if k.starts_with(b"~") || last.as_deref().is_some_and(|l| l >= k) {
            return Err(damaged("is out of order or not the cluster's"));
        }
        last = Some(k.to_vec());
        if k == keys::cluster_id() {
            cluster_id = Some(String::from_utf8_lossy(v).into_owned());
        }
        sum.add(k, v);
        each(k, v)?;
        at += 12 + klen + vlen;
        index += 1;
    }
    let sum = sum.finish();
    if sum != manifest.summary {
        return Err(refuse(format!(
            "its records sum to {} keys (CRC32 {:08x}), its manifest says {} ({:08x})",
            sum.keys, sum.crc, manifest.summary.keys, manifest.summary.crc
        )));
    }
    match cluster_id {
        Some(id) if id == manifest.cluster_id => Ok(manifest),
        Some(id) => Err(refuse(format!(
            "its manifest is of cluster {}, its records of cluster {id}",
            manifest.cluster_id
        ))),
        None => Err(refuse("its records name no cluster".into())),
    }
}

/// Checks the whole backup in `dir` without using it.
pub fn verify(dir: &Path) -> Result<Manifest, BackupError> {
    read(dir, |_, _| Ok(()))
}
