//! A metadata service busy with large work answers everyone else: store
//! work runs on blocking threads, never on the runtime's workers, and a
//! large file is released in bounded steps.

use std::{
    thread,
    time::{Duration, Instant},
};

use tessera_client::{MetaClient, Volume, VolumeOptions};
use tessera_common::{Commit, FileKind, FileWrite, NewNode, Slice, CHUNK_SIZE, ROOT_INO};
use tracing::info;

use crate::harness::Cluster;

/// Files unlinked at once, their chunks (64 MiB each: 5 GiB), and the
/// slices committed to each chunk.
const FILES: u64 = 4;
const CHUNKS: u64 = 80;
const PER_CHUNK: u32 = 2048;

#[test]
fn heartbeats_and_small_calls_are_answered_while_large_files_are_unlinked() {
    let c = Cluster::start(6);
    c.create_volume("big", "1TiB", "ec:4+2");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let vol = rt
        .block_on(Volume::open(&c.meta_addr, "big", VolumeOptions::default()))
        .unwrap();
    let meta = rt.block_on(MetaClient::connect(&c.meta_addr)).unwrap();
    info!("--- {FILES} sparse files of 5 GiB, {PER_CHUNK} slices in each 64 MiB chunk");
    let file = NewNode::new(FileKind::File, 0o644);
    for f in 0..FILES {
        let ino = vol
            .make_node(ROOT_INO, format!("big{f}").as_bytes(), &file)
            .unwrap()
            .node
            .ino;
        let blocks = rt.block_on(meta.alloc_blocks(CHUNKS as u32)).unwrap();
        for (c, block) in (0..CHUNKS).zip(blocks) {
            // Slices 32 KiB apart, into one block per chunk: the metadata
            // of a file written in small pieces, without its bytes.
            let slices = (0..PER_CHUNK)
                .map(|i| Slice {
                    offset: c * CHUNK_SIZE + u64::from(i) * 32768,
                    len: 512,
                    block,
                    block_offset: i * 512,
                    block_len: PER_CHUNK * 512,
                })
                .collect();
            let commit = Commit {
                vol: vol.id(),
                files: vec![FileWrite {
                    ino,
                    slices,
                    mtime_ns: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
            rt.block_on(meta.commit(commit)).unwrap();
        }
    }
    assert_eq!(vol.getattr(2).map(|a| a.kind).ok(), Some(FileKind::File));

    info!("--- unlink them all at once; while they are released, stat and list nodes");
    let unlinks: Vec<_> = (0..FILES)
        .map(|f| {
            let vol = vol.clone();
            thread::spawn(move || {
                let start = Instant::now();
                vol.unlink(ROOT_INO, format!("big{f}").as_bytes(), false)
                    .unwrap();
                start.elapsed()
            })
        })
        .collect();
    let took: Vec<Duration> = unlinks.into_iter().map(|u| u.join().unwrap()).collect();
    let mut slowest = Duration::ZERO;
    let mut calls = 0;
    let mut releasing = u64::MAX;
    while releasing > 0 {
        let start = Instant::now();
        vol.getattr(ROOT_INO).unwrap();
        let nodes = rt.block_on(meta.nodes()).unwrap();
        slowest = slowest.max(start.elapsed());
        calls += 1;
        assert!(
            nodes.iter().all(|n| n.reachable),
            "a node was taken for down while the files were released: {nodes:?}"
        );
        releasing = rt.block_on(meta.cluster_status()).unwrap().releasing_files;
        thread::sleep(Duration::from_millis(20));
    }
    info!("--- unlinks took {took:?}; {calls} small calls, the slowest {slowest:?}");
    assert!(calls > 1, "the release was over before anyone asked");
    assert!(
        slowest < Duration::from_millis(500),
        "a getattr and a node list took {slowest:?} while files were released"
    );
    for f in 0..FILES {
        assert!(vol.lookup(ROOT_INO, format!("big{f}").as_bytes()).is_err());
    }
    let fs = vol.stat_fs().unwrap();
    assert_eq!((fs.inodes, fs.used), (1, 0), "only the root is left");
}
