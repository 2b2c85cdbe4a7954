//! Bad input gets a clear error and changes nothing.

use std::{fs, io::ErrorKind};

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
