//! `lookup_page` against services that do not speak it, or that send
//! pages that lie.

use bytes::Bytes;
use tessera_common::FileKind;
use tessera_proto::transport::{self, BlockingHandler, OnThreads, Reply};
use tokio::net::TcpListener;

use super::*;

/// Answers `LookupPage` with `page`, or as a service older than it.
struct FakeMeta {
    page: Option<pb::LookupPageResponse>,
}

impl BlockingHandler for FakeMeta {
    fn call(&self, path: &str, _message: Bytes) -> Reply {
        match (path, &self.page) {
            (paths::LOOKUP_PAGE, Some(page)) => Reply::message(page),
            _ => Reply::unknown_method("fake metadata service", path),
        }
    }
}

/// Serves `meta` on a runtime of its own; its address.
fn serve(meta: FakeMeta) -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    rt.spawn(async move {
        let grpc = transport::grpc::server().add_routes(Default::default());
        let _ = transport::serve(
            listener,
            grpc,
            OnThreads::new(std::sync::Arc::new(meta)),
            std::future::pending(),
        )
        .await;
    });
    (addr, rt)
}

fn entry(name: &str, ino: u64) -> pb::NamedAttr {
    pb::NamedAttr {
        name: name.as_bytes().to_vec().into(),
        attr: Some(pb::Attr {
            ino,
            kind: FileKind::File as u32,
            perm: 0o644,
            nlink: 1,
            ..Default::default()
        }),
    }
}

fn ask(page: Option<pb::LookupPageResponse>) -> Result<Option<NamePage>> {
    let (addr, _rt) = serve(FakeMeta { page });
    NamesClient::new(&addr).lookup_page(1, 1, b"b", 4)
}

#[test]
fn a_service_without_pages_says_so_and_a_page_that_lies_is_refused() {
    assert_eq!(ask(None).unwrap(), None, "an older service");

    let good = pb::LookupPageResponse {
        entries: vec![entry("b", 2), entry("c", 3)],
        complete: true,
    };
    let page = ask(Some(good)).unwrap().unwrap();
    assert_eq!(page.entries.len(), 2);
    assert!(page.complete);

    let lies = [
        ("out of order", vec![entry("c", 3), entry("b", 2)]),
        ("before the name asked", vec![entry("a", 1), entry("b", 2)]),
        ("a name twice", vec![entry("b", 2), entry("b", 2)]),
        (
            "more than the limit",
            (0..5).map(|i| entry(&format!("b{i}"), i + 2)).collect(),
        ),
    ];
    for (what, entries) in lies {
        let r = ask(Some(pb::LookupPageResponse {
            entries,
            complete: false,
        }));
        assert!(matches!(r, Err(ClientError::Malformed(_))), "{what}: {r:?}");
    }
    let mut no_attr = entry("b", 2);
    no_attr.attr = None;
    let r = ask(Some(pb::LookupPageResponse {
        entries: vec![no_attr],
        complete: true,
    }));
    assert!(
        matches!(r, Err(ClientError::Malformed(_))),
        "an entry without attributes: {r:?}"
    );
}
