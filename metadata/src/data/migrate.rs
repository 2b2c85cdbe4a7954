//! Converting a store written before files had extent maps: every `S` row
//! (a chunk's whole slice list, oldest first) becomes the extents that
//! show in it (`E` keys), a batch of rows per transaction. A crash leaves
//! each row converted or not: a row is deleted in the transaction that
//! writes its extents. Block references follow: a piece of a slice is an
//! extent with a reference of its own, a slice nothing showed gives its
//! reference back. A remap job whose cursor was walking `S` rows walks
//! `E` keys from the start (queueing a move twice is harmless: the repair
//! queue merges).

use tessera_common::{extents::ExtentMap, Protection, Slice};
use tracing::info;

use crate::{
    blocks::{self, BlockRecord},
    cluster::RemapJob,
    keys,
    records::{decode, load, store, VolumeRecord},
    store::{transact, MetaStore},
    MetaError, Result,
};

/// `S` rows converted per transaction.
const BATCH: usize = 256;

pub(crate) fn convert_chunk_lists(store_: &dyn MetaStore) -> Result<()> {
    let (start, end) = keys::prefix_range(&[keys::CHUNK_LIST]);
    let mut rows_done = 0usize;
    loop {
        let n = transact(store_, |txn| {
            let rows = txn.scan(&start, &end, BATCH)?;
            for (k, v) in &rows {
                let (vol, ino) = chunk_list_owner(k)?;
                let list: Vec<Slice> = decode(k, v)?;
                // The list's slices laid oldest first: what shows of them.
                let mut shown = ExtentMap::default();
                for s in &list {
                    shown.lay(*s);
                }
                let pieces: Vec<Slice> = shown.iter().copied().collect();
                for e in &pieces {
                    store(txn, &keys::extent(vol, ino, e.offset), e)?;
                }
                // Pieces reference blocks that have records already; a
                // new record would take the volume's class.
                let class = match load::<VolumeRecord>(txn, &keys::volume(vol))? {
                    Some(v) => v.protection,
                    None => match list.first() {
                        Some(s) => load::<BlockRecord>(txn, &keys::block(s.block))?
                            .map(|b| b.protection)
                            .ok_or_else(|| MetaError::Corrupt {
                                key: k.clone(),
                                why: "a slice of a removed volume into a block without a record"
                                    .into(),
                            })?,
                        None => Protection::new(1, 0)?,
                    },
                };
                blocks::add_refs(txn, class, &pieces)?;
                blocks::drop_refs(txn, &list)?;
                txn.delete(k)?;
            }
            Ok(rows.len())
        })?;
        if n == 0 {
            break;
        }
        rows_done += n;
    }
    // Whether or not rows were converted now: a crash after the last
    // batch leaves no `S` rows, and the jobs still walking them.
    let (start, end) = keys::prefix_range(&[keys::REMAP_JOB]);
    transact(store_, |txn| {
        for (k, v) in txn.scan(&start, &end, usize::MAX)? {
            let mut job: RemapJob = decode(&k, &v)?;
            if job.cursor.first() == Some(&keys::CHUNK_LIST) {
                job.cursor = vec![keys::SLICE];
                store(txn, &k, &job)?;
            }
        }
        Ok(())
    })?;
    if rows_done > 0 {
        info!(
            rows = rows_done,
            "converted chunk slice lists to a key per slice"
        );
    }
    Ok(())
}

/// The (volume, ino) of an `S` key (volume, ino, chunk).
fn chunk_list_owner(k: &[u8]) -> Result<(u64, u64)> {
    if k.len() != 25 {
        return Err(MetaError::Corrupt {
            key: k.to_vec(),
            why: "not a chunk list key".into(),
        });
    }
    let at = |i: usize| u64::from_be_bytes(k[i..i + 8].try_into().expect("8 bytes"));
    Ok((at(1), at(9)))
}

#[cfg(test)]
mod tests {
    use tessera_common::{FileKind, ROOT_INO};

    use crate::{
        keys,
        records::store,
        store::transact,
        testing::{each_store, slice, Fx},
        Meta, MetaOptions,
    };

    /// A file whose slices were kept as a chunk list reads back the same
    /// after the conversion, and its blocks keep their references.
    #[test]
    fn chunk_lists_of_an_older_store_become_a_key_per_slice() {
        each_store(|s| {
            let t = Fx::new(s.clone(), 1 << 30);
            let f = t.make(ROOT_INO, b"f", FileKind::File).unwrap();
            t.commit(f.ino, vec![slice(0, 100, 5), slice(50, 10, 6)])
                .unwrap();
            let want = t.slices(f.ino);
            assert_eq!(t.m.files().block(5).unwrap().unwrap().refs, 2);
            // Write it back as the older format had it: the slices as
            // committed, oldest first, one reference each.
            transact(s.as_ref(), |txn| {
                let (start, end) = keys::prefix_range(&keys::under(keys::SLICE, t.v, f.ino));
                for (k, _) in txn.scan(&start, &end, 100)? {
                    txn.delete(&k)?;
                }
                let mut rec: crate::blocks::BlockRecord =
                    crate::records::load(txn, &keys::block(5))?.unwrap();
                rec.refs = 1;
                store(txn, &keys::block(5), &rec)?;
                store(
                    txn,
                    &keys::chunk_list(t.v, f.ino, 0),
                    &vec![slice(0, 100, 5), slice(50, 10, 6)],
                )
            })
            .unwrap();
            let v = t.v;
            drop(t);
            let m = Meta::open(s.clone(), MetaOptions::default()).unwrap();
            let t = Fx { m, v };
            assert_eq!(t.slices(f.ino), want);
            let (start, end) = keys::prefix_range(&[keys::CHUNK_LIST]);
            assert!(s.begin().scan(&start, &end, 1).unwrap().is_empty());
            // Block 5 shows on both sides of block 6: two extents.
            assert_eq!(t.m.files().block(5).unwrap().unwrap().refs, 2);
            assert_eq!(t.m.files().block(6).unwrap().unwrap().refs, 1);
            // And it goes on: a new slice lands on top of the old ones.
            t.commit(f.ino, vec![slice(0, 20, 7)]).unwrap();
            let now = t.slices(f.ino);
            assert_eq!((now[0].offset, now[0].len, now[0].block), (0, 20, 7));
        });
    }

    /// A crash after the last rows were converted, before the remap jobs'
    /// cursors moved to the new keys: the next open moves them.
    #[test]
    fn a_remap_job_left_walking_chunk_lists_walks_extents_after_a_crash() {
        each_store(|s| {
            let job = crate::cluster::RemapJob {
                protection: tessera_common::Protection::new(4, 2).unwrap(),
                old_pgs: vec![],
                cursor: keys::chunk_list(1, 2, 3),
            };
            let key = keys::remap_job(4, 2, 7);
            transact(s.as_ref(), |txn| store(txn, &key, &job)).unwrap();
            super::convert_chunk_lists(s.as_ref()).unwrap();
            let after: crate::cluster::RemapJob = crate::records::load(s.begin().as_mut(), &key)
                .unwrap()
                .unwrap();
            assert_eq!(after.cursor, vec![keys::SLICE]);
        });
    }
}
