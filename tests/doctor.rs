//! `redis-primitives doctor` against servers configured well and badly.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Server};
use redis_primitives::doctor::{Status, diagnose};

fn status_of(report: &redis_primitives::doctor::Report, name: &str) -> Vec<Status> {
    report.checks.iter().filter(|c| c.name == name).map(|c| c.status).collect()
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
