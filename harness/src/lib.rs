//! Test harness of redis-primitives (dev-only): private `redis-server` processes on free loopback
//! ports, standalone or as a local Redis Cluster (3 primaries, 1 replica each), and fake servers
//! that misbehave on purpose. Never touches the Redis on 6379.
//!
//! Each server gets a watchdog shell that kills it (and removes its folder) once the test process
//! is gone, so servers shared through a `static` do not outlive the test binary.

mod fake;
mod faults;
pub mod provision;
mod proxy;
pub mod servers;
pub mod telemetry;

pub use fake::{FakeServer, dead_url, quiet_client};
pub use proxy::{Proxy, ProxyMode};
pub use servers::{Flavor, flavor, has_evalsha_ro, read_only_eval, version};

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const INSTALL_HINT: &str = "the selected test server could not be started (see REDIS_PRIMITIVES_SERVER \
    in harness/src/servers.rs); Debian/Ubuntu: `apt-get install -y redis-server redis-tools`.";

/// The binary of the server the suite runs against (`REDIS_PRIMITIVES_SERVER`, see [`servers`]);
/// panics with install help.
pub fn redis_server_bin() -> PathBuf {
    servers::selected().bin.clone()
}

fn redis_cli_bin() -> PathBuf {
    servers::redis_cli()
}

/// Ports are handed out from a per-process range, and each is checked free (with its cluster
/// bus port, +10000) before use; a server that still fails to bind is retried on the next one.
pub fn next_free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 21000 + (std::process::id() % 200) * 100;
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (base + n % 20000) as u16;
        if port > 55000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port + 10000)).is_ok()
        {
            return port;
        }
    }
}

/// One private redis-server.
pub struct Server {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    bin: PathBuf,
    child: Option<Child>,
    watchdog: Option<Child>,
    /// Container commands sent through [`Server::cmd`] since the (re)start, by `name|sub`: on
    /// a server without subcommand stats (Redis 6.2), [`Server::calls`] leaves them out.
    inspected: Mutex<BTreeMap<String, u64>>,
}

impl Server {
    /// A standalone server with no persistence.
    pub fn start() -> Server {
        Server::start_with(&[])
    }

    /// A server with extra `--option value` arguments.
    pub fn start_with(extra: &[&str]) -> Server {
        Server::start_bin(redis_server_bin(), extra)
    }

    /// A server from a given binary (e.g. an older Redis).
    pub fn start_bin(bin: PathBuf, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _attempt in 0..10 {
            let port = next_free_port();
            let dir =
                std::env::temp_dir().join(format!("redis-primitives-test-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create server dir");
            let mut server = Server {
                port,
                dir,
                extra: extra.clone(),
                bin: bin.clone(),
                child: None,
                watchdog: None,
                inspected: Mutex::default(),
            };
            if server.spawn() {
                return server;
            }
        }
        panic!("could not start redis-server on a free port after 10 attempts");
    }

    /// Starts the process on this server's port; false if it did not become ready.
    fn spawn(&mut self) -> bool {
        self.inspected.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new(&self.bin);
        cmd.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&self.dir)
        .arg("--logfile")
        .arg(&log)
        .args(&self.extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{INSTALL_HINT} ({e})"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false; // exited: most likely the port was taken meanwhile
            }
            if let Ok(client) = redis::Client::open(self.url())
                && let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200))
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                self.watchdog = Some(watchdog(child.id(), &self.dir));
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// A client for this server.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("client")
    }

    /// A fresh blocking connection.
    pub fn conn(&self) -> redis::Connection {
        self.client().get_connection().expect("connect")
    }

    /// Runs one command on a fresh connection (for setup and inspection in tests).
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        if let [name, sub, ..] = args {
            let key = format!("{name}|{sub}").to_ascii_lowercase();
            *self.inspected.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
        }
        let mut c = redis::cmd(args[0]);
        for a in &args[1..] {
            c.arg(*a);
        }
        // A quiet connection: inspecting the server must not add to the command counts a test
        // reads (redis-rs sends CLIENT SETINFO on connect, counted by Redis >= 7.2 and Valkey).
        let mut con = quiet_client(&self.url())
            .get_connection()
            .unwrap_or_else(|e| panic!("connect to :{}: {e}", self.port));
        c.query(&mut con).unwrap_or_else(|e| panic!("{args:?} on :{}: {e}", self.port))
    }

    /// Kills the process (as a crash would) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
    }

    /// Kills the server and starts it again on the same port: a restart with an empty script
    /// cache and no data (no persistence).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.spawn() {
            assert!(Instant::now() < deadline, "redis-server did not restart on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's INFO field, e.g. `info_field("commandstats", "cmdstat_evalsha")`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        let info: String = self.cmd(&["INFO", section]);
        info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':').map(|v| v.trim().to_owned()))
    }

    /// `calls` of a command in INFO commandstats (0 when never called). A subcommand
    /// (`script|load`) is counted on its own from Redis 7.0 on; Redis 6.2 counts only the
    /// container command, so there this is the container's count (`script`) less the other
    /// subcommands the test sent through [`Server::cmd`] (`SCRIPT FLUSH`, `SCRIPT EXISTS`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = self.cmd(&["INFO", "commandstats"]);
        let count = |name: &str| {
            info.lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("cmdstat_{name}:"))?.split(',').next()?.strip_prefix("calls=")
                })
                .and_then(|n| n.parse().ok())
        };
        match command.split_once('|') {
            Some((container, _)) if !info.contains('|') => {
                let inspected = self.inspected.lock().unwrap_or_else(|e| e.into_inner());
                let others: u64 = inspected
                    .iter()
                    .filter(|(k, _)| k.starts_with(&format!("{container}|")) && k.as_str() != command)
                    .map(|(_, n)| n)
                    .sum();
                count(container).unwrap_or(0u64).saturating_sub(others)
            }
            _ => count(command).unwrap_or(0),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Kills `pid` and removes `dir` once this test process has exited, however it exits.
fn watchdog(pid: u32, dir: &Path) -> Child {
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null; rm -rf '{dir}'",
        me = std::process::id(),
        dir = dir.display()
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watchdog")
}

/// A local Redis Cluster: 3 primaries with 1 replica each.
pub struct Cluster {
    pub nodes: Vec<Server>,
}

impl Cluster {
    /// Starts 6 nodes and joins them with `redis-cli --cluster create`.
    pub fn start() -> Cluster {
        let cli = redis_cli_bin();
        let nodes: Vec<Server> = (0..6)
            .map(|_| {
                Server::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    // Replicas appear in CLUSTER SLOTS once they have an offset: ping them often.
                    "--repl-ping-replica-period",
                    "1",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new(&cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = Cluster { nodes };
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every node reports cluster_state:ok and every replica's link is up.
    pub fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().all(|n| {
                let state = n.info_cluster();
                let replica_ok = n.info_field("replication", "role").as_deref() != Some("slave")
                    || n.info_field("replication", "master_link_status").as_deref() == Some("up");
                state.contains("cluster_state:ok")
                    && state.contains("cluster_known_nodes:6")
                    && replica_ok
                    && n.every_range_has_a_replica()
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not become healthy in 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Seed URLs for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url()).collect()
    }

    /// A cluster client over all nodes.
    pub fn client(&self) -> redis::cluster::ClusterClient {
        redis::cluster::ClusterClient::new(self.urls()).expect("cluster client")
    }

    /// The node with this port.
    pub fn node(&self, port: u16) -> &Server {
        self.nodes.iter().find(|n| n.port() == port).expect("node of port")
    }

    /// (primary port, replica ports) serving `key`'s slot, as the cluster sees it now.
    pub fn owners(&self, key: &str) -> (u16, Vec<u16>) {
        let slot: i64 = self.nodes[0].cmd(&["CLUSTER", "KEYSLOT", key]);
        let ranges: Vec<redis::Value> = self.nodes[0].cmd(&["CLUSTER", "SLOTS"]);
        for range in ranges {
            let redis::Value::Array(parts) = range else { continue };
            let start: i64 = redis::from_redis_value_ref(&parts[0]).unwrap();
            let end: i64 = redis::from_redis_value_ref(&parts[1]).unwrap();
            if (start..=end).contains(&slot) {
                let port = |v: &redis::Value| -> u16 {
                    let redis::Value::Array(node) = v else { panic!("bad CLUSTER SLOTS node") };
                    redis::from_redis_value_ref(&node[1]).unwrap()
                };
                return (port(&parts[2]), parts[3..].iter().map(port).collect());
            }
        }
        panic!("no owner for slot {slot}");
    }

    /// Promotes the replica of `key`'s primary with CLUSTER FAILOVER and waits until every node
    /// agrees. Returns the new primary's port.
    pub fn failover(&self, key: &str) -> u16 {
        let (old, replicas) = self.owners(key);
        let promoted = replicas[0];
        let _: String = self.node(promoted).cmd(&["CLUSTER", "FAILOVER"]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.nodes.iter().any(|n| {
            n.cmd::<String>(&["CLUSTER", "NODES"])
                .lines()
                .any(|l| l.contains(&format!(":{promoted}@")) && !l.contains("master"))
        }) || self.owners(key).0 == old
        {
            assert!(Instant::now() < deadline, "failover to :{promoted} did not complete");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.wait_healthy();
        promoted
    }
}

impl Server {
    /// CLUSTER INFO of this node.
    pub fn info_cluster(&self) -> String {
        self.cmd(&["CLUSTER", "INFO"])
    }

    /// In this node's CLUSTER SLOTS, every slot range lists a replica beside its primary.
    fn every_range_has_a_replica(&self) -> bool {
        let ranges: Vec<redis::Value> = self.cmd(&["CLUSTER", "SLOTS"]);
        !ranges.is_empty()
            && ranges.iter().all(|r| matches!(r, redis::Value::Array(parts) if parts.len() >= 4))
    }
}

/// A unique name for keys of one test (so tests can share a server).
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}
