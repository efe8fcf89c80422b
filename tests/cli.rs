//! The `redis-primitives` binary: scripts list/show/manifest/load/export.

mod common;

use std::process::{Command, Output};

use common::{Cluster, Server};
use redis_primitives::script;

fn cli(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redis-primitives"))
        .args(args)
        .env_remove("REDIS_URL")
        .output()
        .expect("run redis-primitives")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn list_names_every_script_with_its_sha1() {
    let o = cli(&["scripts", "list"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for s in script::bundle().iter() {
        assert!(
            out.lines().any(|l| l.starts_with(s.name()) && l.contains(s.sha1())),
            "{} missing:\n{out}",
            s.name()
        );
    }
}

#[test]
fn show_prints_the_contract_and_the_exact_source() {
    let o = cli(&["scripts", "show", "lock.release"]);
    assert!(o.status.success());
    let out = stdout(&o);
    let s = script::get("lock.release").unwrap();
    assert!(out.contains(&format!("sha1 {}", s.sha1())));
    assert!(out.contains("# KEYS[1] lock lock:{<resource>}"), "{out}");
    assert!(out.ends_with(s.source_text()));
    let missing = cli(&["scripts", "show", "no.such"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no script named no.such"));
}

#[test]
fn manifest_check_passes_on_the_committed_file_and_fails_on_a_stale_one() {
    let committed = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/manifest.json");
    let o = cli(&["scripts", "manifest", "--check", "--path", committed]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let dir = std::env::temp_dir().join(format!("rp-manifest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let stale = dir.join("manifest.json");
    let text = std::fs::read_to_string(committed).unwrap();
    let sha = script::get("lock.release").unwrap().sha1();
    std::fs::write(&stale, text.replace(sha, &"0".repeat(40))).unwrap();
    let o = cli(&["scripts", "manifest", "--check", "--path", stale.to_str().unwrap()]);
    assert!(!o.status.success(), "a stale manifest must fail the check");
    assert!(String::from_utf8_lossy(&o.stderr).contains("stale"));

    // Without --check it rewrites the file to the fresh one.
    assert!(cli(&["scripts", "manifest", "--path", stale.to_str().unwrap()]).status.success());
    assert_eq!(std::fs::read_to_string(&stale).unwrap(), text);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn export_writes_files_whose_sha1s_match_the_manifest() {
    let dir = std::env::temp_dir().join(format!("rp-export-{}", std::process::id()));
    let o = cli(&["scripts", "export", dir.to_str().unwrap()]);
    assert!(o.status.success());
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    let entries = manifest["scripts"].as_array().unwrap();
    assert_eq!(entries.len(), script::bundle().len());
    for e in entries {
        let bytes = std::fs::read(dir.join(e["file"].as_str().unwrap())).unwrap();
        assert_eq!(sha1_smol::Sha1::from(&bytes).digest().to_string(), e["sha1"].as_str().unwrap());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_preloads_a_standalone_server() {
    let server = Server::start();
    let o = cli(&["scripts", "load", "--url", &server.url()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let bundle = script::bundle();
    assert_eq!(out.lines().count(), bundle.len());
    for s in bundle.iter() {
        assert!(out.contains(&format!("{}  {}", s.sha1(), s.name())));
        let exists: Vec<i64> = server.cmd(&["SCRIPT", "EXISTS", s.sha1()]);
        assert_eq!(exists, [1]);
    }
}

#[test]
fn load_preloads_every_primary_of_a_cluster() {
    let cluster = Cluster::start();
    let o = cli(&["scripts", "load", "--url", &cluster.nodes[0].url()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let nodes: std::collections::BTreeSet<&str> =
        out.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert_eq!(nodes.len(), 3, "one block per primary:\n{out}");
}

#[test]
fn load_against_nothing_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = cli(&["scripts", "load", "--url", &format!("redis://127.0.0.1:{port}")]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("error:"));
}

fn tour(url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redis-primitives")).arg("tour").env("REDIS_URL", url).output().unwrap()
}

#[test]
fn tour_starts_a_throwaway_server_when_nothing_answers_and_stops_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let o = tour(&format!("redis://127.0.0.1:{port}/"));
    let out = stdout(&o);
    assert!(o.status.success(), "{out}\n{}", String::from_utf8_lossy(&o.stderr));
    for needle in [
        "started a throwaway redis-server",
        "request 4: refused, retry after",
        // Tokens are server microseconds (they never repeat, even after a flush).
        "already wrote",
        "computed 1 time(s)",
        "writes back: Stale",
        "1 dead-lettered",
    ] {
        assert!(out.contains(needle), "missing {needle:?} in:\n{out}");
    }
    let throwaway = out.split("redis-server at ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap();
    let gone = redis::Client::open(throwaway)
        .unwrap()
        .get_connection_with_timeout(std::time::Duration::from_millis(300));
    assert!(gone.is_err(), "the throwaway server was stopped at exit");
}

#[test]
fn tour_against_a_given_server_leaves_no_keys_behind() {
    let server = Server::start();
    let o = tour(&server.url());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains(&format!("tour against {}", server.url())));
    let keys: i64 = server.cmd(&["DBSIZE"]);
    assert_eq!(keys, 0, "every key the tour wrote was removed");
}
