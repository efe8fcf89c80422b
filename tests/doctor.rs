//! `redis-primitives doctor` against servers configured well and badly.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Flavor, Server, servers};
use redis_primitives::doctor::{Report, Status, TESTED_SERVERS, diagnose};

fn status_of(report: &Report, name: &str) -> Vec<Status> {
    report.checks.iter().filter(|c| c.name == name).map(|c| c.status).collect()
}

fn detail_of<'r>(report: &'r Report, name: &str) -> &'r str {
    &report.checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no {name} check")).detail
}

/// How the doctor names a server build: `Redis 7.0.15`, `Valkey 9.1.2 (redis_version 7.2.4)`.
fn doctor_name(build: &servers::Build) -> String {
    let (a, b, c) = build.version;
    match build.flavor {
        Flavor::Redis => format!("Redis {a}.{b}.{c}"),
        Flavor::Valkey => format!("Valkey {a}.{b}.{c} (redis_version 7.2.4)"),
    }
}

fn doctor_cli(url: &str, json: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redis-primitives"));
    cmd.args(["doctor", "--url", url]);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn a_default_test_server_warns_about_persistence_but_passes() {
    let server = Server::start(); // no RDB, no AOF
    let report = diagnose(&server.url()).unwrap();
    assert!(!report.cluster);
    assert_eq!(status_of(&report, "server version"), [Status::Ok]);
    let name = doctor_name(servers::selected());
    assert!(detail_of(&report, "server version").starts_with(&name), "{report:?}");
    assert_eq!(status_of(&report, "tested server"), [Status::Ok], "the suite's own server is a tested one");
    assert_eq!(status_of(&report, "persistence"), [Status::Warn]);
    assert_eq!(status_of(&report, "eviction policy"), [Status::Ok]);
    assert!(!report.failed());
    let (ok, text) = doctor_cli(&server.url(), false);
    assert!(ok, "{text}");
    assert!(text.contains("[warn]") && text.contains("persistence"), "{text}");
    let (ok, json) = doctor_cli(&server.url(), true);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["checks"].as_array().unwrap().iter().any(|c| c["name"] == "scripts loaded"));
}

#[test]
fn aof_passes_and_allkeys_eviction_warns() {
    let good = Server::start_with(&["--appendonly", "yes"]);
    let report = diagnose(&good.url()).unwrap();
    assert_eq!(status_of(&report, "persistence"), [Status::Ok]);

    let risky = Server::start_with(&["--maxmemory", "100mb", "--maxmemory-policy", "allkeys-lru"]);
    let report = diagnose(&risky.url()).unwrap();
    let eviction = report.checks.iter().find(|c| c.name == "eviction policy").unwrap();
    assert_eq!(eviction.status, Status::Warn);
    assert!(eviction.detail.contains("allkeys-lru") && eviction.detail.contains("noeviction"));

    // Preloaded scripts are reported as loaded.
    redis_primitives::script::preload(&mut good.conn()).unwrap();
    let report = diagnose(&good.url()).unwrap();
    let loaded = report.checks.iter().find(|c| c.name == "scripts loaded").unwrap();
    assert!(loaded.detail.starts_with("all "), "{}", loaded.detail);
}

#[test]
fn a_cluster_is_checked_node_by_node_and_a_broken_one_fails() {
    let mut cluster = Cluster::start();
    let report = diagnose(&cluster.nodes[0].url()).unwrap();
    assert!(report.cluster);
    assert_eq!(status_of(&report, "cluster state"), [Status::Ok]);
    assert_eq!(status_of(&report, "persistence").len(), 6, "every primary and replica is checked");
    assert!(!report.failed());

    // Kill a primary and its replica: their slots have no server, the cluster state fails.
    let (primary, replicas) = cluster.owners("x");
    for port in [primary, replicas[0]] {
        cluster.nodes.iter_mut().find(|n| n.port() == port).unwrap().kill();
    }
    let seed = cluster.nodes.iter().find(|n| n.port() != primary && n.port() != replicas[0]).unwrap().url();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, text) = doctor_cli(&seed, false);
        if !ok {
            assert!(text.contains("[FAIL]") && text.contains("cluster state"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "doctor never noticed the dead shard:\n{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn valkey_and_redis_6_2_are_named_with_their_own_versions_and_are_tested_servers() {
    for build in [servers::valkey(), servers::redis62()] {
        let server = Server::start_bin(build.bin.clone(), &[]);
        let report = diagnose(&server.url()).unwrap();
        let name = doctor_name(&build);
        assert!(detail_of(&report, "server version").starts_with(&name), "{name}: {report:?}");
        assert_eq!(status_of(&report, "server version"), [Status::Ok], "{name}");
        assert_eq!(status_of(&report, "tested server"), [Status::Ok], "{name}: {report:?}");
        assert!(!report.failed() && !report.cluster, "{name}: {report:?}");
    }
}

#[test]
fn the_tested_servers_are_the_ones_the_readme_and_ci_name() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let ci = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/run")).unwrap();
    for (make, major, minor) in TESTED_SERVERS {
        assert!(readme.contains(&format!("{make} {major}.{minor}")), "README names {make} {major}.{minor}");
    }
    for selection in ["system", "redis6.2", "valkey"] {
        assert!(ci.contains(selection), ".ci/run runs the suite on {selection}");
    }
}

/// A server that says it is `info` (INFO's text) and answers the doctor's other questions like
/// a plain standalone server: nothing of it is tested in CI.
fn fake_server_info(info: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://127.0.0.1:{}/", listener.local_addr().unwrap().port());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            std::thread::spawn(move || {
                let mut out = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                while let Some(args) = read_command(&mut reader) {
                    let reply = match args[0].to_ascii_uppercase().as_str() {
                        "INFO" => format!("${}\r\n{info}\r\n", info.len()),
                        "CONFIG" => "*2\r\n$4\r\nsave\r\n$0\r\n\r\n".to_owned(),
                        "SCRIPT" => format!("*{}\r\n{}", args.len() - 2, ":0\r\n".repeat(args.len() - 2)),
                        _ => "+OK\r\n".to_owned(),
                    };
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

fn read_command(reader: &mut impl BufRead) -> Option<Vec<String>> {
    let mut line = String::new();
    reader.read_line(&mut line).ok().filter(|n| *n > 0)?;
    let n: usize = line.trim().strip_prefix('*')?.parse().ok()?;
    (0..n)
        .map(|_| {
            let mut len = String::new();
            reader.read_line(&mut len).ok()?;
            let len: usize = len.trim().strip_prefix('$')?.parse().ok()?;
            let mut buf = vec![0; len + 2];
            reader.read_exact(&mut buf).ok()?;
            Some(String::from_utf8_lossy(&buf[..len]).into_owned())
        })
        .collect()
}

#[test]
fn an_untested_server_gets_a_warning_naming_the_tested_ones() {
    for (info, name) in [
        ("redis_version:8.2.1\r\nredis_mode:standalone\r\nmaxmemory_policy:noeviction\r\n", "Redis 8.2.1"),
        ("redis_version:7.2.4\r\nvalkey_version:8.0.1\r\nserver_mode:standalone\r\n", "Valkey 8.0.1"),
    ] {
        let url = fake_server_info(info);
        let report = diagnose(&url).unwrap();
        assert_eq!(status_of(&report, "server version"), [Status::Ok], "{report:?}");
        assert_eq!(status_of(&report, "tested server"), [Status::Warn], "{report:?}");
        let detail = detail_of(&report, "tested server");
        assert!(detail.starts_with(name) && detail.contains("Redis 6.2, Redis 7.0, Valkey 9.1"), "{detail}");
        let (ok, text) = doctor_cli(&url, false);
        assert!(ok, "a warning does not fail the doctor: {text}");
        assert!(text.contains("[warn]") && text.contains("tested server"), "{text}");
    }
}
