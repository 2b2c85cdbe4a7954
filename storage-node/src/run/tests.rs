use std::time::Duration;

use tessera_common::crc32;
use tessera_proto::{
    lean,
    pb::{self, node_client::NodeClient},
};
use tonic::Code;

use super::*;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

fn pkey(block: u64, index: u32) -> Option<pb::ShardKey> {
    Some(pb::ShardKey { block, index })
}

/// A node serving in this process, its metadata service unreachable.
struct TestNode {
    dir: tempfile::TempDir,
    addr: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
}

fn start_node() -> TestNode {
    let dir = tempfile::tempdir().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = NodeConfig {
        data_dir: dir.path().to_path_buf(),
        listen: addr,
        // Nothing listens there: the node must serve regardless.
        meta: "127.0.0.1:1".into(),
        labels: BTreeMap::from([("zone".into(), "a".into())]),
        scrub: Default::default(),
        compact: Default::default(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(config, async {
        let _ = stopped.await;
    }));
    TestNode {
        dir,
        addr,
        stop,
        task,
    }
}

impl TestNode {
    /// Stops the node; the store it released, opened again.
    async fn stop(self) -> (tempfile::TempDir, ShardStore) {
        self.stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        // Stopped cleanly: the store (and its RocksDB lock) was released.
        let store = ShardStore::open(self.dir.path()).unwrap();
        (self.dir, store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_shards_over_grpc_while_meta_is_down() {
    let node = start_node();
    let addr = node.addr;
    let mut client = loop {
        match NodeClient::connect(format!("http://{addr}")).await {
            Ok(c) => {
                break c
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };

    // Larger than tonic's default 4 MiB message limit.
    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let crc = crc32(&data);
    let put = pb::PutShardRequest {
        key: pkey(1, 2),
        data: data.clone().into(),
        crc,
        epoch: 1,
    };
    client.put_shard(put.clone()).await.unwrap();
    client.put_shard(put).await.unwrap();
    let got = client
        .get_shard(pb::GetShardRequest {
            key: pkey(1, 2),
            offset: 0,
            len: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (got.data.len(), got.shard_crc, got.shard_len),
        (data.len(), crc, data.len() as u32)
    );
    assert!(got.data == data);
    let part = client
        .get_shard(pb::GetShardRequest {
            key: pkey(1, 2),
            offset: 65_530,
            len: 20,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(part.data, data[65_530..65_550]);

    let bad = pb::PutShardRequest {
        key: pkey(2, 0),
        data: vec![1, 2, 3].into(),
        crc: 7,
        epoch: 1,
    };
    assert_eq!(code(client.put_shard(bad).await), Code::InvalidArgument);
    let other = pb::PutShardRequest {
        key: pkey(1, 2),
        data: vec![1].into(),
        crc: crc32(&[1]),
        epoch: 1,
    };
    assert_eq!(code(client.put_shard(other).await), Code::AlreadyExists);
    let missing = pb::GetShardRequest {
        key: pkey(9, 0),
        offset: 0,
        len: 0,
    };
    assert_eq!(code(client.get_shard(missing).await), Code::NotFound);
    let no_key = pb::GetShardRequest {
        key: None,
        offset: 0,
        len: 0,
    };
    assert_eq!(code(client.get_shard(no_key).await), Code::InvalidArgument);
    let beyond = pb::GetShardRequest {
        key: pkey(1, 2),
        offset: 5 << 20,
        len: 1,
    };
    assert_eq!(code(client.get_shard(beyond).await), Code::InvalidArgument);

    let listed = client
        .list_shards(pb::ListShardsRequest {
            after: None,
            limit: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed.shards,
        vec![pb::ShardInfo {
            key: pkey(1, 2),
            len: 5 << 20,
            crc
        }]
    );
    let st = client.stat(pb::StatRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (st.node_id, st.used_bytes, st.shard_count, st.format_version),
        (0, 5 << 20, 1, 2)
    );
    let deleted = client
        .delete_shards(pb::DeleteShardsRequest {
            keys: vec![pb::ShardKey { block: 1, index: 2 }],
        })
        .await
        .unwrap();
    assert_eq!(deleted.into_inner().deleted, 1);

    drop(client);
    let (_dir, store) = node.stop().await;
    assert_eq!(store.stat().unwrap().shard_count, 0);
}

/// A lean RPC connection to a node, hello exchanged.
async fn lean_connect(addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    s.write_all(&lean::hello()).await.unwrap();
    let mut hello = [0u8; lean::HELLO_LEN];
    s.read_exact(&mut hello).await.unwrap();
    lean::check_hello(&hello).unwrap();
    s
}

/// One lean call of `path`: the answer's message, or its status code.
async fn lean_call(
    s: &mut tokio::net::TcpStream,
    path: &str,
    message: &[u8],
    payload: bytes::Bytes,
) -> Result<bytes::Bytes, Code> {
    lean_call_status(s, path, message, payload)
        .await
        .map_err(|(code, _)| code)
}

/// A lean call; a failure as its code and status message.
async fn lean_call_status(
    s: &mut tokio::net::TcpStream,
    path: &str,
    message: &[u8],
    payload: bytes::Bytes,
) -> Result<bytes::Bytes, (Code, String)> {
    let mut head = Vec::new();
    lean::request_head(path, message.len() + payload.len(), &mut head).unwrap();
    head.extend_from_slice(message);
    tessera_proto::transport::frames::write_parts(s, &head, payload)
        .await
        .unwrap();
    let frame = tessera_proto::transport::frames::read_frame(s)
        .await
        .unwrap()
        .unwrap();
    let a = lean::decode_response(&frame).unwrap();
    match a.code {
        0 => Ok(frame.slice(frame.len() - a.message.len()..)),
        c => Err((Code::from(c as i32), a.status.to_string())),
    }
}

fn put_parts(key: Option<pb::ShardKey>, data: &[u8], crc: u32) -> (Vec<u8>, bytes::Bytes) {
    let rest = pb::PutShardRequest {
        key,
        data: Default::default(),
        crc,
        epoch: 1,
    };
    (
        lean::message_with_bytes_head(&rest, lean::node::PUT_DATA_TAG, data.len()),
        bytes::Bytes::copy_from_slice(data),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_same_calls_over_lean_rpc_and_refuses_hostile_bytes() {
    use lean::node::*;
    use prost::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let node = start_node();
    let addr = node.addr;
    let mut s = lean_connect(addr).await;

    let data: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let crc = crc32(&data);
    let (m, p) = put_parts(pkey(1, 2), &data, crc);
    lean_call(&mut s, PUT_SHARD, &m, p.clone()).await.unwrap();
    // Again: the same shard is already stored, which is success.
    lean_call(&mut s, PUT_SHARD, &m, p).await.unwrap();
    let get = |offset, len| {
        pb::GetShardRequest {
            key: pkey(1, 2),
            offset,
            len,
        }
        .encode_to_vec()
    };
    let got = lean_call(&mut s, GET_SHARD, &get(0, 0), Default::default())
        .await
        .unwrap();
    let got = pb::GetShardResponse::decode(got).unwrap();
    assert_eq!(
        (got.data.len(), got.shard_crc, got.shard_len),
        (data.len(), crc, data.len() as u32)
    );
    assert!(got.data == data);
    let part = lean_call(&mut s, GET_SHARD, &get(65_530, 20), Default::default())
        .await
        .unwrap();
    assert_eq!(
        pb::GetShardResponse::decode(part).unwrap().data,
        data[65_530..65_550]
    );
    // The same shard over gRPC, on the same port.
    let mut grpc = NodeClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(MAX_MESSAGE);
    let over_grpc = grpc
        .get_shard(pb::GetShardRequest {
            key: pkey(1, 2),
            offset: 0,
            len: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(over_grpc.data == data);

    // Failures come back as their status, on a connection that goes on.
    let (m, p) = put_parts(pkey(2, 0), &[1, 2, 3], 7);
    assert_eq!(
        lean_call(&mut s, PUT_SHARD, &m, p).await,
        Err(Code::InvalidArgument)
    );
    let (m, p) = put_parts(pkey(1, 2), &[1], crc32(&[1]));
    assert_eq!(
        lean_call(&mut s, PUT_SHARD, &m, p).await,
        Err(Code::AlreadyExists)
    );
    let (m, p) = put_parts(None, &[1], crc32(&[1]));
    assert_eq!(
        lean_call(&mut s, PUT_SHARD, &m, p).await,
        Err(Code::InvalidArgument)
    );
    let missing = pb::GetShardRequest {
        key: pkey(9, 0),
        offset: 0,
        len: 0,
    };
    assert_eq!(
        lean_call(
            &mut s,
            GET_SHARD,
            &missing.encode_to_vec(),
            Default::default()
        )
        .await,
        Err(Code::NotFound)
    );
    assert_eq!(
        lean_call(&mut s, GET_SHARD, b"\xff\xff\xff", Default::default()).await,
        Err(Code::InvalidArgument)
    );
    assert_eq!(
        lean_call(&mut s, "/tessera.v1.Node/Format", b"", Default::default()).await,
        Err(Code::Unimplemented)
    );
    let listed = lean_call(
        &mut s,
        LIST_SHARDS,
        &pb::ListShardsRequest {
            after: None,
            limit: 10,
        }
        .encode_to_vec(),
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        pb::ListShardsResponse::decode(listed).unwrap().shards,
        vec![pb::ShardInfo {
            key: pkey(1, 2),
            len: 5 << 20,
            crc
        }]
    );
    let st = lean_call(&mut s, STAT, b"", Default::default())
        .await
        .unwrap();
    assert_eq!(pb::StatResponse::decode(st).unwrap().shard_count, 1);

    // Hostile bytes: a frame over the limit, a frame cut short, HTTP/1.
    let mut bad = lean_connect(addr).await;
    bad.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    assert_eq!(bad.read(&mut [0u8; 1]).await.unwrap_or(0), 0);
    let mut bad = lean_connect(addr).await;
    bad.write_all(&(60u32 << 20).to_le_bytes()).await.unwrap();
    bad.write_all(b"\x05\x00/abcd").await.unwrap();
    bad.shutdown().await.unwrap();
    assert_eq!(bad.read(&mut [0u8; 1]).await.unwrap_or(0), 0);
    let mut bad = tokio::net::TcpStream::connect(addr).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = bad.read_to_end(&mut rest).await;

    // None of it changed what is stored or stopped either protocol.
    let deleted = lean_call(
        &mut s,
        DELETE_SHARDS,
        &pb::DeleteShardsRequest {
            keys: vec![pb::ShardKey { block: 1, index: 2 }],
        }
        .encode_to_vec(),
        Default::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        pb::DeleteShardsResponse::decode(deleted).unwrap().deleted,
        1
    );
    assert_eq!(
        grpc.stat(pb::StatRequest {})
            .await
            .unwrap()
            .into_inner()
            .shard_count,
        0
    );

    // Stopping with a lean connection still open (idle) releases the store.
    drop(grpc);
    node.stop().await;
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_many_ranges_in_one_call_and_refuses_batches_past_its_limits() {
    use lean::node::*;
    use prost::Message;
    use tessera_proto::transport::settings::{GET_SHARDS_MAX_BYTES, GET_SHARDS_MAX_READS};

    let node = start_node();
    let mut s = lean_connect(node.addr).await;
    let shard = |n: u8| -> Vec<u8> { (0..200_000u32).map(|i| (i % 241) as u8 ^ n).collect() };
    for block in 1..=3u64 {
        let data = shard(block as u8);
        let (m, p) = put_parts(pkey(block, 0), &data, crc32(&data));
        lean_call(&mut s, PUT_SHARD, &m, p).await.unwrap();
    }
    let read = |block: u64, offset: u32, len: u32| pb::GetShardRequest {
        key: pkey(block, 0),
        offset,
        len,
    };
    let call = |reads: Vec<pb::GetShardRequest>| pb::GetShardsRequest { reads }.encode_to_vec();

    // Ranges of several shards, across piece boundaries, in the order asked.
    let asked = [
        (3, 65_530, 20),
        (1, 0, 4096),
        (2, 199_000, 1000),
        (1, 4096, 4096),
    ];
    let got = lean_call(
        &mut s,
        GET_SHARDS,
        &call(asked.iter().map(|&(b, o, l)| read(b, o, l)).collect()),
        Default::default(),
    )
    .await
    .unwrap();
    let got = pb::GetShardsResponse::decode(got).unwrap().shards;
    assert_eq!(got.len(), asked.len());
    for (&(b, o, l), g) in asked.iter().zip(&got) {
        let want = &shard(b as u8)[o as usize..(o + l) as usize];
        assert!(g.data == want, "block {b} at {o}: wrong bytes");
        assert_eq!(g.shard_len, 200_000);
    }

    // A batch that fails, fails whole, and names what failed.
    let bad = [
        (vec![read(1, 0, 10), read(9, 0, 10)], "9"),
        (vec![read(1, 0, 10), read(2, 199_999, 2)], "beyond"),
        (vec![read(1, 0, 0)], "without a length"),
        (
            (0..=GET_SHARDS_MAX_READS).map(|_| read(1, 0, 1)).collect(),
            "ranges asked",
        ),
        (
            (0..=GET_SHARDS_MAX_BYTES / 200_000)
                .map(|_| read(1, 0, 200_000))
                .collect(),
            "bytes asked",
        ),
    ];
    for (reads, why) in bad {
        let (code, status) = lean_call_status(&mut s, GET_SHARDS, &call(reads), Default::default())
            .await
            .unwrap_err();
        assert!(status.contains(why), "{why}: {code:?} {status}");
    }
    assert_eq!(
        lean_call(&mut s, GET_SHARDS, b"\xff\xff\xff", Default::default()).await,
        Err(Code::InvalidArgument)
    );
    // Empty entries, two bytes each, are refused before they are decoded.
    let empties = [0x0a, 0x00].repeat(40_000);
    let (code, status) = lean_call_status(&mut s, GET_SHARDS, &empties, Default::default())
        .await
        .unwrap_err();
    assert_eq!(code, Code::InvalidArgument, "{status}");
    assert!(status.contains("byte request"), "{status}");
    // The connection goes on after every refusal.
    lean_call(
        &mut s,
        GET_SHARDS,
        &call(vec![read(2, 0, 1)]),
        Default::default(),
    )
    .await
    .unwrap();
}
