//! Bad input gets a clear error and changes nothing.

use std::{
    fs,
    io::{ErrorKind, Read, Write},
    net::TcpStream,
    time::Duration,
};

use tessera_proto::lean;

use crate::harness::Cluster;

#[test]
fn hostile_volume_requests_are_refused_and_create_nothing() {
    let c = Cluster::start(6);
    let long = "x".repeat(300);
    let cases: &[(&[&str], &str)] = &[
        (
            &["volume", "create", "../x", "--size", "1GiB"],
            "volume name",
        ),
        (&["volume", "create", "", "--size", "1GiB"], "volume name"),
        (
            &["volume", "create", &long, "--size", "1GiB"],
            "volume name",
        ),
        (
            &["volume", "create", "a/b", "--size", "1GiB"],
            "volume name",
        ),
        (&["volume", "create", "ok", "--size", "0"], "size"),
        (&["volume", "create", "ok", "--size=-1"], "size"),
        (
            &["volume", "create", "ok", "--size", "18446744073709551616"],
            "size",
        ),
        (&["volume", "create", "ok", "--size", "99999PiB"], "size"),
        (
            &[
                "volume",
                "create",
                "ok",
                "--size",
                "1GiB",
                "--protection",
                "ec:0+9",
            ],
            "protection",
        ),
        (
            &[
                "volume",
                "create",
                "ok",
                "--size",
                "1GiB",
                "--protection",
                "raid5",
            ],
            "protection",
        ),
        (
            &[
                "volume",
                "create",
                "ok",
                "--size",
                "1GiB",
                "--protection",
                "ec:4+3",
            ],
            "cannot place",
        ),
        (&["volume", "inspect", "missing"], "not found"),
        (&["volume", "rm", "missing"], "not found"),
    ];
    for (args, needle) in cases {
        let out = c.cli(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(needle),
            "{args:?}: error {err:?} does not mention {needle:?}"
        );
    }
    let ls = c.cli_ok(&["volume", "ls"]);
    assert_eq!(ls.lines().count(), 1, "something was created:\n{ls}");

    c.create_volume("dup", "1GiB", "ec:4+2");
    let out = c.cli(&["volume", "create", "dup", "--size", "2GiB"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert!(c.cli_ok(&["volume", "inspect", "dup"]).contains("1.0GiB"));
}

#[test]
fn hostile_file_names_are_refused() {
    let c = Cluster::start(6);
    c.create_volume("names", "1GiB", "ec:4+2");
    let m = c.mount("names");
    let long = "n".repeat(300);
    let e = fs::write(m.path(&long), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENAMETOOLONG));
    // A name with a NUL never reaches us (the kernel stops it); one with
    // '/' is a path. What the volume holds must be unchanged.
    assert_eq!(
        fs::read_dir(m.path("missing")).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(fs::read_dir(&m.dir).unwrap().count(), 0);
    m.unmount();
}

/// A connection speaking lean RPC to the metadata service, as a FUSE
/// thread does, with the hello already exchanged.
fn lean_connection(c: &Cluster) -> TcpStream {
    lean_connection_to(&c.meta_addr)
}

/// A lean RPC connection to `addr`, the hello exchanged.
fn lean_connection_to(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&lean::hello()).unwrap();
    let mut hello = [0u8; lean::HELLO_LEN];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(lean::hello_version(&hello), Ok(lean::VERSION));
    s
}

/// Makes one call; the answer's (code, status, message).
fn lean_call(s: &mut TcpStream, method: &str, message: &[u8]) -> (u32, String, Vec<u8>) {
    lean_call_path(s, &format!("/tessera.v1.Meta/{method}"), message)
}

/// Makes one call to `path`; the answer's (code, status, message).
fn lean_call_path(s: &mut TcpStream, path: &str, message: &[u8]) -> (u32, String, Vec<u8>) {
    let mut out = Vec::new();
    lean::encode_request(path, message, &mut out).unwrap();
    s.write_all(&out).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    let mut frame = vec![0u8; lean::frame_len(head).unwrap()];
    s.read_exact(&mut frame).unwrap();
    let a = lean::decode_response(&frame).unwrap();
    (a.code, a.status.to_string(), a.message.to_vec())
}

/// Whether the service closed `s` (rather than answering).
fn closed_by_service(s: &mut TcpStream) -> bool {
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => true,
        Err(e) => e.kind() == ErrorKind::ConnectionReset,
    }
}

/// `GetVolumeRequest { name }`, encoded by hand: field 1, length-delimited.
fn get_volume(name: &str) -> Vec<u8> {
    let mut m = vec![0x0a, name.len() as u8];
    m.extend_from_slice(name.as_bytes());
    m
}

#[test]
fn lean_rpc_answers_calls_and_refuses_hostile_bytes() {
    let c = Cluster::start(1);
    c.create_volume("lean", "1GiB", "replica:1");
    let mut s = lean_connection(&c);
    let (code, _, answer) = lean_call(&mut s, "GetVolume", &get_volume("lean"));
    assert_eq!(code, 0);
    assert!(answer.windows(9).any(|w| w == b"replica:1"), "{answer:?}");
    // Failures come back as the gRPC status, on a connection that goes on.
    let (code, status, _) = lean_call(&mut s, "GetVolume", &get_volume("nope"));
    assert_eq!(code, tonic::Code::NotFound as u32);
    assert!(status.contains("nope"), "{status}");
    let (code, _, _) = lean_call(&mut s, "NoSuchMethod", b"");
    assert_eq!(code, tonic::Code::Unimplemented as u32);
    let (code, _, _) = lean_call(&mut s, "GetVolume", b"\xff\xff\xff");
    assert_ne!(code, 0);
    let (code, _, _) = lean_call(&mut s, "GetVolume", &get_volume("lean"));
    assert_eq!(code, 0);

    // A frame longer than any message: the service hangs up.
    let mut s = lean_connection(&c);
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert!(closed_by_service(&mut s));
    // A frame that announces 60 MiB and ends after a few bytes.
    let mut s = lean_connection(&c);
    s.write_all(&(60u32 << 20).to_le_bytes()).unwrap();
    s.write_all(b"\x05\x00/abcd").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(closed_by_service(&mut s));
    // A path past the end of its frame.
    let mut s = lean_connection(&c);
    s.write_all(&[6, 0, 0, 0, 200, 0, b'/', b'x', b'y', b'z'])
        .unwrap();
    assert!(closed_by_service(&mut s));
    // A version the service does not speak: it says which one it does.
    let mut s = TcpStream::connect(&c.meta_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut hello = lean::hello();
    hello[4] = 2;
    s.write_all(&hello).unwrap();
    let mut answer = [0u8; lean::HELLO_LEN];
    s.read_exact(&mut answer).unwrap();
    assert_eq!(lean::hello_version(&answer), Ok(lean::VERSION));
    assert!(closed_by_service(&mut s));
    // Neither lean RPC nor HTTP/2.
    let mut s = TcpStream::connect(&c.meta_addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert!(closed_by_service(&mut s));

    // A storage node, which answers each lean call on the connection's own
    // thread: a malformed request and a shard key it does not hold get a
    // status, and the connection goes on.
    let mut n = lean_connection_to(&format!("127.0.0.1:{}", c.nodes[0].port));
    let (code, status, _) = lean_call_path(&mut n, lean::node::PUT_SHARD, b"\xff\xff\xff");
    assert_eq!(code, tonic::Code::InvalidArgument as u32, "{status}");
    let (code, _, _) = lean_call_path(&mut n, lean::node::GET_SHARD, b"");
    assert_ne!(code, 0);
    let (code, _, _) = lean_call_path(&mut n, lean::node::STAT, b"");
    assert_eq!(code, 0);

    // None of it changed anything or stopped either protocol.
    assert!(c.cli_ok(&["volume", "ls"]).contains("lean"));
    let (code, _, _) = lean_call(&mut lean_connection(&c), "GetVolume", &get_volume("lean"));
    assert_eq!(code, 0);
}
