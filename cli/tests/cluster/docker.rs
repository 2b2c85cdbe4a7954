//! The Docker volume plugin against a real Docker engine: `tessera plugin
//! docker` as a process on a unix socket, volumes used by real containers.
//! scripts/docker.sh starts dockerd when none runs and builds the test image.

use std::{fs, time::Duration};

use crate::harness::{
    docker::{blob, docker_err, docker_ok, wait_until, ManagedPlugin, Plugin, IMAGE},
    is_mounted, Cluster,
};

#[test]
fn volume_created_through_docker_keeps_data_across_containers_and_frees_space_on_rm() {
    let c = Cluster::start(6);
    let p = Plugin::start(&c, "life");
    let shards_before = c.shard_count();
    p.create("data1", &["size=1GiB", "protection=ec:4+2"]);
    // The cluster has it, with the options given.
    let inspect = c.cli_ok(&["volume", "inspect", "data1"]);
    assert!(inspect.contains("1073741824 bytes"), "{inspect}");
    assert!(inspect.contains("ec:4+2"), "{inspect}");
    let ls = docker_ok(&["volume", "ls", "--filter", &format!("driver={}", p.name)]);
    assert!(ls.contains("data1"), "{ls}");

    // A container writes known bytes and a tree of small files, then goes.
    let big = blob(7, 9 << 20);
    p.write_file("data1", "big.bin", &big);
    p.run_ok(
        &["--rm"],
        "data1",
        "mkdir -p /data/d && for i in $(seq 1 50); do echo file-$i > /data/d/f$i; done",
    );
    assert!(
        !is_mounted(&p.mountpoint("data1")),
        "unmounted once no container uses it"
    );

    // A new container reads them back byte for byte.
    let out = p.run(&["--rm"], "data1", "cat /data/big.bin");
    assert!(out.status.success());
    assert!(out.stdout == big, "big.bin differs after a new container");
    let listing = p.run_ok(
        &["--rm"],
        "data1",
        "for i in $(seq 1 50); do cat /data/d/f$i; done",
    );
    let expected: String = (1..=50).map(|i| format!("file-{i}\n")).collect();
    assert_eq!(listing, expected);

    let status = p.inspect_status("data1");
    assert_eq!(status["protection"], "ec:4+2");
    assert_eq!(status["size_bytes"], 1u64 << 30);
    assert_eq!(status["health"], "healthy");
    assert!(
        status["used_bytes"].as_u64().unwrap() >= big.len() as u64,
        "{status}"
    );

    // In use: refused, and the data stays.
    let label = format!("tessera-test={}", p.name);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &format!("{}-holder", p.name),
        "--label",
        &label,
        "-v",
        "data1:/data",
        IMAGE,
        "sleep",
        "600",
    ]);
    assert_eq!(p.inspect_status("data1")["mounts_on_this_host"], 1);
    let err = docker_err(&["volume", "rm", "data1"]);
    assert!(err.contains("in use"), "{err}");
    assert!(c.cli_ok(&["volume", "ls"]).contains("data1"));
    // The plugin refuses on its own too, whatever Docker knows.
    let (code, body) = p.request("VolumeDriver.Remove", r#"{"Name":"data1"}"#);
    assert_eq!(code, 500);
    assert!(body["Err"].as_str().unwrap().contains("in use"), "{body}");

    // Once the container is gone, rm succeeds and the shards are freed.
    docker_ok(&["rm", "-f", &format!("{}-holder", p.name)]);
    assert!(c.shard_count() > shards_before);
    docker_ok(&["volume", "rm", "data1"]);
    assert!(!c.cli_ok(&["volume", "ls"]).contains("data1"));
    wait_until(
        "the removed volume's shards to be freed",
        Duration::from_secs(60),
        || c.shard_count() == shards_before,
    );
}

#[test]
fn two_containers_share_one_mount_and_see_each_others_files() {
    let c = Cluster::start(6);
    let p = Plugin::start(&c, "share");
    p.create("shared", &["size=512MiB", "protection=replica:3"]);
    let label = format!("tessera-test={}", p.name);
    let (a, b) = (format!("{}-a", p.name), format!("{}-b", p.name));
    for n in [&a, &b] {
        docker_ok(&[
            "run",
            "-d",
            "--name",
            n,
            "--label",
            &label,
            "-v",
            "shared:/data",
            IMAGE,
            "sleep",
            "600",
        ]);
    }
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = p.mountpoint("shared").display().to_string();
    assert_eq!(
        mounts
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(dir.as_str()))
            .count(),
        1,
        "one FUSE mount for both containers"
    );
    assert_eq!(p.inspect_status("shared")["mounts_on_this_host"], 2);

    docker_ok(&["exec", &a, "sh", "-c", "echo from-a > /data/a.txt"]);
    assert_eq!(docker_ok(&["exec", &b, "cat", "/data/a.txt"]), "from-a\n");
    docker_ok(&["exec", &b, "sh", "-c", "seq 1 10000 > /data/b.txt"]);
    let expected: String = (1..=10000).map(|i| format!("{i}\n")).collect();
    assert_eq!(docker_ok(&["exec", &a, "cat", "/data/b.txt"]), expected);

    // One container leaving keeps the mount for the other.
    docker_ok(&["rm", "-f", &a]);
    assert!(is_mounted(&p.mountpoint("shared")));
    assert_eq!(docker_ok(&["exec", &b, "cat", "/data/a.txt"]), "from-a\n");
    docker_ok(&["rm", "-f", &b]);
    assert!(
        !is_mounted(&p.mountpoint("shared")),
        "last one out unmounts"
    );
}

#[test]
fn killing_the_plugin_never_breaks_a_running_container() {
    let c = Cluster::start(6);
    let mut p = Plugin::start(&c, "kill");
    p.create("busy", &["size=1GiB"]);
    let name = format!("{}-writer", p.name);
    let label = format!("tessera-test={}", p.name);
    // Writes a file every 50 ms for about 6 s; any failed write fails the
    // container.
    let script =
        "set -e; for i in $(seq 1 120); do seq $i $((i * 500)) > /data/f$i; sleep 0.05; done";
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &label,
        "-v",
        "busy:/data",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    std::thread::sleep(Duration::from_millis(1500));

    p.kill();
    assert!(
        is_mounted(&p.mountpoint("busy")),
        "the mount outlives the plugin"
    );
    std::thread::sleep(Duration::from_millis(1000));
    p.restart();
    // The new plugin process knows the container's mount.
    assert_eq!(p.inspect_status("busy")["mounts_on_this_host"], 1);
    assert_eq!(
        p.request("VolumeDriver.Path", r#"{"Name":"busy"}"#).1["Mountpoint"],
        p.mountpoint("busy").display().to_string()
    );

    let code = docker_ok(&["wait", &name]);
    assert_eq!(
        code.trim(),
        "0",
        "the container's writes kept succeeding: {}",
        docker_ok(&["logs", &name])
    );
    docker_ok(&["rm", &name]);
    assert!(
        !is_mounted(&p.mountpoint("busy")),
        "the restarted plugin unmounted it"
    );

    let all = p.run_ok(
        &["--rm"],
        "busy",
        "for i in $(seq 1 120); do cat /data/f$i; done",
    );
    let expected: String = (1..=120u64)
        .flat_map(|i| (i..=i * 500).map(|n| format!("{n}\n")))
        .collect();
    assert!(
        all == expected,
        "files written across the plugin restart differ"
    );
}

#[test]
fn hostile_names_and_options_are_refused_with_a_clear_err() {
    let c = Cluster::start(6);
    let p = Plugin::start(&c, "bad");
    let long = "x".repeat(300);
    let cases: &[(&str, &[&str], &str)] = &[
        ("../x", &[], "volume name"),
        (&long, &[], "volume name"),
        ("ok1", &["-o", "size=-1"], "size"),
        ("ok1", &["-o", "size=0"], "size"),
        ("ok1", &["-o", "size=18446744073709551616"], "size"),
        ("ok1", &["-o", "protection=ec:0+9"], "protection"),
        ("ok1", &["-o", "protection=raid5"], "protection"),
        ("ok1", &["-o", "colour=blue"], "unknown option"),
        (
            "ok1",
            &["-o", "size=1GiB", "-o", "Size=2GiB"],
            "unknown option",
        ),
    ];
    for (name, opts, want) in cases {
        let mut args = vec!["volume", "create", "-d", &p.name];
        args.extend_from_slice(opts);
        args.push(name);
        let err = docker_err(&args);
        assert!(err.contains(want), "{name} {opts:?}: {err}");
    }
    assert_eq!(
        c.cli_ok(&["volume", "ls"]).lines().count(),
        1,
        "nothing created"
    );

    // Straight at the socket: malformed bodies, unknown volumes and calls.
    let err = |endpoint: &str, body: &str| {
        let (code, v) = p.request(endpoint, body);
        assert_eq!(code, 500, "{endpoint} {body}: {v}");
        v["Err"].as_str().unwrap().to_string()
    };
    assert!(err("VolumeDriver.Create", "{not json").contains("malformed request"));
    assert!(err("VolumeDriver.Create", r#"{"Opts":{}}"#).contains("malformed request"));
    assert!(err("VolumeDriver.Mount", r#"{"Name":"nope","ID":"x"}"#).contains("does not exist"));
    assert!(err("VolumeDriver.Mount", r#"{"Name":"../x","ID":"x"}"#).contains("volume name"));
    assert!(err("VolumeDriver.Get", r#"{"Name":"nope"}"#).contains("does not exist"));
    assert!(err("VolumeDriver.Remove", r#"{"Name":"nope"}"#).contains("does not exist"));
    assert!(err("VolumeDriver.Explode", "{}").contains("unknown endpoint"));
    let (code, v) = p.request("Plugin.Activate", "");
    assert_eq!(
        (code, v["Implements"][0].as_str()),
        (200, Some("VolumeDriver"))
    );
    let (_, v) = p.request("VolumeDriver.Capabilities", "");
    assert_eq!(v["Capabilities"]["Scope"], "global");
    assert_eq!(
        c.cli_ok(&["volume", "ls"]).lines().count(),
        1,
        "still nothing created"
    );

    // A plugin whose cluster is unreachable says so.
    let dead = format!("127.0.0.1:{}", crate::harness::free_port());
    let lost = Plugin::start_with_meta(&c, "lost", &dead);
    let err = docker_err(&["volume", "create", "-d", &lost.name, "v"]);
    assert!(err.contains("cannot reach the metadata service"), "{err}");
}

#[test]
fn managed_plugin_package_serves_volumes() {
    let c = Cluster::start(6);
    let p = ManagedPlugin::install(&c);
    docker_ok(&[
        "volume",
        "create",
        "-d",
        &p.name,
        "-o",
        "size=1GiB",
        "-o",
        "protection=ec:4+2",
        "managed1",
    ]);
    assert!(c.cli_ok(&["volume", "ls"]).contains("managed1"));
    let run = |script: &str| {
        docker_ok(&[
            "run",
            "--rm",
            "-v",
            "managed1:/data",
            IMAGE,
            "sh",
            "-c",
            script,
        ])
    };
    run("seq 1 20000 > /data/numbers");
    let expected: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert_eq!(run("cat /data/numbers"), expected);
    let err = docker_err(&[
        "volume",
        "create",
        "-d",
        &p.name,
        "-o",
        "colour=blue",
        "bad",
    ]);
    assert!(err.contains("unknown option"), "{err}");
    docker_ok(&["volume", "rm", "managed1"]);
    assert!(!c.cli_ok(&["volume", "ls"]).contains("managed1"));
}
