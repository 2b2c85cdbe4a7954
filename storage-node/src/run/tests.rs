use std::time::Duration;

use tessera_common::crc32;
use tessera_proto::pb::{self, node_client::NodeClient};
use tonic::Code;

use super::*;

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.unwrap_err().code()
}

fn pkey(block: u64, index: u32) -> Option<pb::ShardKey> {
    Some(pb::ShardKey { block, index })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_shards_over_grpc_while_meta_is_down() {
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
    let node = tokio::spawn(run(config, async {
        let _ = stopped.await;
    }));
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
        (0, 5 << 20, 1, 1)
    );
    let deleted = client
        .delete_shards(pb::DeleteShardsRequest {
            keys: vec![pb::ShardKey { block: 1, index: 2 }],
        })
        .await
        .unwrap();
    assert_eq!(deleted.into_inner().deleted, 1);

    drop(client);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), node)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // Stopped cleanly: the store (and its RocksDB lock) was released.
    let store = ShardStore::open(dir.path()).unwrap();
    assert_eq!(store.stat().unwrap().shard_count, 0);
}
