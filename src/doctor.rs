//! Operational checks to run before trusting a Redis deployment with coordination data:
//! server make and version against the scripts and against the servers CI tests
//! ([`TESTED_SERVERS`]), persistence, eviction policy, memory, loaded scripts and cluster state,
//! on every node.
//!
//! ```no_run
//! let report = redis_primitives::doctor::diagnose("redis://127.0.0.1:6379")?;
//! print!("{}", report.to_text());
//! std::process::exit(if report.failed() { 1 } else { 0 });
//! # Ok::<(), redis_primitives::Error>(())
//! ```

use std::collections::BTreeMap;

use crate::script::{self, contract::parse_version};
use crate::{Result, cluster};

/// The servers the whole test suite runs on in CI (`.ci/run`): make, major, minor. Another
/// server gets a warning from the `tested server` check (it may well work: it is just not
/// proven here).
pub const TESTED_SERVERS: &[(&str, u32, u32)] = &[("Redis", 6, 2), ("Redis", 7, 0), ("Valkey", 9, 1)];

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "lowercase"))]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, but a risk worth knowing about.
    Warn,
    /// Something the primitives rely on is broken.
    Fail,
}

/// One check on one node.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Check {
    /// `host:port`.
    pub node: String,
    /// Short name, e.g. `persistence`.
    pub name: &'static str,
    /// The outcome.
    pub status: Status,
    /// What was found, and what to do about it.
    pub detail: String,
}

/// Every check, in order.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Report {
    /// The URL diagnosed.
    pub url: String,
    /// Whether it is a cluster.
    pub cluster: bool,
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// True when any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// Human-readable lines.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "redis-primitives doctor: {}{}\n",
            self.url,
            if self.cluster { " (cluster)" } else { "" }
        );
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => " ok ",
                Status::Warn => "warn",
                Status::Fail => "FAIL",
            };
            out.push_str(&format!("[{tag}] {:21} {:16} {}\n", c.node, c.name, c.detail));
        }
        let count = |s| self.checks.iter().filter(|c| c.status == s).count();
        out.push_str(&format!(
            "{} ok, {} warnings, {} failed\n",
            count(Status::Ok),
            count(Status::Warn),
            count(Status::Fail)
        ));
        out
    }

    /// The report as JSON (with the `serde` feature).
    #[cfg(feature = "serde")]
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Connects to `url` (and, for a cluster, every node it lists) and runs every check.
pub fn diagnose(url: &str) -> Result<Report> {
    let client = redis::Client::open(url)?;
    let mut con = client.get_connection_with_timeout(std::time::Duration::from_secs(5))?;
    let info = Info::read(&mut con, "server")?;
    let cluster = info.get("redis_mode") == Some("cluster") || info.get("server_mode") == Some("cluster");
    let mut checks = Vec::new();
    if cluster {
        let state: String = redis::cmd("CLUSTER").arg("INFO").query(&mut con)?;
        let ok = state.lines().any(|l| l.trim() == "cluster_state:ok");
        checks.push(Check {
            node: "cluster".into(),
            name: "cluster state",
            status: if ok { Status::Ok } else { Status::Fail },
            detail: if ok {
                "cluster_state:ok".into()
            } else {
                "cluster_state is not ok: some slots are not served; calls on them fail".into()
            },
        });
        let slots: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        for (host, port) in cluster::nodes(&cluster::slot_ranges(&slots)?) {
            let node = format!("{host}:{port}");
            let mut info = client.get_connection_info().clone();
            info = info.set_addr(redis::ConnectionAddr::Tcp(host, port));
            match redis::Client::open(info)
                .and_then(|c| c.get_connection_with_timeout(std::time::Duration::from_secs(5)))
            {
                Ok(mut c) => checks.extend(node_checks(&node, &mut c)?),
                Err(e) => checks.push(Check {
                    node,
                    name: "reachable",
                    status: Status::Fail,
                    detail: format!("cannot connect: {e}"),
                }),
            }
        }
    } else {
        let node = client.get_connection_info().addr().to_string();
        checks.extend(node_checks(&node, &mut con)?);
    }
    Ok(Report { url: url.to_owned(), cluster, checks })
}

/// `INFO` as a map.
struct Info(BTreeMap<String, String>);

impl Info {
    fn read(con: &mut redis::Connection, section: &str) -> Result<Info> {
        let text: String = redis::cmd("INFO").arg(section).query(con)?;
        Ok(Info::parse(&text))
    }
    fn parse(text: &str) -> Info {
        Info(
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        )
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    fn num(&self, k: &str) -> Option<f64> {
        self.get(k)?.parse().ok()
    }
}

/// What server `INFO server` (as text) describes: `Redis 7.0.15`, or, for Valkey,
/// `Valkey 9.1.2 (redis_version 7.2.4)`.
///
/// ```
/// let info = "redis_version:7.2.4\r\nvalkey_version:9.1.2\r\n";
/// assert_eq!(redis_primitives::doctor::describe_server(info), "Valkey 9.1.2 (redis_version 7.2.4)");
/// ```
pub fn describe_server(info: &str) -> String {
    Server::of(&Info::parse(info)).describe()
}

/// What INFO says the server is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Server {
    /// `Redis`, `Valkey`, or another make that reports its own version field.
    flavor: String,
    /// The make's own version (Valkey: `valkey_version`).
    version: String,
    /// The Redis version it is (compatible with): what `@min-server` is compared to.
    redis_version: String,
}

impl Server {
    fn of(info: &Info) -> Server {
        let redis_version = info.get("redis_version").unwrap_or("unknown").to_owned();
        // Valkey keeps redis_version at 7.2.4 and reports itself in valkey_version; Dragonfly
        // adds dragonfly_version the same way.
        let own = [("valkey_version", "Valkey"), ("dragonfly_version", "Dragonfly")]
            .into_iter()
            .find_map(|(field, make)| Some((make.to_owned(), info.get(field)?.to_owned())));
        let (flavor, version) = own.unwrap_or_else(|| ("Redis".to_owned(), redis_version.clone()));
        Server { flavor, version, redis_version }
    }

    fn describe(&self) -> String {
        if self.flavor == "Redis" {
            format!("Redis {}", self.version)
        } else {
            format!("{} {} (redis_version {})", self.flavor, self.version, self.redis_version)
        }
    }

    fn tested(&self) -> bool {
        let mut parts = self.version.split('.').map(|p| p.parse::<u32>().ok());
        let (major, minor) = (parts.next().flatten(), parts.next().flatten());
        TESTED_SERVERS.iter().any(|(f, a, b)| *f == self.flavor && Some(*a) == major && Some(*b) == minor)
    }
}

fn config(con: &mut redis::Connection, name: &str) -> Option<String> {
    let pairs: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query(con).ok()?;
    pairs.get(1).cloned()
}

fn node_checks(node: &str, con: &mut redis::Connection) -> Result<Vec<Check>> {
    let info = Info::read(con, "all")?;
    let check = |name, status, detail: String| Check { node: node.to_owned(), name, status, detail };
    let mut checks = Vec::new();

    // Server version against every script's @min-server (a Redis version: Valkey reports the
    // Redis version it is compatible with in redis_version), then against what CI tests.
    let bundle = script::bundle();
    let server = Server::of(&info);
    let too_new: Vec<String> = bundle
        .iter()
        .filter(|s| match (parse_version(&server.redis_version), parse_version(&s.contract().min_server)) {
            (Some(have), Some(need)) => have < need,
            _ => true,
        })
        .map(|s| format!("{} (needs {})", s.name(), s.contract().min_server))
        .collect();
    let name = server.describe();
    checks.push(if too_new.is_empty() {
        check("server version", Status::Ok, format!("{name}: every script's @min-server is met"))
    } else {
        check("server version", Status::Fail, format!("{name} cannot run: {}", too_new.join(", ")))
    });
    checks.push(if server.tested() {
        check("tested server", Status::Ok, format!("{} {}: tested in CI", server.flavor, server.version))
    } else {
        let tested: Vec<String> = TESTED_SERVERS.iter().map(|(f, a, b)| format!("{f} {a}.{b}")).collect();
        check(
            "tested server",
            Status::Warn,
            format!(
                "{} {} is not among the servers the test suite runs on in CI ({}): it may work, \
                 but run the suite against it first (REDIS_SERVER=/path/to/server cargo test)",
                server.flavor,
                server.version,
                tested.join(", ")
            ),
        )
    });

    // Persistence: fencing tokens and cache versions survive data loss by themselves (both have a
    // server-time floor); what a restart without persistence loses is every held lock (a second
    // holder can take it while the first still works: only fenced writes stay safe) and every
    // rate limit's history.
    let rdb = config(con, "save").is_some_and(|s| !s.trim().is_empty());
    let aof = info.get("aof_enabled") == Some("1");
    checks.push(match (rdb, aof) {
        (_, true) => {
            check("persistence", Status::Ok, "AOF on: held locks and rate limits survive a restart".into())
        }
        (true, false) => check(
            "persistence",
            Status::Warn,
            "RDB snapshots only: a restart loses the locks taken and the requests counted since the \
             last snapshot (fencing tokens still never repeat); enable appendonly yes (appendfsync \
             everysec)"
                .into(),
        ),
        (false, false) => check(
            "persistence",
            Status::Warn,
            "no persistence: a restart frees every held lock and permit (a new holder may start \
             while the old one still works; fenced writes still refuse the old one) and forgets \
             rate limits; enable appendonly yes"
                .into(),
        ),
    });

    // Eviction policy: allkeys-* may evict lock keys and limiter state.
    let maxmemory = info.num("maxmemory").unwrap_or(0.0);
    let policy = info.get("maxmemory_policy").unwrap_or("noeviction").to_owned();
    checks.push(if policy.starts_with("allkeys") && maxmemory > 0.0 {
        check(
            "eviction policy",
            Status::Warn,
            format!(
                "{policy} can evict lock keys and limiter state under memory \
                 pressure (a lock silently freed, a limit reset); use noeviction or volatile-*, \
                 or keep caches on a separate instance"
            ),
        )
    } else {
        let why = if maxmemory == 0.0 {
            "no maxmemory: nothing is evicted"
        } else {
            "keys without TTL are never evicted"
        };
        check("eviction policy", Status::Ok, format!("{policy} ({why})"))
    });

    // Fragmentation: only meaningful once the dataset is not tiny.
    let used = info.num("used_memory").unwrap_or(0.0);
    let frag = info.num("mem_fragmentation_ratio").unwrap_or(1.0);
    checks.push(if used > 64.0 * 1024.0 * 1024.0 && frag > 1.5 {
        check(
            "fragmentation",
            Status::Warn,
            format!("mem_fragmentation_ratio {frag:.2}: consider activedefrag yes"),
        )
    } else if used > 64.0 * 1024.0 * 1024.0 && frag < 1.0 {
        check(
            "fragmentation",
            Status::Warn,
            format!("mem_fragmentation_ratio {frag:.2}: memory may be swapped"),
        )
    } else {
        check(
            "fragmentation",
            Status::Ok,
            format!("mem_fragmentation_ratio {frag:.2}, used {:.1} MiB", used / 1048576.0),
        )
    });

    let evicted = info.num("evicted_keys").unwrap_or(0.0) as u64;
    checks.push(if evicted > 0 {
        check(
            "evicted keys",
            Status::Warn,
            format!("{evicted} keys evicted since start: coordination state may have been among them"),
        )
    } else {
        check("evicted keys", Status::Ok, "none evicted".into())
    });

    // Loaded scripts: informational, every call loads what is missing by itself.
    let shas: Vec<&str> = bundle.iter().map(|s| s.sha1()).collect();
    let exists: Vec<i64> = redis::cmd("SCRIPT").arg("EXISTS").arg(&shas).query(con)?;
    let missing: Vec<&str> =
        bundle.iter().zip(&exists).filter(|(_, e)| **e == 0).map(|(s, _)| s.name()).collect();
    checks.push(check(
        "scripts loaded",
        Status::Ok,
        if missing.is_empty() {
            format!("all {} bundle scripts", bundle.len())
        } else {
            format!(
                "{} of {} (missing ones load on first use, or run `scripts load`): missing {}",
                bundle.len() - missing.len(),
                bundle.len(),
                missing.join(", ")
            )
        },
    ));
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(info: &str) -> Server {
        let info = Info(
            info.lines()
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect(),
        );
        Server::of(&info)
    }

    #[test]
    fn the_make_and_its_own_version_are_read_from_info() {
        let redis =
            server("# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\ngcc_version:12.2.0\r\n");
        assert_eq!((redis.flavor.as_str(), redis.version.as_str()), ("Redis", "7.0.15"));
        assert_eq!(redis.describe(), "Redis 7.0.15");
        assert!(redis.tested());

        let valkey = server(
            "redis_version:7.2.4\nserver_name:valkey\nvalkey_version:9.1.2\nvalkey_release_stage:ga\n\
             server_mode:cluster\ngcc_version:14.2.1\n",
        );
        assert_eq!((valkey.flavor.as_str(), valkey.version.as_str()), ("Valkey", "9.1.2"));
        assert_eq!(valkey.redis_version, "7.2.4", "@min-server compares the Redis version");
        assert_eq!(valkey.describe(), "Valkey 9.1.2 (redis_version 7.2.4)");
        assert!(valkey.tested());

        let dragonfly = server("redis_version:7.4.0\ndragonfly_version:df-v1.25.0\n");
        assert_eq!(dragonfly.flavor, "Dragonfly");
        assert!(!dragonfly.tested());
    }

    #[test]
    fn only_the_servers_ci_runs_are_tested() {
        for (info, tested) in [
            ("redis_version:6.2.14", true),
            ("redis_version:7.0.0", true),
            ("redis_version:7.2.5", false),
            ("redis_version:8.0.2", false),
            ("redis_version:6.0.16", false),
            ("redis_version:7.2.4\nvalkey_version:9.1.0", true),
            ("redis_version:7.2.4\nvalkey_version:8.0.1", false),
        ] {
            assert_eq!(server(info).tested(), tested, "{info}");
        }
    }
}
